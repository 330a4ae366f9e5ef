'use strict';
// `_local` documents: per-replica documents that are never replicated and never listed in
// `_changes` or `_all_docs`; their revisions are `0-N` (docs.couchdb.org/en/stable/api/local.html).
// PouchDB keeps its replication checkpoints in them, so writes must follow CouchDB's rules: a PUT
// with the current `_rev` succeeds, a stale `_rev` is a 409 conflict.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName } = require('../lib/pouch');
const { ok, request } = require('../lib/http');

const ctx = useServer();

test('_local documents through the PouchDB HTTP adapter: revisions 0-N, conflicts, delete', async () => {
  const name = dbName('local');
  const remote = remoteDb(ctx.server, name);
  const first = await remote.put({ _id: '_local/settings', theme: 'dark' });
  assert.equal(first.id, '_local/settings');
  assert.equal(first.rev, '0-1');
  const read = await remote.get('_local/settings');
  assert.equal(read.theme, 'dark');
  assert.equal(read._rev, '0-1');

  const second = await remote.put({ ...read, theme: 'light' });
  assert.equal(second.rev, '0-2');
  await assert.rejects(remote.put({ ...read, theme: 'stale' }), (err) => err.status === 409);
  assert.equal((await remote.get('_local/settings')).theme, 'light');

  await remote.remove('_local/settings', second.rev);
  await assert.rejects(remote.get('_local/settings'), (err) => err.status === 404);
});

test('_local documents are never listed in _all_docs or _changes and never replicated', async () => {
  const name = dbName('local');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  await ok('PUT', `${base}/_local/server-only`, { json: { secret: 1 } });
  await ok('PUT', `${base}/normal`, { json: { n: 1 } });
  const info = await ok('GET', `${base}/`);
  assert.equal(info.doc_count, 1, '_local documents are not counted');
  assert.deepEqual((await ok('GET', `${base}/_all_docs`)).rows.map((r) => r.id), ['normal']);
  assert.deepEqual((await ok('GET', `${base}/_changes`)).results.map((r) => r.id), ['normal']);

  const local = localDb('local');
  await local.put({ _id: '_local/client-only', secret: 2 });
  await local.put({ _id: 'from-client' });
  await local.sync(remoteDb(ctx.server, name));

  await assert.rejects(local.get('_local/server-only'), (err) => err.status === 404);
  assert.equal((await request('GET', `${base}/_local/client-only`)).status, 404);
  assert.equal((await ok('GET', `${base}/from-client`))._id, 'from-client');
  assert.equal((await local.get('normal')).n, 1);
  // The replication's own checkpoint on the server is a _local document too, so it must not
  // appear in the listings after the sync either.
  assert.deepEqual((await ok('GET', `${base}/_all_docs`)).rows.map((r) => r.id), ['from-client', 'normal']);
  assert.deepEqual(
    (await ok('GET', `${base}/_changes`)).results.map((r) => r.id).sort(),
    ['from-client', 'normal'],
  );
});

test('_local documents over plain HTTP: ids with odd characters and body round trip', async () => {
  const name = dbName('local');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const body = { nested: { list: [1, 'two', null, { three: 3 }] }, text: 'ünïcødé ✓' };
  const put = await ok('PUT', `${base}/_local/${encodeURIComponent('odd id/with slash')}`, { json: body });
  assert.equal(put.id, '_local/odd id/with slash');
  assert.equal(put.rev, '0-1');
  const got = await ok('GET', `${base}/_local/${encodeURIComponent('odd id/with slash')}`);
  assert.deepEqual({ nested: got.nested, text: got.text }, body);
  assert.equal(got._id, '_local/odd id/with slash');
  const missing = await request('GET', `${base}/_local/nothing-here`);
  assert.equal(missing.status, 404);
  assert.equal(missing.body.error, 'not_found');
});
