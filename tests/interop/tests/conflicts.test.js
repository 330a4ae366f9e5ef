'use strict';
// Conflicts: concurrent edits of one document on different replicas make a revision tree with
// several leaves. Every replica must pick the same winner with CouchDB's deterministic rule (a
// non-deleted leaf beats a deleted one, then the higher generation, then the greater revision
// string; docs.couchdb.org/en/stable/replication/conflicts.html) and list the others in
// `_conflicts`. Deleting the losing revision resolves the conflict everywhere.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName, snapshot } = require('../lib/pouch');
const { ok } = require('../lib/http');

const ctx = useServer();

/** CouchDB's winner among non-deleted leaves: higher generation first, then the greater rev string. */
function expectedWinner(revs) {
  return [...revs].sort((x, y) => {
    const gx = parseInt(x, 10);
    const gy = parseInt(y, 10);
    if (gx !== gy) return gy - gx;
    return x < y ? 1 : x > y ? -1 : 0;
  })[0];
}

async function syncAll(name, ...clients) {
  // Two rounds, so that what one client pushes in the first round reaches the others.
  for (let round = 0; round < 2; round++) {
    for (const c of clients) await c.sync(remoteDb(ctx.server, name));
  }
}

test('concurrent edits converge to the same winner on every side and are resolved by deleting the loser', async () => {
  const name = dbName('conflict');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  await ok('PUT', `${base}/doc`, { json: { value: 'original' } });

  const a = localDb('conflict-a');
  const b = localDb('conflict-b');
  await syncAll(name, a, b);

  const fromA = await a.put({ ...(await a.get('doc')), value: 'from a' });
  const fromB = await b.put({ ...(await b.get('doc')), value: 'from b' });
  assert.notEqual(fromA.rev, fromB.rev);
  await syncAll(name, a, b);

  const winner = expectedWinner([fromA.rev, fromB.rev]);
  const loser = winner === fromA.rev ? fromB.rev : fromA.rev;
  const winningValue = winner === fromA.rev ? 'from a' : 'from b';

  const onServer = await ok('GET', `${base}/doc?conflicts=true`);
  assert.equal(onServer._rev, winner, 'server winner');
  assert.equal(onServer.value, winningValue);
  assert.deepEqual(onServer._conflicts, [loser], 'server conflicts');
  for (const [label, db] of [['a', a], ['b', b]]) {
    const doc = await db.get('doc', { conflicts: true });
    assert.equal(doc._rev, winner, `winner on client ${label}`);
    assert.deepEqual(doc._conflicts, [loser], `conflicts on client ${label}`);
  }
  // Both leaves are served with open_revs=all, as the replicator and conflict handlers read them.
  const leaves = await ok('GET', `${base}/doc?open_revs=all`, { headers: { Accept: 'application/json' } });
  assert.deepEqual(leaves.map((l) => l.ok._rev).sort(), [fromA.rev, fromB.rev].sort());

  // The client that holds the losing edit resolves the conflict by deleting the losing revision.
  const resolver = loser === fromA.rev ? a : b;
  const removed = await resolver.remove('doc', loser);
  assert.match(removed.rev, /^3-/);
  await syncAll(name, a, b);

  const resolved = await ok('GET', `${base}/doc?conflicts=true`);
  assert.equal(resolved._rev, winner);
  assert.equal(resolved.value, winningValue);
  assert.equal(resolved._conflicts, undefined, 'no conflict left on the server');
  // The losing branch is still in the tree, ending in a deleted leaf.
  const after = await ok('GET', `${base}/doc?open_revs=all`);
  const leafRevs = Object.fromEntries(after.map((l) => [l.ok._rev, l.ok._deleted === true]));
  assert.deepEqual(leafRevs, { [winner]: false, [removed.rev]: true });
  for (const db of [a, b]) {
    const doc = await db.get('doc', { conflicts: true });
    assert.equal(doc._rev, winner);
    assert.equal(doc._conflicts, undefined);
  }
  assert.deepEqual(await snapshot(a), await snapshot(b));
});

test('the longer branch wins whatever the revision hashes', async () => {
  const name = dbName('conflict');
  const a = localDb('conflict-a');
  const b = localDb('conflict-b');
  await a.put({ _id: 'doc', n: 0 });
  await syncAll(name, a, b);

  let rev = (await a.get('doc'))._rev;
  for (let n = 1; n <= 2; n++) ({ rev } = await a.put({ _id: 'doc', _rev: rev, n, by: 'a' }));
  const short = await b.put({ ...(await b.get('doc')), n: 1, by: 'b' });
  await syncAll(name, a, b);

  const onServer = await ok('GET', `${ctx.server.url}/${name}/doc?conflicts=true`);
  assert.equal(onServer._rev, rev);
  assert.match(onServer._rev, /^3-/);
  assert.deepEqual(onServer._conflicts, [short.rev]);
  assert.equal((await b.get('doc'))._rev, rev);
  assert.equal((await a.get('doc'))._rev, rev);
});

test('revisions written with new_edits=false pick the winner by revision string and skip deleted leaves', async () => {
  // Revisions as another replicator would write them: same generation, known hashes.
  const name = dbName('conflict');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const h = (c) => c.repeat(32);
  const docs = [
    { _id: 'pick', _rev: `1-${h('1')}`, v: 'root' },
    { _id: 'pick', _rev: `2-${h('a')}`, v: 'a', _revisions: { start: 2, ids: [h('a'), h('1')] } },
    { _id: 'pick', _rev: `2-${h('f')}`, v: 'f', _revisions: { start: 2, ids: [h('f'), h('1')] } },
    { _id: 'pick', _rev: `2-${h('c')}`, v: 'c', _revisions: { start: 2, ids: [h('c'), h('1')] } },
    // A deleted leaf at a higher generation does not beat a live one.
    { _id: 'live', _rev: `2-${h('b')}`, v: 'live', _revisions: { start: 2, ids: [h('b'), h('1')] } },
    { _id: 'live', _rev: `3-${h('e')}`, _deleted: true, _revisions: { start: 3, ids: [h('e'), h('d'), h('1')] } },
  ];
  const res = await ok('POST', `${base}/_bulk_docs`, { json: { docs, new_edits: false } });
  assert.ok(Array.isArray(res));
  assert.deepEqual(res.filter((r) => r.error), [], 'no per-document errors');

  const local = localDb('conflict');
  await local.replicate.from(remoteDb(ctx.server, name));
  for (const source of ['server', 'client']) {
    const get = (id, q) =>
      source === 'server'
        ? ok('GET', `${base}/${id}?${q}`)
        : local.get(id, Object.fromEntries(new URLSearchParams(q).entries()));
    const pick = await get('pick', 'conflicts=true');
    assert.ok(pick._conflicts, `${source}: pick has conflicts`);
    assert.equal(pick._rev, `2-${h('f')}`, `${source}: greatest revision string wins`);
    assert.equal(pick.v, 'f');
    assert.deepEqual([...pick._conflicts].sort(), [`2-${h('a')}`, `2-${h('c')}`], `${source}: conflicts`);
    const live = await get('live', 'conflicts=true');
    assert.equal(live._rev, `2-${h('b')}`, `${source}: a live leaf beats a deleted one`);
    assert.equal(live.v, 'live');
    assert.equal(live._conflicts, undefined, `${source}: a deleted leaf is not a conflict`);
  }
  // The deleted leaf is still there for whoever asks for every leaf.
  const leaves = await local.get('live', { open_revs: 'all' });
  assert.deepEqual(leaves.map((l) => l.ok._rev).sort(), [`2-${h('b')}`, `3-${h('e')}`]);
});
