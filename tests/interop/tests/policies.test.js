'use strict';
// Outpost's conflict policies seen from PouchDB: under `lww` and `merge` the server resolves a
// conflict that two offline clients created, and every client that syncs receives the server's
// resolution and ends with the same winner and no conflict. (These are Outpost features, so this
// file always runs against an Outpost server, whatever INTEROP_SERVER says.)

const test = require('node:test');
const { before, after } = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, dbName } = require('../lib/pouch');
const { startServer } = require('../lib/server');
const { ok } = require('../lib/http');

let server;
before(async () => {
  server = await startServer({ kind: 'outpost' });
});
after(async () => {
  if (server) await server.destroy();
});

async function syncAll(name, ...clients) {
  // Two rounds: what one client pushes in the first reaches the others in the second.
  for (let round = 0; round < 2; round++) {
    for (const c of clients) await c.sync(remoteDb(server, name));
  }
}

async function offlineEdits(policy) {
  const name = dbName(`policy-${policy}`);
  const base = `${server.url}/${name}`;
  await ok('PUT', base);
  await ok('PUT', `${base}/_outpost`, { json: { conflict_policy: policy, lww_field: 'updated_at' } });
  await ok('PUT', `${base}/note`, { json: { title: 'draft', body: 'text', tags: [], updated_at: 1 } });
  const a = localDb(`${policy}-a`);
  const b = localDb(`${policy}-b`);
  await syncAll(name, a, b);
  // Both edit while disconnected: A changes the title later in time, B the body earlier.
  await a.put({ ...(await a.get('note')), title: 'final', updated_at: 3 });
  await b.put({ ...(await b.get('note')), body: 'better text', updated_at: 2 });
  await syncAll(name, a, b);
  return { base, clients: [a, b] };
}

async function assertResolvedEverywhere(base, clients) {
  const onServer = await ok('GET', `${base}/note?conflicts=true`);
  assert.equal(onServer._conflicts, undefined, 'no conflict left on the server');
  for (const [i, db] of clients.entries()) {
    const doc = await db.get('note', { conflicts: true });
    assert.equal(doc._rev, onServer._rev, `client ${i} has the server's winner`);
    assert.equal(doc._conflicts, undefined, `client ${i} has no conflict`);
  }
  return onServer;
}

test('under lww the later timestamp wins on the server and on every client', async () => {
  const { base, clients } = await offlineEdits('lww');
  const doc = await assertResolvedEverywhere(base, clients);
  assert.equal(doc.title, 'final');
  assert.equal(doc.body, 'text', 'the losing edit is superseded as a whole');
  assert.equal(doc.updated_at, 3);
});

test('under merge both offline edits survive on the server and on every client', async () => {
  const { base, clients } = await offlineEdits('merge');
  const doc = await assertResolvedEverywhere(base, clients);
  assert.equal(doc.title, 'final');
  assert.equal(doc.body, 'better text');
  // Changed on both sides: the lww rule keeps the later value.
  assert.equal(doc.updated_at, 3);
  const events = await ok('GET', `${base}/_events?doc_id=note`);
  assert.ok(events.results.some((e) => e.type === 'resolved' && e.policy === 'merge'));
});

test('a resolution carries its settings through PouchDB; a replica with other settings keeps the conflict visible', async () => {
  // Issue 17, defect 10: two replicas with different settings each deleted the other's
  // winner. The tombstone now names the settings it was written under, and PouchDB carries
  // that field unchanged to a replica that judges otherwise.
  const byTime = dbName('policy-time');
  const byRank = dbName('policy-rank');
  const time = `${server.url}/${byTime}`;
  const rank = `${server.url}/${byRank}`;
  await ok('PUT', time);
  await ok('PUT', rank);
  await ok('PUT', `${time}/_outpost`, { json: { conflict_policy: 'lww', lww_field: 'updated_at' } });
  await ok('PUT', `${rank}/_outpost`, { json: { conflict_policy: 'lww', lww_field: 'rank' } });
  await ok('PUT', `${time}/note`, { json: { title: 'draft', rank: 1, updated_at: 1 } });
  const a = localDb('settings-a');
  const b = localDb('settings-b');
  await syncAll(byTime, a, b);
  await a.put({ ...(await a.get('note')), title: 'later', updated_at: 3 });
  await b.put({ ...(await b.get('note')), rank: 9, updated_at: 2 });
  // B's edit reaches the rank replica first, on its own.
  await b.replicate.to(remoteDb(server, byRank));
  // The time replica resolves: A's later edit wins, B's gets a tombstone.
  await syncAll(byTime, a, b);
  const leaves = await a.get('note', { open_revs: 'all' });
  const tomb = leaves.map((l) => l.ok).find((d) => d._deleted);
  assert.deepEqual(tomb.outpost_resolution, { lww_field: 'updated_at', policy: 'lww' });
  // The tombstone reaches the rank replica through PouchDB: it brings B's edit back.
  await a.replicate.to(remoteDb(server, byRank));
  const onRank = await ok('GET', `${rank}/note?conflicts=true`);
  assert.equal(onRank.rank, 9, 'the rank replica keeps the edit its settings prefer');
  assert.equal(onRank._conflicts.length, 1, 'and the conflict is visible');
  const listed = await ok('GET', `${rank}/_conflicts`);
  assert.equal(listed.rows[0].reason, 'policy_mismatch');
  // Everyone syncs with both: the same conflict is visible everywhere, nothing deleted.
  for (let round = 0; round < 2; round++) {
    for (const c of [a, b]) {
      await c.sync(remoteDb(server, byRank));
      await c.sync(remoteDb(server, byTime));
    }
  }
  const onTime = await ok('GET', `${time}/note?conflicts=true`);
  assert.equal(onTime._conflicts.length, 1, 'the time replica shows the conflict too');
  for (const db of [a, b]) {
    const doc = await db.get('note', { conflicts: true });
    assert.equal(doc._rev, onTime._rev, 'every client has the same winner');
    assert.deepEqual(doc._conflicts, onTime._conflicts);
  }
});
