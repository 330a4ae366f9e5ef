'use strict';
// Replication restricted by a Mango `selector`. Pulling, PouchDB asks the server for
// `POST /db/_changes?filter=_selector` with `{"selector": ...}`
// (docs.couchdb.org/en/stable/api/database/changes.html#selector), so the server evaluates the
// selector (dotted paths, `$gte`, `$in`, `$exists`, `$or`, `$all`, `$ne`, ...) and a server that
// ignored it would send documents the client did not ask for. Pushing, PouchDB filters locally.
//
// pouchdb-server 4.2 does not implement `filter=_selector` (it looks for a design document named
// `_selector` and crashes on the error), so this file fails against it; CouchDB 3 and Outpost
// implement it.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName } = require('../lib/pouch');
const { ok } = require('../lib/http');
const { docs, serverWith, ids, expectedIds } = require('../lib/filter-fixture');

const ctx = useServer();

test('pull with a selector transfers exactly the matching documents', async () => {
  const name = dbName('filter');
  await serverWith(ctx.server, name);
  const cases = [
    [{ colour: 'red' }, (d) => d.colour === 'red'],
    [{ n: { $gte: 10, $lt: 20 }, colour: { $in: ['green', 'blue'] } }, (d) => d.n >= 10 && d.n < 20 && d.colour !== 'red'],
    [{ 'owner.name': 'ann', archived: { $exists: false } }, (d) => d.owner.name === 'ann' && !d.archived],
    [{ $or: [{ 'owner.tags': { $all: ['vip'] } }, { n: { $lt: 2 } }] }, (d) => d.owner.tags.includes('vip') || d.n < 2],
    [{ colour: { $ne: 'blue' }, n: { $gt: 50 } }, (d) => d.colour !== 'blue' && d.n > 50],
  ];
  for (const [selector, predicate] of cases) {
    const local = localDb('filter');
    const result = await local.replicate.from(remoteDb(ctx.server, name), { selector });
    const expected = expectedIds(predicate);
    assert.ok(expected.length > 0 && expected.length < 60, 'the selector is selective');
    assert.equal(result.docs_written, expected.length, `docs written for ${JSON.stringify(selector)}`);
    assert.deepEqual(await ids(local), expected, `ids for ${JSON.stringify(selector)}`);
  }
});

test('a selector pull follows later changes: new matches arrive, non-matching edits do not', async () => {
  const name = dbName('filter');
  const base = await serverWith(ctx.server, name);
  const local = localDb('filter');
  const remote = remoteDb(ctx.server, name);
  const selector = { colour: 'green' };
  await local.replicate.from(remote, { selector });
  const before = await ids(local);
  assert.deepEqual(before, expectedIds((d) => d.colour === 'green'));

  await ok('PUT', `${base}/late-green`, { json: { colour: 'green', n: 100 } });
  await ok('PUT', `${base}/late-red`, { json: { colour: 'red', n: 101 } });
  const second = await local.replicate.from(remote, { selector });
  assert.equal(second.docs_written, 1);
  assert.deepEqual(await ids(local), [...before, 'late-green'].sort());
});

test('push with a selector sends only the matching documents', async () => {
  const local = localDb('filter');
  await local.bulkDocs(docs());
  const bySelector = dbName('filter');
  await local.replicate.to(remoteDb(ctx.server, bySelector), { selector: { colour: 'blue', n: { $lte: 20 } } });
  const selected = await ok('GET', `${ctx.server.url}/${bySelector}/_all_docs`);
  assert.deepEqual(selected.rows.map((r) => r.id), expectedIds((d) => d.colour === 'blue' && d.n <= 20));
});

test('the server filters _changes itself for _selector', async () => {
  // Checked without PouchDB, so that client-side filtering cannot mask a server that ignores filters.
  const name = dbName('filter');
  const base = await serverWith(ctx.server, name);
  const bySelector = await ok('POST', `${base}/_changes?filter=_selector`, {
    json: { selector: { 'owner.name': 'ann', colour: 'blue' } },
  });
  assert.deepEqual(
    bySelector.results.map((r) => r.id).sort(),
    expectedIds((d) => d.owner.name === 'ann' && d.colour === 'blue'),
  );
});
