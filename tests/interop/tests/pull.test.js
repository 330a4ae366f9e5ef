'use strict';
// Pull: documents written to the server over plain HTTP (as another CouchDB client would) are
// replicated into a local PouchDB with `db.replicate.from`, revisions and histories intact.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName, snapshot } = require('../lib/pouch');
const { ok, request, docPath } = require('../lib/http');

const ctx = useServer();

test('pull copies documents written on the server, with their revisions and history', async () => {
  const name = dbName('pull');
  const base = `${ctx.server.url}/${name}`;
  assert.equal((await request('PUT', `${base}`)).status, 201);

  const docs = [];
  for (let i = 0; i < 40; i++) docs.push({ _id: `p${i}`, i, text: `value ${i}`, list: [i, { k: 'v' }] });
  const written = await ok('POST', `${base}/_bulk_docs`, { json: { docs } });
  assert.equal(written.length, 40);
  // Three generations for one document, written one PUT at a time.
  let rev = written.find((r) => r.id === 'p7').rev;
  for (const v of ['second', 'third']) {
    ({ rev } = await ok('PUT', `${base}/p7`, { json: { _rev: rev, i: 7, text: v } }));
  }
  // A document created with PUT and a server-generated id from POST /db.
  await ok('PUT', `${base}/${docPath('single')}`, { json: { kind: 'single' } });
  const posted = await ok('POST', `${base}`, { json: { kind: 'posted' } });
  assert.ok(posted.id, 'POST /db answers the generated id');

  const local = localDb('pull');
  const result = await local.replicate.from(remoteDb(ctx.server, name));
  assert.equal(result.ok, true);
  assert.equal(result.docs_written, 42);
  assert.deepEqual(result.errors, []);

  const all = await ok('GET', `${base}/_all_docs?include_docs=true`);
  assert.equal(all.total_rows, 42);
  assert.deepEqual(
    await snapshot(local),
    all.rows.map((r) => ({ id: r.id, rev: r.value.rev, doc: r.doc })),
  );

  const p7 = await local.get('p7', { revs: true });
  assert.equal(p7.text, 'third');
  assert.equal(p7._rev, rev);
  const served = await ok('GET', `${base}/p7?revs=true`);
  assert.deepEqual(p7._revisions, served._revisions);
  assert.equal(p7._revisions.start, 3);
  assert.equal(p7._revisions.ids.length, 3);
  assert.equal((await local.get(posted.id)).kind, 'posted');
});

test('pulling from a database that does not exist creates it, as PouchDB expects', async () => {
  // PouchDB's HTTP adapter answers a 404 on GET /db/ with PUT /db/ (and treats 412 as success).
  const name = dbName('pull-empty');
  const local = localDb('pull');
  const result = await local.replicate.from(remoteDb(ctx.server, name));
  assert.equal(result.docs_written, 0);
  const info = await ok('GET', `${ctx.server.url}/${name}`);
  assert.equal(info.db_name, name);
  assert.equal(info.doc_count, 0);
});

test('pull brings later edits and leaves no conflicts for linear history', async () => {
  const name = dbName('pull');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const { rev } = await ok('PUT', `${base}/doc`, { json: { v: 1 } });
  const local = localDb('pull');
  const remote = remoteDb(ctx.server, name);
  await local.replicate.from(remote);
  const { rev: rev2 } = await ok('PUT', `${base}/doc`, { json: { _rev: rev, v: 2 } });
  const second = await local.replicate.from(remote);
  assert.equal(second.docs_written, 1);
  const doc = await local.get('doc', { conflicts: true });
  assert.equal(doc._rev, rev2);
  assert.equal(doc.v, 2);
  assert.equal(doc._conflicts, undefined);
});
