'use strict';
// Three `outpost serve` nodes on one PostgreSQL database (docs/scale-out.md), each with PouchDB
// clients live-syncing through it, as an app behind a load balancer would:
// - clients writing concurrently through different nodes, editing the same documents (so there
//   are conflicts), converge on identical snapshots (ids, revs, `_conflicts`), equal to every
//   node's;
// - a node SIGKILLed mid-sync, its clients cancelling their sync and starting it again against
//   another node (what a load balancer does once a node fails its health check), loses nothing:
//   every write a client made (acknowledged by its local database) ends up in every client and on
//   every node, the killed one included once it is back.
//
// The nodes work in a PostgreSQL schema of their own, created with `psql` at the start and dropped
// at the end. Needs OUTPOST_TEST_POSTGRES_URL and `psql` on PATH; without either it skips saying
// why, and under CI=true it fails instead. Outpost only: pouchdb-server has no shared store.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { spawnSync } = require('node:child_process');
const { isDeepStrictEqual } = require('node:util');
const {
  PouchDB, localDb, remoteDb, dbName, snapshot, sleep, waitFor, divertInfoRejections, diffSummary,
} = require('../lib/pouch');
const { ok, request, docPath, serverSnapshot } = require('../lib/http');
const { startServer } = require('../lib/server');

const PG_URL = process.env.OUTPOST_TEST_POSTGRES_URL;

function hasPsql() {
  return spawnSync('psql', ['--version'], { stdio: 'ignore' }).status === 0;
}

function skipReason() {
  if ((process.env.INTEROP_SERVER || 'outpost') !== 'outpost') return 'several nodes on one store are an Outpost feature';
  let missing = null;
  if (!PG_URL) missing = 'OUTPOST_TEST_POSTGRES_URL is not set, so there is no PostgreSQL to test against';
  else if (!hasPsql()) missing = 'psql is not on PATH, so the test cannot create its PostgreSQL schema';
  if (missing && process.env.CI === 'true') throw new Error(`${missing}: CI must run the scale-out tests`);
  return missing || false;
}

const skip = skipReason();
if (skip) console.error(`scale-out.test.js skipped: ${skip}`);

/** Runs one SQL statement on the test server with psql; throws with psql's output on failure. */
function psql(sql) {
  const res = spawnSync('psql', [PG_URL, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql], { encoding: 'utf8' });
  if (res.status !== 0) throw new Error(`psql ${JSON.stringify(sql)} failed: ${res.stderr || res.error}`);
}

const schema = `interop_scale_${crypto.randomBytes(6).toString('hex')}`;
/** The three nodes, all on the same schema. */
const nodes = [];
/** Live replications to cancel even when a test fails half-way. */
const running = [];

before(async () => {
  if (skip) return;
  psql(`CREATE SCHEMA "${schema}"`);
  const store = `${PG_URL}${PG_URL.includes('?') ? '&' : '?'}options=-c%20search_path%3D${schema}`;
  // One after the other, so the first creates the tables and the others find them.
  for (let i = 0; i < 3; i++) nodes.push(await startServer({ kind: 'outpost', quiet: true, env: { OUTPOST_STORE: store } }));
});

after(async () => {
  running.forEach((r) => r.cancel());
  await Promise.all(nodes.map((n) => n.destroy()));
  if (!skip) psql(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  // A live replication left running by a failed test would keep the file alive; the timer is
  // unref'd, so it only fires in that case.
  setTimeout(() => process.exit(process.exitCode || 0), 5000).unref();
});

/** Live two-way sync of a local database with database `name` on `node`, retrying quickly. */
function liveSync(local, node, name, remote = remoteDb(node, name)) {
  const sync = local.sync(remote, { live: true, retry: true, back_off_function: () => 200 });
  sync.errors = [];
  sync.on('error', (err) => sync.errors.push(err)); // only fatal errors end up here
  running.push(sync);
  return sync;
}

/**
 * A client that keeps writing to its local database until `stop()`: a new document of its own
 * every few milliseconds and, every fourth write, an edit of one of the shared documents that
 * every client edits. Each write the local database acknowledges is recorded as `{ id, rev }`.
 */
function writer(client, sharedIds) {
  const written = [];
  let writing = true;
  const done = (async () => {
    for (let n = 0; writing; n++) {
      const id = `${client}-${String(n).padStart(4, '0')}`;
      const res = await client.local.put({ _id: id, client: client.name, n });
      written.push({ id, rev: res.rev });
      if (n % 4 === 0) {
        const sharedId = sharedIds[(n / 4) % sharedIds.length];
        const doc = await client.local.get(sharedId);
        try {
          const edit = await client.local.put({ ...doc, by: client.name, n });
          written.push({ id: sharedId, rev: edit.rev });
        } catch (err) {
          // The live pull brought another revision in between the get and the put: this edit was
          // refused locally, so it was never acknowledged.
          if (err.status !== 409) throw err;
        }
      }
      await sleep(15);
    }
  })();
  return { written, stop: () => { writing = false; return done; } };
}

/**
 * Clients named `c0`, `c1`, … that each create the shared documents on their own before any
 * sync, so every shared document starts with one conflicting first revision per client.
 */
async function makeClients(count, sharedIds) {
  const clients = [];
  for (let i = 0; i < count; i++) {
    const client = { name: `c${i}`, local: localDb(`scale-c${i}`), toString: () => `c${i}` };
    for (const id of sharedIds) await client.local.put({ _id: id, by: client.name, n: -1 });
    clients.push(client);
  }
  return clients;
}

/**
 * Waits until every client and every given node hold the same snapshot; returns the snapshots
 * (clients first, then nodes) for the assertions.
 */
async function converge(clients, liveNodes, name) {
  let snaps = [];
  const same = await waitFor(
    async () => {
      snaps = [
        ...(await Promise.all(clients.map((c) => snapshot(c.local)))),
        ...(await Promise.all(liveNodes.map((n) => serverSnapshot(`${n.url}/${name}`).catch(() => null)))),
      ];
      return snaps.every((s) => s && isDeepStrictEqual(s, snaps[0]));
    },
    { timeoutMs: 45_000, intervalMs: 250 },
  );
  const labels = [...clients.map(String), ...liveNodes.map((n) => `node ${n.url}`)];
  for (let k = 1; k < snaps.length; k++) {
    assert.ok(same, `${labels[0]} and ${labels[k]} did not converge:\n${diffSummary(snaps[0], snaps[k])}`);
    assert.deepEqual(snaps[k], snaps[0], `${labels[k]} equals ${labels[0]}`);
  }
  return snaps;
}

/**
 * Every acknowledged write is on `node`: its revision is a leaf or an ancestor of a leaf of its
 * document's revision tree (a shared document's edits may lose to another branch, but never
 * vanish), and a client's own document is at the last revision that client wrote.
 */
async function assertNothingLost(node, name, writes) {
  const byId = new Map();
  for (const w of writes) byId.set(w.id, [...(byId.get(w.id) || []), w.rev]);
  for (const [id, revs] of byId) {
    const res = await request('GET', `${node.url}/${name}/${docPath(id)}?open_revs=all&revs=true`, {
      headers: { accept: 'application/json' },
    });
    assert.equal(res.status, 200, `GET ${id}?open_revs=all on ${node.url}: ${JSON.stringify(res.body)}`);
    const leaves = res.body.filter((r) => r.ok).map((r) => r.ok);
    const known = new Set();
    for (const leaf of leaves) leaf._revisions.ids.forEach((hash, k) => known.add(`${leaf._revisions.start - k}-${hash}`));
    for (const rev of revs) assert.ok(known.has(rev), `${id} ${rev}, acknowledged by its client, is on ${node.url}`);
    if (!id.startsWith('shared-')) {
      assert.deepEqual(leaves.map((l) => l._rev), [revs[revs.length - 1]], `${id} is at its client's last revision`);
    }
  }
}

test('clients live-syncing through three nodes converge, conflicts included', { skip, timeout: 90_000 }, async (t) => {
  const name = dbName('scale');
  await ok('PUT', `${nodes[0].url}/${name}`);
  const sharedIds = ['shared-0', 'shared-1', 'shared-2'];
  const clients = await makeClients(3, sharedIds);
  const syncs = clients.map((c, i) => liveSync(c.local, nodes[i], name));
  const writers = clients.map((c) => writer(c, sharedIds));
  await sleep(3000);
  await Promise.all(writers.map((w) => w.stop()));

  const [snap] = await converge(clients, nodes, name);
  for (const s of syncs) assert.deepEqual(s.errors, [], 'live sync never stopped on an error');
  const writes = writers.flatMap((w) => w.written);
  for (const node of nodes) await assertNothingLost(node, name, writes);
  const conflicted = snap.filter((d) => (d.doc._conflicts || []).length > 0).map((d) => d.id);
  assert.deepEqual(conflicted, sharedIds, 'each shared document ends with conflicts, the same everywhere');
  t.diagnostic(`${writes.length} acknowledged writes, ${snap.length} documents`);
});

test('a node SIGKILLed mid-sync: its clients fail over to the other nodes and nothing is lost', { skip, timeout: 90_000 }, async (t) => {
  const name = dbName('failover');
  await ok('PUT', `${nodes[0].url}/${name}`);
  const sharedIds = ['shared-0', 'shared-1'];
  // Two clients on the node that dies, one on each of the others.
  const clients = await makeClients(4, sharedIds);
  const home = [nodes[0], nodes[1], nodes[2], nodes[2]];
  const syncs = clients.map((c, i) => liveSync(c.local, home[i], name));
  const writers = clients.map((c) => writer(c, sharedIds));
  const diverted = divertInfoRejections(`${nodes[2].url}/${name}`);

  await sleep(1500);
  const victim = nodes[2];
  await victim.kill();
  // The clients of the dead node keep writing locally while their sync retries in vain, until
  // the load balancer (here, the test) sends them elsewhere: cancel and sync with another node.
  await sleep(500);
  const beforeFailover = writers.map((w) => w.written.length);
  const movedTo = [];
  for (const [i, to] of [[2, nodes[0]], [3, nodes[1]]]) {
    syncs[i].cancel();
    // Only the URLs are recorded: `remoteDb`'s recording reads the answers too, which a
    // cancelled live feed turns into an abort after the test.
    const urls = [];
    const fetch = (url, opts) => {
      urls.push(String(url));
      return PouchDB.fetch(url, opts);
    };
    movedTo.push(urls);
    syncs[i] = liveSync(clients[i].local, to, name, new PouchDB(`${to.url}/${name}`, { fetch }));
  }
  await sleep(1500);
  await Promise.all(writers.map((w) => w.stop()));

  await converge(clients, [nodes[0], nodes[1]], name);
  const writes = writers.flatMap((w) => w.written);
  // The killed node comes back on the same store and serves the same database.
  await victim.restart();
  await converge(clients, nodes, name);
  for (const s of [syncs[0], syncs[1], syncs[2], syncs[3]]) assert.deepEqual(s.errors, [], 'live sync never stopped on an error');
  for (const node of nodes) await assertNothingLost(node, name, writes);
  for (const i of [2, 3]) {
    assert.ok(beforeFailover[i] > 0 && writers[i].written.length > beforeFailover[i], `c${i} wrote before and after its failover`);
  }
  // The nodes share the server uuid, which PouchDB names its replications after (with the
  // database name), so the checkpoints made through the dead node carry over.
  for (const urls of movedTo) {
    const first = urls.find((url) => new URL(url).pathname.endsWith('/_changes'));
    const since = first && new URL(first).searchParams.get('since');
    assert.ok(since && since !== '0', `the pull through the new node resumed from a checkpoint (since=${since})`);
  }
  t.diagnostic(`${writes.length} acknowledged writes; PouchDB progress-update rejections set aside: ${diverted.length}`);
});
