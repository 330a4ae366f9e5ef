'use strict';
// Deletions: a deleted document is a revision with `_deleted: true` (a tombstone) that replicates
// like any other edit. After it, CouchDB answers 404 `{"error":"not_found","reason":"deleted"}`,
// leaves the document out of `_all_docs` and lists it in `_changes` with `deleted: true`
// (docs.couchdb.org/en/stable/api/document/common.html#delete--db-docid).

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName, snapshot } = require('../lib/pouch');
const { ok, request } = require('../lib/http');

const ctx = useServer();

async function latestChange(base, id) {
  const changes = await ok('GET', `${base}/_changes?style=all_docs`);
  return changes.results.filter((r) => r.id === id).pop();
}

test('a deletion made on the client reaches the server', async () => {
  const name = dbName('del');
  const base = `${ctx.server.url}/${name}`;
  const local = localDb('del');
  await local.bulkDocs([{ _id: 'keep', v: 1 }, { _id: 'gone', v: 2 }]);
  const remote = remoteDb(ctx.server, name);
  await local.replicate.to(remote);
  assert.equal((await ok('GET', `${base}/`)).doc_count, 2);

  const removed = await local.remove(await local.get('gone'));
  assert.match(removed.rev, /^2-/);
  const result = await local.replicate.to(remote);
  assert.equal(result.docs_written, 1);

  const missing = await request('GET', `${base}/gone`);
  assert.equal(missing.status, 404);
  // CouchDB 3 gives the reason "deleted"; pouchdb-server, the reference server of these tests,
  // says "missing" here, so only the CouchDB answer is expected from any other server.
  const reason = ctx.server.kind === 'pouchdb-server' ? 'missing' : 'deleted';
  assert.deepEqual(missing.body, { error: 'not_found', reason });
  const info = await ok('GET', `${base}/`);
  assert.equal(info.doc_count, 1);
  const all = await ok('GET', `${base}/_all_docs`);
  assert.deepEqual(all.rows.map((r) => r.id), ['keep']);
  const change = await latestChange(base, 'gone');
  assert.equal(change.deleted, true);
  assert.deepEqual(change.changes, [{ rev: removed.rev }]);
  // The tombstone itself can still be read by revision.
  const tomb = await ok('GET', `${base}/gone?rev=${removed.rev}`);
  assert.equal(tomb._deleted, true);
});

test('a deletion made on the server reaches the client', async () => {
  const name = dbName('del');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const { rev } = await ok('PUT', `${base}/doc`, { json: { v: 1 } });
  await ok('PUT', `${base}/other`, { json: { v: 2 } });
  const local = localDb('del');
  const remote = remoteDb(ctx.server, name);
  await local.replicate.from(remote);
  assert.equal((await local.get('doc')).v, 1);

  const deleted = await ok('DELETE', `${base}/doc?rev=${rev}`);
  assert.equal(deleted.ok, true);
  assert.match(deleted.rev, /^2-/);
  const result = await local.replicate.from(remote);
  assert.equal(result.docs_written, 1);

  await assert.rejects(local.get('doc'), (err) => err.status === 404 && err.reason === 'deleted');
  assert.deepEqual((await snapshot(local)).map((d) => d.id), ['other']);
  const changes = await local.changes({ style: 'all_docs' });
  const change = changes.results.find((c) => c.id === 'doc');
  assert.equal(change.deleted, true);
  assert.equal(change.changes[0].rev, deleted.rev);
});

test('a document re-created after deletion continues its history on both sides', async () => {
  const name = dbName('del');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const { rev } = await ok('PUT', `${base}/phoenix`, { json: { life: 1 } });
  await ok('DELETE', `${base}/phoenix?rev=${rev}`);
  // CouchDB accepts a PUT without a rev on a deleted document and extends the deleted branch.
  const reborn = await ok('PUT', `${base}/phoenix`, { json: { life: 2 } });
  assert.match(reborn.rev, /^3-/);

  const local = localDb('del');
  await local.replicate.from(remoteDb(ctx.server, name));
  const doc = await local.get('phoenix', { revs: true });
  assert.equal(doc._rev, reborn.rev);
  assert.equal(doc.life, 2);
  assert.equal(doc._revisions.ids.length, 3);

  // And the other way: delete and re-create on the client, then push.
  await local.remove(doc);
  const again = await local.put({ _id: 'phoenix', life: 3 });
  assert.match(again.rev, /^5-/);
  await local.replicate.to(remoteDb(ctx.server, name));
  const served = await ok('GET', `${base}/phoenix?conflicts=true`);
  assert.equal(served._rev, again.rev);
  assert.equal(served.life, 3);
  assert.equal(served._conflicts, undefined);
});

test('deleting every document empties _all_docs but not _changes', async () => {
  const name = dbName('del');
  const base = `${ctx.server.url}/${name}`;
  const local = localDb('del');
  const docs = Array.from({ length: 20 }, (_, i) => ({ _id: `d${i}`, i }));
  await local.bulkDocs(docs);
  await local.replicate.to(remoteDb(ctx.server, name));
  const all = await local.allDocs();
  await local.bulkDocs(all.rows.map((r) => ({ _id: r.id, _rev: r.value.rev, _deleted: true })));
  await local.replicate.to(remoteDb(ctx.server, name));

  assert.equal((await ok('GET', `${base}/_all_docs`)).rows.length, 0);
  assert.equal((await ok('GET', `${base}/`)).doc_count, 0);
  const changes = await ok('GET', `${base}/_changes`);
  assert.equal(changes.results.length, 20);
  assert.ok(changes.results.every((r) => r.deleted === true));

  // A fresh client pulling the database gets the tombstones and no live document.
  const fresh = localDb('del');
  const pulled = await fresh.replicate.from(remoteDb(ctx.server, name));
  assert.equal(pulled.docs_written, 20);
  assert.equal((await fresh.info()).doc_count, 0);
  await assert.rejects(fresh.get('d3'), (err) => err.status === 404);
});
