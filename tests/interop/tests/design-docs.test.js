'use strict';
// Design documents with JavaScript, as PouchDB uses them against a server: a pull with
// `filter: 'ddoc/name'` (and `query_params`) or `filter: '_view'` makes the server run the
// function (`GET /db/_changes?filter=...`), a push into a database with `validate_doc_update`
// reports each refused document as a `denied` event, and `query()` reads a view.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName } = require('../lib/pouch');
const { ok } = require('../lib/http');
const { docs, serverWith, ids, expectedIds } = require('../lib/filter-fixture');

const ctx = useServer();

const ddoc = {
  _id: '_design/app',
  filters: {
    colour: 'function (doc, req) { return doc.colour === req.query.colour; }',
    ann: 'function (doc) { return doc.owner && doc.owner.name === "ann"; }',
  },
  views: {
    big: { map: 'function (doc) { if (doc.n >= 50) { emit(doc.n); } }' },
    by_colour: { map: 'function (doc) { emit(doc.colour, doc.n); }', reduce: '_sum' },
  },
};

test('pull with a design-document filter transfers exactly what the function passes', async () => {
  const name = dbName('ddoc');
  const base = await serverWith(ctx.server, name);
  await ok('PUT', `${base}/_design/app`, { json: ddoc });
  const remote = remoteDb(ctx.server, name);

  const byParam = localDb('ddoc');
  const first = await byParam.replicate.from(remote, { filter: 'app/colour', query_params: { colour: 'blue' } });
  assert.equal(first.docs_written, expectedIds((d) => d.colour === 'blue').length);
  assert.deepEqual(await ids(byParam), expectedIds((d) => d.colour === 'blue'));

  const byOwner = localDb('ddoc');
  await byOwner.replicate.from(remote, { filter: 'app/ann' });
  assert.deepEqual(await ids(byOwner), expectedIds((d) => d.owner.name === 'ann'));

  const byView = localDb('ddoc');
  await byView.replicate.from(remote, { filter: '_view', view: 'app/big' });
  assert.deepEqual(await ids(byView), expectedIds((d) => d.n >= 50));

  // Later changes: a new match arrives, a non-match does not.
  await ok('PUT', `${base}/late-blue`, { json: { colour: 'blue', n: 100, owner: { name: 'bob', tags: [] } } });
  await ok('PUT', `${base}/late-red`, { json: { colour: 'red', n: 101, owner: { name: 'bob', tags: [] } } });
  const second = await byParam.replicate.from(remote, { filter: 'app/colour', query_params: { colour: 'blue' } });
  assert.equal(second.docs_written, 1);
  assert.ok((await ids(byParam)).includes('late-blue'));
});

test('a push into a validated database reports refused documents as denied', async () => {
  const name = dbName('ddoc');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  await ok('PUT', `${base}/_design/guard`, {
    json: {
      validate_doc_update:
        'function (newDoc) { if (newDoc.colour === "red") { throw({forbidden: "no red"}); } ' +
        'if (newDoc.colour === "green") { throw({unauthorized: "no green"}); } }',
    },
  });
  const local = localDb('ddoc');
  await local.bulkDocs(docs());
  const denied = [];
  const result = await local.replicate
    .to(remoteDb(ctx.server, name))
    .on('denied', (e) => denied.push(e));
  const refused = expectedIds((d) => d.colour !== 'blue');
  assert.equal(result.doc_write_failures, refused.length);
  assert.equal(denied.length, refused.length);
  assert.ok(denied.every((e) => e.error === 'forbidden' || e.error === 'unauthorized'), JSON.stringify(denied[0]));
  const stored = await ok('GET', `${base}/_all_docs`);
  assert.deepEqual(
    stored.rows.map((r) => r.id).filter((id) => !id.startsWith('_design/')),
    expectedIds((d) => d.colour === 'blue'),
  );
});

test('query() reads a view of the server, map and reduce', async () => {
  const name = dbName('ddoc');
  const base = await serverWith(ctx.server, name);
  await ok('PUT', `${base}/_design/app`, { json: ddoc });
  const remote = remoteDb(ctx.server, name);
  const big = await remote.query('app/big', { descending: true, limit: 3 });
  assert.deepEqual(big.rows.map((r) => r.key), [59, 58, 57]);
  const sums = await remote.query('app/by_colour', { group: true });
  const expected = ['blue', 'green', 'red'].map((c) => ({
    key: c,
    value: docs().filter((d) => d.colour === c).reduce((s, d) => s + d.n, 0),
  }));
  assert.deepEqual(sums.rows, expected);
});
