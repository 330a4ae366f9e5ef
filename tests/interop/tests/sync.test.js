'use strict';
// Sync: `db.sync(remote)` runs a push and a pull at the same time (pouchdb.com/api.html#sync);
// afterwards both sides hold the union of their documents with identical revisions, and a third
// client that syncs later sees the same state.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName, snapshot } = require('../lib/pouch');
const { ok } = require('../lib/http');

const ctx = useServer();

test('sync merges documents written on both sides, in both directions', async () => {
  const name = dbName('sync');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const serverDocs = [];
  for (let i = 0; i < 25; i++) serverDocs.push({ _id: `server-${i}`, side: 'server', i });
  await ok('POST', `${base}/_bulk_docs`, { json: { docs: serverDocs } });

  const a = localDb('sync-a');
  const clientDocs = [];
  for (let i = 0; i < 25; i++) clientDocs.push({ _id: `client-${i}`, side: 'client', i });
  await a.bulkDocs(clientDocs);

  const remote = remoteDb(ctx.server, name);
  const result = await a.sync(remote);
  assert.equal(result.push.docs_written, 25);
  assert.equal(result.pull.docs_written, 25);

  const local = await snapshot(a);
  assert.equal(local.length, 50);
  assert.deepEqual(await snapshot(remote), local);

  // Edits on both sides to different documents, then a second sync.
  const c3 = await a.get('client-3');
  c3.edited = 'client';
  await a.put(c3);
  const s3 = await ok('GET', `${base}/server-3`);
  await ok('PUT', `${base}/server-3`, { json: { ...s3, edited: 'server' } });
  await a.put({ _id: 'client-new', side: 'client' });

  const again = await a.sync(remote);
  assert.equal(again.push.docs_written, 2);
  assert.equal(again.pull.docs_written, 1);
  assert.deepEqual(await snapshot(remote), await snapshot(a));
  assert.equal((await a.get('server-3')).edited, 'server');
  assert.equal((await ok('GET', `${base}/client-3`)).edited, 'client');

  // A second client starting from nothing converges to the same state.
  const b = localDb('sync-b');
  await b.sync(remoteDb(ctx.server, name));
  assert.deepEqual(await snapshot(b), await snapshot(a));
  assert.equal((await snapshot(b)).length, 51);
});

test('two clients exchange edits through the server', async () => {
  const name = dbName('sync');
  const a = localDb('sync-a');
  const b = localDb('sync-b');
  await a.put({ _id: 'shared', owner: 'a', step: 1 });
  await a.sync(remoteDb(ctx.server, name));
  await b.sync(remoteDb(ctx.server, name));

  const doc = await b.get('shared');
  assert.equal(doc.step, 1);
  await b.put({ ...doc, step: 2, owner: 'b' });
  await b.sync(remoteDb(ctx.server, name));
  await a.sync(remoteDb(ctx.server, name));

  const seenByA = await a.get('shared', { conflicts: true });
  assert.equal(seenByA.step, 2);
  assert.equal(seenByA.owner, 'b');
  assert.match(seenByA._rev, /^2-/);
  assert.equal(seenByA._conflicts, undefined);
  assert.deepEqual(await snapshot(a), await snapshot(b));
});
