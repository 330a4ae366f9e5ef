'use strict';
// Crash safety: many clients write concurrently over plain HTTP (single PUTs that extend revision
// chains, and `_bulk_docs` batches), the server is killed with SIGKILL in the middle of the load and
// restarted on the same data directory. Every write that was answered with a 2xx must be there
// afterwards, with the revision the server answered, because CouchDB only acknowledges a write
// once it is durable (docs.couchdb.org/en/stable/api/document/common.html#put--db-docid: "201
// Created – Document created and stored on disk"). A write whose answer never arrived may or may
// not have been committed, and both outcomes are accepted for it.

const test = require('node:test');
const assert = require('node:assert/strict');
const { Agent, request } = require('undici');
const { useServer, dbName, sleep } = require('../lib/pouch');
const { ok, docPath } = require('../lib/http');

const ctx = useServer();

const WRITERS = 32;
const CHAINS_PER_WRITER = 4;

function generation(rev) {
  return parseInt(rev, 10);
}

function hashOf(rev) {
  return rev.slice(rev.indexOf('-') + 1);
}

/**
 * Runs the writers until the first failed request of each. Returns nothing; fills `state`:
 * `docs` maps an id to `{ rev, v, acked: [{ rev, v }], uncertain: { v } | null }`.
 */
async function load(base, state, writer) {
  const agent = new Agent({ connections: WRITERS, keepAliveTimeout: 10_000 });
  const send = async (method, path, body) => {
    const res = await request(`${base}/${path}`, {
      method,
      dispatcher: agent,
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(body),
    });
    return { status: res.statusCode, body: await res.body.json() };
  };

  async function run(w) {
    let batch = 0;
    for (let step = 0; !state.stopped; step++) {
      if (step % 4 === 3) {
        // A batch of new documents through _bulk_docs.
        const docs = Array.from({ length: 5 }, (_, k) => ({
          _id: `w${w}-r${state.round}-b${batch}-${k}`,
          v: 1,
          pad: 'x'.repeat(200),
        }));
        batch++;
        for (const d of docs) state.docs.set(d._id, { rev: null, v: 0, acked: [], uncertain: { v: 1 } });
        let res;
        try {
          res = await send('POST', '_bulk_docs', { docs });
        } catch {
          state.failures++;
          return;
        }
        if (res.status !== 201) throw new Error(`_bulk_docs answered ${res.status} ${JSON.stringify(res.body)}`);
        // CouchDB answers _bulk_docs in request order; pouchdb-server, the reference server, does
        // not, so for it the results are matched by id only.
        if (state.kind === 'pouchdb-server') {
          assert.deepEqual(res.body.map((r) => r.id).sort(), docs.map((d) => d._id).sort());
        } else {
          assert.deepEqual(res.body.map((r) => r.id), docs.map((d) => d._id), '_bulk_docs results in request order');
        }
        for (const r of res.body) {
          assert.ok(r.ok && r.rev, `bulk write of ${r.id} accepted: ${JSON.stringify(r)}`);
          const entry = state.docs.get(r.id);
          Object.assign(entry, { rev: r.rev, v: 1, uncertain: null });
          entry.acked.push({ rev: r.rev, v: 1 });
          state.acks++;
        }
      } else {
        // The next edit of one of this writer's revision chains.
        const id = `w${w}-chain-${step % CHAINS_PER_WRITER}`;
        if (!state.docs.has(id)) state.docs.set(id, { rev: null, v: 0, acked: [], uncertain: null });
        const entry = state.docs.get(id);
        const v = entry.v + 1;
        const body = { v, writer: w, pad: 'y'.repeat(100) };
        if (entry.rev) body._rev = entry.rev;
        entry.uncertain = { v };
        let res;
        try {
          res = await send('PUT', docPath(id), body);
        } catch {
          state.failures++;
          return;
        }
        if (res.status !== 201) throw new Error(`PUT ${id} answered ${res.status} ${JSON.stringify(res.body)}`);
        Object.assign(entry, { rev: res.body.rev, v, uncertain: null });
        entry.acked.push({ rev: res.body.rev, v });
        state.acks++;
      }
    }
  }

  const runs = Array.from({ length: WRITERS }, (_, w) => run(w));
  await writer(runs);
  await Promise.all(runs);
  await agent.close().catch(() => {});
}

/** Checks every acknowledged write against what the restarted server serves. */
async function verify(base, state) {
  let checked = 0;
  for (const [id, entry] of state.docs) {
    if (entry.acked.length === 0 && entry.uncertain) continue; // never acknowledged: no expectation
    const doc = await ok('GET', `${base}/${docPath(id)}?revs=true`);
    const last = entry.acked[entry.acked.length - 1];
    if (doc._rev === last.rev) {
      assert.equal(doc.v, last.v, `${id}: body of the acknowledged revision`);
    } else {
      // Only the one unanswered write that was in flight at the kill may have gone further.
      assert.ok(entry.uncertain, `${id}: acknowledged ${last.rev} but the server has ${doc._rev}`);
      assert.equal(generation(doc._rev), generation(last.rev) + 1, `${id}: at most the in-flight write beyond ${last.rev}`);
      assert.equal(doc.v, entry.uncertain.v, `${id}: body of the in-flight write`);
    }
    // Every acknowledged revision of the chain is in the served history.
    const { start, ids } = doc._revisions;
    for (const acked of entry.acked) {
      assert.equal(ids[start - generation(acked.rev)], hashOf(acked.rev), `${id}: ${acked.rev} is in the history`);
    }
    // The server now knows the outcome, so the next round continues from what it serves.
    Object.assign(entry, { rev: doc._rev, v: doc.v, acked: [{ rev: doc._rev, v: doc.v }], uncertain: null });
    checked++;
  }
  // Documents that were only ever in flight must either be absent or be complete.
  for (const [id, entry] of [...state.docs]) {
    if (entry.acked.length > 0) continue;
    const res = await request(`${base}/${docPath(id)}`, { headers: { accept: 'application/json' } });
    const body = await res.body.json();
    if (res.statusCode === 200) {
      assert.equal(body.v, entry.uncertain.v, `${id}: an unacknowledged write is either absent or whole`);
      Object.assign(entry, { rev: body._rev, v: body.v, acked: [{ rev: body._rev, v: body.v }], uncertain: null });
    } else {
      assert.equal(res.statusCode, 404, `${id}: ${JSON.stringify(body)}`);
      state.docs.delete(id);
    }
  }
  const info = await ok('GET', `${base}/`);
  assert.equal(info.doc_count, state.docs.size, 'doc_count matches the documents that exist');
  return checked;
}

test('every acknowledged write survives SIGKILL under concurrent load', { timeout: 120_000 }, async (t) => {
  const name = dbName('crash');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  const state = { docs: new Map(), acks: 0, failures: 0, stopped: false, round: 0, kind: ctx.server.kind };

  for (let round = 0; round < 3; round++) {
    state.round = round;
    state.stopped = false;
    state.failures = 0;
    const acksBefore = state.acks;
    await load(base, state, async () => {
      // Let the load build up, then kill the server under it at a different moment each round.
      await sleep(700 + round * 400);
      await ctx.server.kill();
      state.stopped = true;
    });
    assert.ok(state.acks - acksBefore > 50, `round ${round}: the server acknowledged writes before the kill`);
    assert.ok(state.failures > 0, `round ${round}: the kill interrupted requests in flight`);
    await ctx.server.restart();
    const checked = await verify(base, state);
    t.diagnostic(`round ${round}: ${state.acks - acksBefore} acknowledged writes, ${state.failures} interrupted, ${checked} documents verified`);
  }

  // The database stays writable after the crashes: continue a chain from the verified revision.
  const [id, entry] = [...state.docs].find(([key]) => key.includes('-chain-'));
  const next = await ok('PUT', `${base}/${docPath(id)}`, { json: { _rev: entry.rev, v: entry.v + 1 } });
  assert.equal(generation(next.rev), generation(entry.rev) + 1);
});
