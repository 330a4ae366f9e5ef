'use strict';
// Pulling without `_bulk_get`. PouchDB tries `POST /db/_bulk_get` once per server; on any error
// it falls back for the rest of the process to one
// `GET /db/{id}?revs=true&latest=true&open_revs=["r1",...]` per document (pouchdb-adapter-http,
// `bulkGet`), whose answer must be CouchDB's JSON array of `{"ok": doc}` / `{"missing": rev}`
// (docs.couchdb.org/en/stable/api/document/common.html, `open_revs`). Proxies and older servers
// push clients down this path, so it must work too. The fallback is process-wide in PouchDB,
// which is why this test has a file of its own.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { PouchDB, localDb, useServer, dbName, snapshot } = require('../lib/pouch');
const { ok, serverSnapshot } = require('../lib/http');

const ctx = useServer();

/** A remote handle whose `_bulk_get` calls fail with 404, as on a server without the endpoint. */
function remoteWithoutBulkGet(name) {
  const requests = [];
  const db = new PouchDB(`${ctx.server.url}/${name}`, {
    fetch: (url, opts = {}) => {
      requests.push({ method: opts.method || 'GET', url: String(url) });
      if (new URL(String(url)).pathname.endsWith('/_bulk_get')) {
        const body = JSON.stringify({ error: 'not_found', reason: 'no _bulk_get here' });
        return Promise.resolve(new Response(body, { status: 404, headers: { 'Content-Type': 'application/json' } }));
      }
      return PouchDB.fetch(url, opts);
    },
  });
  db.requests = requests;
  return db;
}

test('pull falls back to GET with open_revs and still copies revisions, conflicts, deletions and attachments', async () => {
  const name = dbName('nobulkget');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  await ok('POST', `${base}/_bulk_docs`, {
    json: { docs: Array.from({ length: 30 }, (_, i) => ({ _id: `d${String(i).padStart(2, '0')}`, i })) },
  });
  // A document with three generations.
  let rev = (await ok('GET', `${base}/d05`))._rev;
  for (const step of [2, 3]) ({ rev } = await ok('PUT', `${base}/d05`, { json: { _rev: rev, i: 5, step } }));
  // A conflict made as a replicator would, and a deleted document.
  const h = (c) => c.repeat(32);
  await ok('POST', `${base}/_bulk_docs`, {
    json: {
      new_edits: false,
      docs: [
        { _id: 'conflicted', _rev: `1-${h('1')}`, v: 'root' },
        { _id: 'conflicted', _rev: `2-${h('a')}`, v: 'a', _revisions: { start: 2, ids: [h('a'), h('1')] } },
        { _id: 'conflicted', _rev: `2-${h('b')}`, v: 'b', _revisions: { start: 2, ids: [h('b'), h('1')] } },
      ],
    },
  });
  const d07 = await ok('GET', `${base}/d07`);
  await ok('DELETE', `${base}/d07?rev=${d07._rev}`);
  // An attachment.
  const bytes = crypto.randomBytes(4096);
  await ok('PUT', `${base}/with-file/blob.bin`, { raw: bytes, contentType: 'application/octet-stream' });

  const local = localDb('nobulkget');
  const remote = remoteWithoutBulkGet(name);
  const result = await local.replicate.from(remote);
  assert.equal(result.ok, true);
  assert.deepEqual(result.errors, []);

  const openRevs = remote.requests.filter((r) => r.method === 'GET' && new URL(r.url).searchParams.has('open_revs'));
  assert.ok(openRevs.length >= 30, `the fallback fetched documents with open_revs (${openRevs.length} requests)`);

  assert.deepEqual(await snapshot(local), await serverSnapshot(base));
  const d05 = await local.get('d05', { revs: true });
  assert.equal(d05._rev, rev);
  assert.equal(d05._revisions.ids.length, 3);
  const conflicted = await local.get('conflicted', { conflicts: true });
  assert.equal(conflicted._rev, `2-${h('b')}`);
  assert.deepEqual(conflicted._conflicts, [`2-${h('a')}`]);
  await assert.rejects(local.get('d07'), (err) => err.status === 404);
  assert.ok((await local.getAttachment('with-file', 'blob.bin')).equals(bytes));
});

test('the open_revs answer is a JSON array of ok and missing entries, and latest follows edits', async () => {
  // Checked over plain HTTP as well, since PouchDB would also accept some malformed answers.
  const name = dbName('nobulkget');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const first = await ok('PUT', `${base}/doc`, { json: { v: 1 } });
  const unknown = `1-${'0'.repeat(32)}`;
  const openRevs = (revs) => encodeURIComponent(JSON.stringify(revs));

  // (pouchdb-server crashes when `latest=true` meets an unknown rev, so the missing entry is
  // checked without `latest`.)
  const answer = await ok('GET', `${base}/doc?revs=true&open_revs=${openRevs([first.rev, unknown])}`);
  assert.ok(Array.isArray(answer), `open_revs answers an array: ${JSON.stringify(answer)}`);
  const found = answer.find((e) => e.ok);
  assert.equal(found.ok._rev, first.rev);
  assert.equal(found.ok.v, 1);
  assert.deepEqual(found.ok._revisions, { start: 1, ids: [first.rev.slice(2)] });
  assert.deepEqual(answer.filter((e) => e.missing), [{ missing: unknown }]);

  // With latest=true, as PouchDB asks, a superseded rev answers the leaf that descends from it.
  const second = await ok('PUT', `${base}/doc`, { json: { _rev: first.rev, v: 2 } });
  const latest = await ok('GET', `${base}/doc?revs=true&latest=true&open_revs=${openRevs([first.rev])}`);
  assert.equal(latest.length, 1);
  assert.equal(latest[0].ok._rev, second.rev);
  assert.equal(latest[0].ok.v, 2);
  assert.deepEqual(latest[0].ok._revisions.ids, [second.rev.slice(2), first.rev.slice(2)]);
});
