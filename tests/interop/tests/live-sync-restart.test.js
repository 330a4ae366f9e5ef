'use strict';
// Live sync across a server crash: a client runs `sync({live: true, retry: true})` and keeps
// writing while the server is killed with SIGKILL and restarted on the same port and data
// directory. PouchDB treats network errors as retryable: it pauses, backs off and restarts both
// replications from their checkpoints (pouchdb.com/api.html#replication, `retry`). Once the writes
// stop, the client and the server must converge on the same documents and revisions, including
// every write the client made while the server was down and every server write that got a 2xx.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName, snapshot, sleep, waitFor, divertInfoRejections, diffSummary } = require('../lib/pouch');
const { request, ok, serverSnapshot } = require('../lib/http');

const ctx = useServer();

/** Live replications to cancel even when a test fails half-way. */
const running = [];
after(() => running.forEach((r) => r.cancel()));

test('live sync survives SIGKILL and restart while the client keeps writing', { timeout: 90_000 }, async (t) => {
  const name = dbName('live');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const diverted = divertInfoRejections(base);

  const local = localDb('live');
  const sync = local.sync(remoteDb(ctx.server, name), {
    live: true,
    retry: true,
    // The default back-off waits a random 0-2 s and doubles on every failure; a short constant
    // keeps the test quick without changing what is exercised (the retry path itself).
    back_off_function: () => 200,
  });
  running.push(sync);
  const syncErrors = [];
  sync.on('error', (err) => syncErrors.push(err)); // only fatal errors end up here
  // Each direction emits `requestError` before it backs off and retries (PouchDB's backOff in
  // replicate.js); the sync object itself does not pass the error on with its own events.
  let retries = 0;
  sync.push.on('requestError', () => retries++);
  sync.pull.on('requestError', () => retries++);

  // The client writes a new document every 20 ms and edits one shared document now and then;
  // none of these writes ever fails, because they are local.
  let writing = true;
  const clientIds = [];
  const clientWriter = (async () => {
    let n = 0;
    while (writing) {
      const id = `client-${String(n).padStart(4, '0')}`;
      await local.put({ _id: id, n, at: Date.now() });
      clientIds.push(id);
      if (n % 10 === 0) {
        const shared = await local.get('client-shared').catch(() => ({ _id: 'client-shared' }));
        await local.put({ ...shared, n });
      }
      if (n % 5 === 0) {
        // Edited on both sides, so concurrent edits become conflicts that must converge too.
        const both = await local.get('both-sides').catch(() => ({ _id: 'both-sides' }));
        // The live pull can bring the server's edit in between the get and the put; that
        // 409 just loses this edit, as on the server side.
        await local.put({ ...both, by: 'client', n }).catch((err) => {
          if (err.status !== 409) throw err;
        });
      }
      n++;
      await sleep(20);
    }
  })();

  // Another client writes to the server over plain HTTP; only writes answered 2xx must survive.
  const acked = new Map();
  const serverWriter = (async () => {
    let n = 0;
    while (writing) {
      const id = `server-${String(n++).padStart(4, '0')}`;
      try {
        const res = await request('PUT', `${base}/${id}`, { json: { n } });
        if (res.status === 201 || res.status === 202) acked.set(id, res.body.rev);
        if (n % 3 === 0) {
          const current = await request('GET', `${base}/both-sides`);
          const body = current.status === 200 ? { ...current.body, by: 'server', n } : { by: 'server', n };
          await request('PUT', `${base}/both-sides`, { json: body }); // a 409 just loses this edit
        }
      } catch {
        // The server is down: connection refused or reset. Not acknowledged, so no expectation.
      }
      await sleep(40);
    }
  })();

  for (let round = 0; round < 2; round++) {
    await sleep(1500);
    await ctx.server.kill();
    await sleep(800); // the client keeps writing while the server is gone
    await ctx.server.restart();
  }
  await sleep(1500);
  writing = false;
  await Promise.all([clientWriter, serverWriter]);

  // Converged when both sides hold exactly the same documents and revisions.
  let localSnap;
  let serverSnap;
  const converged = await waitFor(
    async () => {
      localSnap = await snapshot(local);
      serverSnap = await serverSnapshot(base).catch(() => null);
      try {
        assert.deepEqual(localSnap, serverSnap);
        return true;
      } catch {
        return false;
      }
    },
    { timeoutMs: 45_000, intervalMs: 250 },
  );
  const stopped = new Promise((resolve) => sync.on('complete', resolve));
  sync.cancel();
  await stopped;
  assert.deepEqual(syncErrors, [], 'live sync with retry must not stop on a server crash');
  assert.ok(converged, `client and server did not converge:\n${diffSummary(localSnap, serverSnap)}`);

  const ids = new Set(localSnap.map((d) => d.id));
  for (const id of clientIds) assert.ok(ids.has(id), `client write ${id} reached the server`);
  const byId = new Map(serverSnap.map((d) => [d.id, d]));
  for (const [id, rev] of acked) {
    assert.ok(byId.has(id), `acknowledged server write ${id} is present`);
    assert.equal(byId.get(id).rev, rev, `acknowledged server write ${id} keeps its rev`);
  }
  assert.ok(acked.size > 20, `the server accepted writes around the crashes (${acked.size})`);
  assert.ok(retries >= 2, `the client noticed the server going away twice (${retries} retries)`);
  t.diagnostic(`PouchDB progress-update rejections set aside: ${diverted.length}`);
  const shared = byId.get('client-shared');
  assert.equal(shared.doc._conflicts, undefined, 'a document edited only by the client has no conflicts');
  // The document edited on both sides converged (same winner and conflicts, compared above).
  const both = byId.get('both-sides');
  assert.ok(both, 'the document edited on both sides exists');
  t.diagnostic(`both-sides: winner ${both.rev}, ${(both.doc._conflicts || []).length} conflicts`);
});
