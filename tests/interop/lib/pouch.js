'use strict';
// The real PouchDB 9 client, with the in-memory adapter for local databases (each test starts from
// an empty local database and nothing is left on disk) and the HTTP adapter for the server.

const crypto = require('node:crypto');
const { before, after } = require('node:test');
const PouchDB = require('pouchdb');
const { startServer } = require('./server');
const { normalise } = require('./http');

PouchDB.plugin(require('pouchdb-adapter-memory'));

/** A unique database name that satisfies CouchDB's rule `^[a-z][a-z0-9_$()+/-]*$`. */
function dbName(prefix) {
  return `${prefix}-${crypto.randomBytes(5).toString('hex')}`;
}

/** A new, empty local database. */
function localDb(prefix = 'local') {
  return new PouchDB(dbName(prefix), { adapter: 'memory' });
}

/**
 * A PouchDB handle on a database of the server. With `{ record: true }`, every request PouchDB
 * sends is appended to `db.requests` as `{ method, url, status, body }`, so tests can check what
 * went over the wire (for example the `since` of a replication's first `_changes`); `body` is the
 * parsed answer of `_changes` requests only. Recording reads a clone of each `_changes` answer, so
 * it is off by default and never used where the server is killed mid-request.
 */
function remoteDb(server, name, { record = false } = {}) {
  const url = `${server.url}/${encodeURIComponent(name)}`;
  const requests = [];
  const options = {};
  if (record) {
    options.fetch = async (reqUrl, opts = {}) => {
      const res = await PouchDB.fetch(reqUrl, opts);
      const entry = { method: opts.method || 'GET', url: String(reqUrl), status: res.status };
      requests.push(entry);
      if (new URL(String(reqUrl)).pathname.endsWith('/_changes')) {
        entry.body = await res.clone().json().catch(() => null);
      }
      return res;
    };
  }
  const db = new PouchDB(url, options);
  db.requests = requests;
  db.url = url;
  return db;
}

/**
 * Starts a server before the tests of the calling file and destroys it after them. Returns an
 * object whose `server` property is set once the server is up.
 */
function useServer() {
  const ctx = { server: null };
  before(async () => {
    ctx.server = await startServer();
  });
  after(async () => {
    if (!ctx.server) return;
    if (process.env.INTEROP_KEEP_DATA === '1') {
      await ctx.server.stop();
      console.error(`server data and log kept in ${ctx.server.dir}`);
    } else {
      await ctx.server.destroy();
    }
    // A live replication left running by a failed test would keep this process (and so the whole
    // `node --test` run) alive forever; the timer is unref'd, so it only fires in that case.
    setTimeout(() => {
      console.error('open handles kept the test file alive after its tests; exiting');
      process.exit(process.exitCode || 0);
    }, 5000).unref();
  });
  return ctx;
}

/**
 * Every document of a database (local or remote), as `[{ id, rev, doc }]` sorted by id, with
 * `_conflicts` included: two databases have converged when their snapshots are deep-equal.
 */
async function snapshot(db) {
  const res = await db.allDocs({ include_docs: true, conflicts: true });
  return res.rows.map((row) => normalise({ id: row.id, rev: row.value.rev, doc: row.doc }));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes; returns the last value. */
async function waitFor(check, { timeoutMs = 30_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await sleep(intervalMs);
  }
  return last;
}

/**
 * PouchDB 9.0.0 updates its replication progress after every pulled batch with
 * `src.info().then(...)` and no rejection handler (pouchdb-replication/src/replicate.js,
 * `finishBatch`). When the server dies right then, the `GET /db/` of that `info()` becomes an
 * unhandled rejection, which node:test reports as a failure of the running test although the
 * replication itself handles the outage. Only that exact rejection is set aside here (and
 * counted); any other unhandled rejection still goes to node:test's own handler. The diversion
 * stays until the file ends, because a cancelled replication can still finish a batch (and
 * update its progress) while the server shuts down.
 */
function divertInfoRejections(dbUrl) {
  const previous = process.listeners('unhandledRejection');
  const diverted = [];
  const handler = (err, promise) => {
    const infoFailure = err && err.name === 'FetchError' && err.message.startsWith(`request to ${dbUrl}/ failed`);
    if (infoFailure) {
      diverted.push(err.message);
      return;
    }
    for (const listener of previous) listener(err, promise);
  };
  process.removeAllListeners('unhandledRejection');
  process.on('unhandledRejection', handler);
  return diverted;
}

/** A short account of how two snapshots differ, for assertion messages. */
function diffSummary(a, b) {
  if (!a || !b) return `local ${a && a.length} docs, server ${b ? b.length : 'unreachable'}`;
  const left = new Map(a.map((d) => [d.id, d.rev]));
  const right = new Map(b.map((d) => [d.id, d.rev]));
  const lines = [`local ${a.length} docs, server ${b.length} docs`];
  for (const [id, rev] of left) if (right.get(id) !== rev) lines.push(`  ${id}: local ${rev}, server ${right.get(id)}`);
  for (const [id, rev] of right) if (!left.has(id)) lines.push(`  ${id}: only on the server (${rev})`);
  return lines.slice(0, 30).join('\n');
}

module.exports = { PouchDB, dbName, localDb, remoteDb, useServer, snapshot, sleep, waitFor, divertInfoRejections, diffSummary };

