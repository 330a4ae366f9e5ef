'use strict';
// 10,000 documents pushed and pulled with PouchDB's default batch size (100 changes per
// `_changes` / `_revs_diff` / `_bulk_get` / `_bulk_docs` round), which exercises `_changes`
// paging (`limit` and `last_seq` of the last returned row) and checkpoints over a hundred batches.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName } = require('../lib/pouch');
const { ok } = require('../lib/http');

const ctx = useServer();

const N = 10_000;

function docs() {
  return Array.from({ length: N }, (_, i) => ({
    _id: `doc-${String(i).padStart(5, '0')}`,
    i,
    name: `document number ${i}`,
    tags: [i % 7, i % 11],
  }));
}

/** `[[id, rev], ...]` for every document, in id order. */
async function idRevs(db) {
  const res = await db.allDocs();
  return res.rows.map((r) => [r.id, r.value.rev]);
}

test('10,000 documents are pushed and then pulled into another client', { timeout: 150_000 }, async () => {
  const name = dbName('bulk');
  const base = `${ctx.server.url}/${name}`;
  const source = localDb('bulk');
  // Written in chunks so the local memory adapter is not the bottleneck of the test.
  const all = docs();
  for (let i = 0; i < N; i += 1000) await source.bulkDocs(all.slice(i, i + 1000));

  const pushed = await source.replicate.to(remoteDb(ctx.server, name));
  assert.equal(pushed.ok, true);
  assert.equal(pushed.docs_written, N);
  assert.deepEqual(pushed.errors, []);

  const info = await ok('GET', `${base}/`);
  assert.equal(info.doc_count, N);
  const listed = await ok('GET', `${base}/_all_docs`);
  assert.equal(listed.total_rows, N);
  assert.deepEqual(listed.rows.map((r) => [r.id, r.value.rev]), await idRevs(source));

  // Paging _changes as PouchDB does: every row has a seq, and a page shorter than the limit
  // means the end. Every document must be listed exactly once.
  const seen = new Set();
  let since = 0;
  for (;;) {
    const page = await ok('GET', `${base}/_changes?style=all_docs&limit=1000&since=${encodeURIComponent(since)}`);
    for (const row of page.results) {
      assert.ok(row.seq !== undefined && row.seq !== null, 'every change row has a seq');
      assert.ok(!seen.has(row.id), `${row.id} listed once`);
      seen.add(row.id);
    }
    if (page.results.length < 1000) break;
    assert.deepEqual(page.last_seq, page.results[page.results.length - 1].seq, 'last_seq is the last row seq when truncated');
    since = page.last_seq;
  }
  assert.equal(seen.size, N);

  const target = localDb('bulk');
  const pulled = await target.replicate.from(remoteDb(ctx.server, name));
  assert.equal(pulled.ok, true);
  assert.equal(pulled.docs_written, N);
  assert.deepEqual(await idRevs(target), await idRevs(source));
  const sample = await target.get('doc-06789');
  assert.equal(sample.name, 'document number 6789');
  assert.deepEqual(sample.tags, [6789 % 7, 6789 % 11]);
});
