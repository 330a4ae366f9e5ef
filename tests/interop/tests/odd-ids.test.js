'use strict';
// Odd document ids: PouchDB `encodeURIComponent`s every id in the URL except the `_design/` and
// `_local/` prefixes, whose slash it keeps (pouchdb-adapter-http, `encodeDocId`). The server must
// decode them back to exactly the same id, store it byte for byte, and list it in `_all_docs`
// and `_changes` under that id.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName, snapshot } = require('../lib/pouch');
const { ok, request, docPath } = require('../lib/http');

const ctx = useServer();

const ids = [
  'with/slash',
  'a/b/c',
  'with space',
  ' leading and trailing ',
  '100%',
  '%2F',
  'a+b',
  'what?',
  'q?x=1&y=2',
  'hash#tag',
  'semi;colon:equals=',
  'ünïcødé',
  '日本語のID',
  'emoji 😀',
  "quotes ' and \"",
  'back\\slash',
  '_design/x',
  '_design/with space',
];

/**
 * pouchdb-server 4.2 (on PouchDB 7's LevelDB adapter) leaves ids with a character from the
 * three-byte UTF-8 range (U+0800 to U+FFFF, surrogates aside) out of `_all_docs`, although it
 * stores and serves them; CouchDB lists every id. Only that server is excused.
 */
function listedInAllDocs(id) {
  return ctx.server.kind !== 'pouchdb-server' || !/[\u0800-\ud7ff\ue000-\uffff]/.test(id);
}

test('documents with odd ids survive push, plain HTTP reads and pull', async () => {
  const name = dbName('ids');
  const base = `${ctx.server.url}/${name}`;
  const local = localDb('ids');
  await local.bulkDocs(ids.map((id) => ({ _id: id, original: id })));
  const pushed = await local.replicate.to(remoteDb(ctx.server, name));
  assert.equal(pushed.docs_written, ids.length);
  assert.deepEqual(pushed.errors, []);

  for (const id of ids) {
    const res = await request('GET', `${base}/${docPath(id)}`);
    assert.equal(res.status, 200, `GET ${JSON.stringify(id)}`);
    assert.equal(res.body._id, id);
    assert.equal(res.body.original, id);
  }
  const all = await ok('GET', `${base}/_all_docs`);
  assert.deepEqual(all.rows.map((r) => r.id).sort(), ids.filter(listedInAllDocs).sort());
  const changes = await ok('GET', `${base}/_changes`);
  assert.deepEqual(changes.results.map((r) => r.id).sort(), [...ids].sort());

  const other = localDb('ids');
  await other.replicate.from(remoteDb(ctx.server, name));
  assert.deepEqual(await snapshot(other), await snapshot(local));
});

test('documents with odd ids written over HTTP are pulled, updated and deleted', async () => {
  const name = dbName('ids');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const revs = {};
  for (const id of ids) {
    const res = await ok('PUT', `${base}/${docPath(id)}`, { json: { written: 'over http' } });
    assert.equal(res.id, id, `PUT answers the decoded id for ${JSON.stringify(id)}`);
    revs[id] = res.rev;
  }
  const local = localDb('ids');
  const remote = remoteDb(ctx.server, name);
  await local.replicate.from(remote);
  for (const id of ids) {
    const doc = await local.get(id);
    assert.equal(doc._rev, revs[id]);
    assert.equal(doc.written, 'over http');
  }

  // Update every document on the client, delete half of them, and push back.
  const current = await local.allDocs({ include_docs: true });
  const edits = current.rows.map((r, i) =>
    i % 2 ? { ...r.doc, _deleted: true } : { ...r.doc, written: 'edited by the client' },
  );
  await local.bulkDocs(edits);
  await local.replicate.to(remote);
  for (const [i, row] of current.rows.entries()) {
    const res = await request('GET', `${base}/${docPath(row.id)}`);
    if (i % 2) {
      assert.equal(res.status, 404, `deleted ${JSON.stringify(row.id)}`);
    } else {
      assert.equal(res.status, 200);
      assert.equal(res.body.written, 'edited by the client');
    }
  }
});

test('an id sent with its slash unencoded is not confused with an attachment path', async () => {
  // `_design/x` keeps its slash in the URL, so `/db/_design/x` is the design document while
  // `/db/plain/x` addresses attachment `x` of document `plain`.
  const name = dbName('ids');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const design = await ok('PUT', `${base}/_design/x`, { json: { kind: 'design' } });
  assert.equal(design.id, '_design/x');
  const plain = await ok('PUT', `${base}/plain`, { json: { kind: 'plain' } });
  await ok('PUT', `${base}/plain/x?rev=${plain.rev}`, { raw: Buffer.from('attached'), contentType: 'text/plain' });
  const slashId = await ok('PUT', `${base}/plain%2Fx`, { json: { kind: 'slash id' } });
  assert.equal(slashId.id, 'plain/x');

  const local = localDb('ids');
  await local.replicate.from(remoteDb(ctx.server, name));
  assert.equal((await local.get('_design/x')).kind, 'design');
  assert.equal((await local.get('plain/x')).kind, 'slash id');
  const plainDoc = await local.get('plain');
  assert.deepEqual(Object.keys(plainDoc._attachments), ['x']);
  assert.equal((await local.getAttachment('plain', 'x')).toString(), 'attached');
});
