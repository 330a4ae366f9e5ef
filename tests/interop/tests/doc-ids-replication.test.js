'use strict';
// Replication restricted to `doc_ids`. Pulling, PouchDB asks the server for
// `POST /db/_changes?filter=_doc_ids` with `{"doc_ids": [...]}`
// (docs.couchdb.org/en/stable/api/database/changes.html#filtering), so the server does the
// filtering and a server that ignored it would send documents the client did not ask for.
// Pushing, PouchDB filters its own changes feed and the server just accepts the result.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName } = require('../lib/pouch');
const { ok } = require('../lib/http');
const { docs, serverWith, ids } = require('../lib/filter-fixture');

const ctx = useServer();

test('pull with doc_ids transfers exactly the listed documents', async () => {
  const name = dbName('filter');
  await serverWith(ctx.server, name);
  const wanted = ['item-03', 'item-17', 'item-42', 'no-such-doc'];
  const local = localDb('filter');
  const result = await local.replicate.from(remoteDb(ctx.server, name), { doc_ids: wanted });
  assert.equal(result.docs_written, 3);
  assert.deepEqual(await ids(local), ['item-03', 'item-17', 'item-42']);
});

test('push with doc_ids sends only the listed documents', async () => {
  const local = localDb('filter');
  await local.bulkDocs(docs());
  const byIds = dbName('filter');
  const result = await local.replicate.to(remoteDb(ctx.server, byIds), { doc_ids: ['item-01', 'item-02'] });
  assert.equal(result.docs_written, 2);
  const listed = await ok('GET', `${ctx.server.url}/${byIds}/_all_docs`);
  assert.deepEqual(listed.rows.map((r) => r.id), ['item-01', 'item-02']);
});

test('the server filters _changes itself for _doc_ids', async () => {
  // Checked without PouchDB, so that client-side filtering cannot mask a server that ignores filters.
  const name = dbName('filter');
  const base = await serverWith(ctx.server, name);
  const byIds = await ok('POST', `${base}/_changes?filter=_doc_ids`, { json: { doc_ids: ['item-05', 'item-06'] } });
  assert.deepEqual(byIds.results.map((r) => r.id).sort(), ['item-05', 'item-06']);
  const byQuery = await ok('GET', `${base}/_changes?filter=_doc_ids&doc_ids=${encodeURIComponent('["item-07"]')}`);
  assert.deepEqual(byQuery.results.map((r) => r.id), ['item-07']);
});
