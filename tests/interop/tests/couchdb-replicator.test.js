'use strict';
// CouchDB 3.5's own replicator against the server, in both directions, and the server's
// replicator against CouchDB. Needs a running CouchDB: set COUCHDB_URL to it, with admin
// credentials (e.g. http://admin:password@127.0.0.1:5990). Without COUCHDB_URL the tests are
// skipped: CouchDB is not something the test command can install.
//
// Every run ends by comparing whole revision trees: for each document (deleted ones included)
// every leaf with its `_revisions` path, deletion flag, body and attachments (digest, length,
// type, and the bytes themselves) must be equal on both sides.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { useServer, dbName } = require('../lib/pouch');
const { request, ok } = require('../lib/http');

const COUCH = process.env.COUCHDB_URL;
const skip = COUCH ? false : 'COUCHDB_URL is not set (a running CouchDB 3.5 with admin credentials)';
const ctx = useServer();

/** CouchDB's URL for database `name`, credentials included. */
const couch = (name) => `${COUCH.replace(/\/$/, '')}/${encodeURIComponent(name)}`;
/** The server's URL for database `name`. */
const outpost = (name) => `${ctx.server.url}/${encodeURIComponent(name)}`;

const docUrl = (base, id) =>
  id.startsWith('_design/') ? `${base}/_design/${encodeURIComponent(id.slice(8))}` : `${base}/${encodeURIComponent(id)}`;

/** One megabyte of bytes that do not compress, and a small text attachment (which CouchDB gzips). */
const binary = crypto.randomBytes(1024 * 1024);
const text = Buffer.from('field notes\n'.repeat(200));

/** Writes the fixture: odd ids, attachments edited around, a deletion, a conflict, a design doc. */
async function fixture(base) {
  await ok('PUT', base);
  const ids = ['plain', 'with space', 'ünïcödé', 'a/b', '+plus', 'q?x=1&y', 'emoji-🦉'];
  const docs = ids.map((id, i) => ({ _id: id, n: i, exact: 0.1 + 0.2, big: 12345678901234567890 }));
  docs.push({ _id: '_design/app', views: { byN: { map: 'function (doc) { emit(doc.n, null); }' } } });
  await ok('POST', `${base}/_bulk_docs`, { json: { docs } });

  // Attachments: one binary, one text, then a JSON-only edit so the second revision carries stubs.
  const first = await ok('PUT', `${base}/files/photo.bin`, { raw: binary, contentType: 'application/octet-stream' });
  const second = await ok('PUT', `${base}/files/notes.txt?rev=${first.rev}`, { raw: text, contentType: 'text/plain' });
  const current = await ok('GET', `${base}/files?rev=${second.rev}`);
  await ok('PUT', `${base}/files`, { json: { ...current, edited: true } });

  const gone = await ok('PUT', `${base}/gone`, { json: { soon: 'deleted' } });
  await ok('DELETE', `${base}/gone?rev=${gone.rev}`);

  // Two branches of one document, written as a replicator would.
  await ok('POST', `${base}/_bulk_docs`, {
    json: {
      new_edits: false,
      docs: [
        { _id: 'split', _rev: '2-aaaa', v: 'left', _revisions: { start: 2, ids: ['aaaa', 'root'] } },
        { _id: 'split', _rev: '2-bbbb', v: 'right', _revisions: { start: 2, ids: ['bbbb', 'root'] } },
      ],
    },
  });
}

/** Every document id in a database, deleted ones included. */
async function allIds(base) {
  const changes = await ok('GET', `${base}/_changes?style=all_docs`);
  return changes.results.map((r) => r.id).sort();
}

/** Every leaf of every document, with its path, body and attachment bytes, for comparison. */
async function trees(base) {
  const out = {};
  for (const id of await allIds(base)) {
    const leaves = await ok('GET', `${docUrl(base, id)}?open_revs=all&revs=true&attachments=true`);
    out[id] = leaves
      .map((leaf) => {
        assert.ok(leaf.ok, `${base} ${id}: ${JSON.stringify(leaf)}`);
        const { _attachments: atts = {}, ...body } = leaf.ok;
        const attachments = {};
        for (const [name, att] of Object.entries(atts)) {
          attachments[name] = {
            content_type: att.content_type,
            md5: crypto.createHash('md5').update(Buffer.from(att.data, 'base64')).digest('hex'),
            bytes: Buffer.from(att.data, 'base64').length,
          };
        }
        return { ...body, _attachments: attachments };
      })
      .sort((a, b) => (a._rev < b._rev ? -1 : 1));
  }
  return out;
}

/** Runs a one-shot replication through `endpoint` (a `_replicate` URL) and checks it succeeded. */
async function replicate(endpoint, body) {
  const res = await request('POST', endpoint, { json: body });
  // 200 for a one-shot replication that finished, 202 for a continuous one that started.
  assert.equal(res.status, body.continuous ? 202 : 200, `${endpoint}: ${JSON.stringify(res.body)}`);
  assert.equal(res.body.ok, true, JSON.stringify(res.body));
  return res.body;
}

async function eventually(what, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const couchReplicate = () => `${COUCH.replace(/\/$/, '')}/_replicate`;

test('CouchDB pulls from the server, then pushes to it: identical revision trees', { skip }, async () => {
  const src = dbName('couch-src');
  const pulled = dbName('couch-pulled');
  const pushed = dbName('couch-pushed');
  await fixture(outpost(src));

  const pull = await replicate(couchReplicate(), { source: outpost(src), target: couch(pulled), create_target: true });
  assert.equal(pull.history[0].doc_write_failures, 0);
  const expected = await trees(outpost(src));
  assert.deepEqual(await trees(couch(pulled)), expected);

  const push = await replicate(couchReplicate(), { source: couch(pulled), target: outpost(pushed), create_target: true });
  assert.equal(push.history[0].doc_write_failures, 0);
  assert.deepEqual(await trees(outpost(pushed)), expected);

  // A second pull after more edits carries only what changed, still converging.
  const files = await ok('GET', `${outpost(src)}/files`);
  await ok('PUT', `${outpost(src)}/files`, { json: { ...files, edited: 2 } });
  await replicate(couchReplicate(), { source: outpost(src), target: couch(pulled) });
  assert.deepEqual(await trees(couch(pulled)), await trees(outpost(src)));

  for (const name of [pulled]) await request('DELETE', couch(name));
});

test('CouchDB continuous replication both ways picks up live writes', { skip }, async () => {
  const a = dbName('couch-live-a');
  const b = dbName('couch-live-b');
  await ok('PUT', outpost(a));
  await ok('PUT', couch(b));
  const jobs = [
    { source: outpost(a), target: couch(b), continuous: true },
    { source: couch(b), target: outpost(a), continuous: true },
  ];
  for (const job of jobs) await replicate(couchReplicate(), job);
  try {
    await ok('PUT', `${outpost(a)}/from-outpost`, { json: { side: 'outpost' } });
    await ok('PUT', `${couch(b)}/from-couch`, { json: { side: 'couch' } });
    const att = await ok('PUT', `${outpost(a)}/with-file/blob.bin`, { raw: binary, contentType: 'application/octet-stream' });
    await eventually('both documents on both sides', async () => {
      const [x, y] = await Promise.all([allIds(outpost(a)), allIds(couch(b))]);
      return x.length === 3 && y.length === 3;
    });
    await eventually('the attachment on CouchDB', async () => {
      const res = await request('GET', `${couch(b)}/with-file?rev=${att.rev}`);
      return res.status === 200;
    });
    assert.deepEqual(await trees(couch(b)), await trees(outpost(a)));
  } finally {
    for (const job of jobs) await request('POST', couchReplicate(), { json: { ...job, cancel: true } });
    await request('DELETE', couch(b));
  }
});

test("the server's replicator pulls from and pushes to CouchDB", { skip }, async () => {
  const src = dbName('couch-fixture');
  const onCouch = dbName('couch-target');
  const back = dbName('couch-back');
  await fixture(outpost(src));

  await replicate(`${ctx.server.url}/_replicate`, { source: outpost(src), target: couch(onCouch), create_target: true });
  const expected = await trees(outpost(src));
  assert.deepEqual(await trees(couch(onCouch)), expected);

  await replicate(`${ctx.server.url}/_replicate`, { source: couch(onCouch), target: outpost(back), create_target: true });
  assert.deepEqual(await trees(outpost(back)), expected);

  await request('DELETE', couch(onCouch));
});
