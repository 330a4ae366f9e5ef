#!/usr/bin/env node
'use strict';
// Side-by-side benchmark of Outpost and pouchdb-server (LevelDB) on the same machine, in one run:
// both servers are started, every workload runs against each in turn, and a markdown table with
// the ratios is printed. See bench/README.md for how to run it and what each figure means.
//
// It uses the npm dependencies of tests/interop (pouchdb, pouchdb-server, undici) and its server
// launcher, so there is one lockfile to keep and both servers start exactly as in the interop tests.

const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { createRequire } = require('node:module');
const { performance } = require('node:perf_hooks');
const { execFileSync, execFile, spawn } = require('node:child_process');

const REPO = path.resolve(__dirname, '..');
const INTEROP = path.join(REPO, 'tests', 'interop');
const interopRequire = createRequire(path.join(INTEROP, 'package.json'));
let undici;
let PouchDB;
try {
  undici = interopRequire('undici');
  PouchDB = interopRequire('pouchdb');
  PouchDB.plugin(interopRequire('pouchdb-adapter-memory'));
} catch (err) {
  console.error(`missing npm dependencies (${err.message}); run: (cd tests/interop && npm ci)`);
  process.exit(2);
}
const { startServer } = require(path.join(INTEROP, 'lib', 'server.js'));

// ---------------------------------------------------------------------------------------------
// Command line

/** The PostgreSQL server on which a run with outpost-cluster and no OUTPOST_STORE makes its database. */
const PG_SERVER = 'postgres://postgres@127.0.0.1:5432';

const USAGE = `usage: node bench/run.js [options]

  --only KIND[,KIND]     servers to run: outpost, outpost-before, outpost-basic,
                         outpost-cookie, outpost-cluster, outpost-sqlite, pouchdb-server,
                         couchdb (default outpost,pouchdb-server); outpost-basic and
                         outpost-cookie run with authentication on, as a signed-in user (Basic
                         credentials or a session cookie); outpost-cluster is --nodes Outposts
                         on one PostgreSQL database, requests sent to them in turn;
                         outpost-sqlite is outpost on SQLite whatever OUTPOST_STORE says
  --workloads A[,B]      workloads to run (default all); --list shows them
  --docs N               documents in the data sets (default 10000)
  --seconds S            duration of the timed single-document workloads (default 5)
  --clients C            concurrent keep-alive clients for single-document workloads (default 16)
  --latency-samples N    live-sync latency samples (default 300)
  --nodes N              nodes of outpost-cluster (default 3)
  --repl-docs N          documents replicated server to server by replicate (default 100000)
  --page-docs N          documents in the changes-paging data set (default 1000000)
  --conflict-revs N      conflicting revisions in the conflicts workload (default 4000)
  --mango-docs N         documents in the mango workload's database (default 100000)
  --view-docs N          documents in the views workload's database (default 100000)
  --pull-docs N          documents in the initial-pull workload's database (default 100000)
  --json FILE            also write the raw results as JSON
  --list                 list the workloads and exit

  OUTPOST_BIN            the outpost binary (default target/release/outpost)
  OUTPOST_BEFORE_BIN     an older outpost binary, run as the server kind outpost-before
  OUTPOST_STORE          the store of every outpost kind but outpost-sqlite (default SQLite);
                         with outpost-cluster in the run it must be a PostgreSQL URL, and
                         without it a fresh database is created on ${PG_SERVER}
                         for the run and dropped at its end
  COUCHDB_URL            a running CouchDB for the kind couchdb, with credentials
                         (e.g. http://admin:password@127.0.0.1:5990); its bench-* databases
                         are deleted first. COUCHDB_PID names its process for memory figures
                         (default: the newest beam.smp)`;

/** The servers a run can compare; `outpost` is the one every ratio is taken against. */
const KINDS = ['outpost', 'outpost-before', 'outpost-basic', 'outpost-cookie', 'outpost-cluster', 'outpost-sqlite', 'pouchdb-server', 'couchdb'];

/**
 * Creates a database for this run on PG_SERVER (psql, trust authentication) and returns its URL
 * and a function that drops it.
 */
function freshPgStore() {
  const name = `bench_${process.pid}_${Date.now()}`;
  const psql = (sql) => execFileSync('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', `${PG_SERVER}/postgres`, '-c', sql], { stdio: ['ignore', 'ignore', 'inherit'] });
  psql(`CREATE DATABASE ${name}`);
  return { url: `${PG_SERVER}/${name}`, drop: () => psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

/**
 * Outpost with authentication on: a server admin configured, `default_security = everyone`, and
 * every workload request made as the ordinary user `bench` (Basic credentials, or the
 * `AuthSession` cookie of one `POST /_session`); only creating and deleting databases is done
 * as the admin.
 */
const AUTH_ENV = {
  OUTPOST_ADMIN_USER: 'admin',
  OUTPOST_ADMIN_PASSWORD: 'bench-admin',
  OUTPOST_DEFAULT_SECURITY: 'everyone',
};
const ADMIN_AUTH = `Basic ${Buffer.from('admin:bench-admin').toString('base64')}`;

async function signInBench(server, kind) {
  const call = async (method, p, body, headers = {}) => {
    const res = await fetch(`${server.url}${p}`, {
      method,
      headers: { 'content-type': 'application/json', authorization: ADMIN_AUTH, ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (res.status >= 300) throw new Error(`${method} ${p} -> ${res.status} ${await res.text()}`);
    return res;
  };
  await call('PUT', '/_users');
  await call('PUT', '/_users/org.couchdb.user:bench', { name: 'bench', type: 'user', roles: [], password: 'bench-pw' });
  server.adminAuth = ADMIN_AUTH;
  if (kind === 'outpost-basic') {
    server.auth = `Basic ${Buffer.from('bench:bench-pw').toString('base64')}`;
  } else {
    const res = await fetch(`${server.url}/_session`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'bench', password: 'bench-pw' }),
    });
    server.cookie = res.headers.get('set-cookie').split(';')[0];
  }
}

function parseArgs(argv) {
  const opts = {
    only: ['outpost', 'pouchdb-server'],
    workloads: null,
    docs: 10_000,
    seconds: 5,
    clients: 16,
    latencySamples: 300,
    nodes: 3,
    replDocs: 100_000,
    pageDocs: 1_000_000,
    conflictRevs: 4000,
    mangoDocs: 100_000,
    viewDocs: 100_000,
    pullDocs: 100_000,
    json: null,
    list: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    const number = () => {
      const n = Number(value());
      if (!Number.isFinite(n) || n <= 0) throw new Error(`${arg} needs a positive number`);
      return n;
    };
    switch (arg) {
      case '--only': opts.only = value().split(','); break;
      case '--workloads': opts.workloads = value().split(','); break;
      case '--docs': opts.docs = number(); break;
      case '--seconds': opts.seconds = number(); break;
      case '--clients': opts.clients = number(); break;
      case '--latency-samples': opts.latencySamples = number(); break;
      case '--nodes': opts.nodes = number(); break;
      case '--repl-docs': opts.replDocs = number(); break;
      case '--page-docs': opts.pageDocs = number(); break;
      case '--conflict-revs': opts.conflictRevs = number(); break;
      case '--mango-docs': opts.mangoDocs = number(); break;
      case '--view-docs': opts.viewDocs = number(); break;
      case '--pull-docs': opts.pullDocs = number(); break;
      case '--json': opts.json = value(); break;
      case '--list': opts.list = true; break;
      case '-h': case '--help': console.log(USAGE); process.exit(0); break;
      default: throw new Error(`unknown option ${arg}\n\n${USAGE}`);
    }
  }
  for (const kind of opts.only) {
    if (!KINDS.includes(kind)) throw new Error(`unknown server ${kind}`);
  }
  return opts;
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const idx = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, idx)];
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A small, realistic document: about 250 bytes of JSON. */
function makeDoc(i, prefix = 'doc') {
  return {
    _id: `${prefix}-${String(i).padStart(6, '0')}`,
    type: 'order',
    n: i,
    customer: { name: `customer ${i % 97}`, city: ['Lyon', 'Oslo', 'Lima', 'Kobe'][i % 4] },
    items: [{ sku: `sku-${i % 13}`, qty: (i % 5) + 1 }, { sku: `sku-${i % 7}`, qty: 1 }],
    note: 'benchmark document with a little text in it',
    created: 1_700_000_000_000 + i,
  };
}

/** Peak resident set size of a process in KiB, from the kernel's high-water mark. */
function peakRssKiB(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = status.match(/^VmHWM:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** Current resident set size of a process in KiB. */
function rssKiB(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = status.match(/^VmRSS:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/**
 * Runs `fn` while sampling the resident set size of `pid` every 10 ms; returns the result of
 * `fn` and the highest RSS seen above the one before it started, in MiB.
 */
async function withRssSampling(pid, fn) {
  const base = rssKiB(pid);
  let peak = base;
  const timer = setInterval(() => {
    const now = rssKiB(pid);
    if (now > peak) peak = now;
  }, 10);
  try {
    const result = await fn();
    const now = rssKiB(pid);
    if (now > peak) peak = now;
    return { result, growthMiB: (peak - base) / 1024, peakMiB: peak / 1024 };
  } finally {
    clearInterval(timer);
  }
}

/**
 * A CouchDB started outside this script (it cannot be built or launched from here), given by
 * COUCHDB_URL with its credentials. Shaped like the servers of tests/interop/lib/server.js.
 */
function externalCouchDb() {
  const raw = process.env.COUCHDB_URL;
  if (!raw) throw new Error('the couchdb kind needs COUCHDB_URL (e.g. http://admin:password@127.0.0.1:5990)');
  const u = new URL(raw);
  const auth = u.username ? `Basic ${Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')}` : null;
  const withCreds = u.origin.replace('//', `//${u.username}:${u.password}@`);
  let pid = Number(process.env.COUCHDB_PID) || null;
  if (!pid) {
    try {
      pid = Number(execFileSync('pgrep', ['-n', 'beam.smp'], { encoding: 'utf8' }).trim()) || null;
    } catch {
      pid = null;
    }
  }
  return {
    kind: 'couchdb',
    url: u.origin,
    pouchUrl: u.username ? withCreds : u.origin,
    auth,
    pid,
    external: true,
    destroy: async () => {},
  };
}

/**
 * One server under benchmark: its process, an undici pool of keep-alive connections, and the
 * data sets the workloads share (created once, outside any timing). `server` may instead be
 * the nodes of a cluster (an array): each gets a pool, and requests go to the nodes in turn.
 */
class Target {
  constructor(server, clients, kind = server.kind) {
    this.servers = [].concat(server);
    this.server = this.servers[0];
    this.kind = kind;
    this.url = this.server.url;
    // The URL PouchDB and replications use: with credentials where the server needs them.
    this.pouchUrl = this.server.pouchUrl || this.server.url;
    this.auth = this.server.auth || null;
    this.cookie = this.server.cookie || null;
    this.adminAuth = this.server.adminAuth || null;
    this.clients = clients;
    this.pools = this.servers.map((s) => new undici.Pool(s.url, { connections: clients, keepAliveTimeout: 30_000 }));
    this.turn = 0;
    this.fixtures = new Map();
    this.dbCounter = 0;
  }

  /** The pool of the next node in turn (of the server, when there is one). */
  nextPool() {
    return this.pools[this.turn++ % this.pools.length];
  }

  /**
   * A fresh database name for a workload that must start empty. The kind is in it, since the
   * Outposts of a run may share one PostgreSQL database.
   */
  freshDb(prefix) {
    return `bench-${this.kind}-${prefix}-${++this.dbCounter}`;
  }

  /** A request to the next node in turn, or through `pool` (one of `pools`) when given. */
  async request(method, path, body, pool = this.nextPool()) {
    const headers = this.headers();
    // Databases are created and deleted by the admin where users cannot.
    if (this.adminAuth && (method === 'PUT' || method === 'DELETE') && /^\/[^/]+$/.test(path)) {
      delete headers.cookie;
      headers.authorization = this.adminAuth;
    }
    const res = await pool.request({
      method,
      path,
      headers,
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.body.text();
    if (res.statusCode >= 300) throw new Error(`${this.kind}: ${method} ${path} -> ${res.statusCode} ${text.slice(0, 200)}`);
    return text;
  }

  async json(method, path, body) {
    return JSON.parse(await this.request(method, path, body));
  }

  /** JSON request headers, with the server's credentials when it has some. */
  headers() {
    const h = { 'content-type': 'application/json', accept: 'application/json' };
    if (this.auth) h.authorization = this.auth;
    if (this.cookie) h.cookie = this.cookie;
    return h;
  }

  /** Sends a request and counts the answer's bytes without keeping them. */
  async drain(method, path, body) {
    const res = await this.nextPool().request({ method, path, headers: this.headers(), body: body === undefined ? undefined : JSON.stringify(body), bodyTimeout: 0, headersTimeout: 0 });
    let bytes = 0;
    for await (const chunk of res.body) bytes += chunk.length;
    if (res.statusCode >= 300) throw new Error(`${this.kind}: ${method} ${path} -> ${res.statusCode}`);
    return bytes;
  }

  /** Waits until a database reports no compaction running. */
  async compacted(db) {
    for (let i = 0; i < 6000; i++) {
      const info = await this.json('GET', `/${db}`);
      if (!info.compact_running) return info;
      await sleep(50);
    }
    throw new Error(`${this.kind}: compaction of ${db} still running after 5 minutes`);
  }

  /** A database holding `n` documents made by `makeDoc`, created once per target. */
  async fixture(n) {
    const name = `bench-${this.kind}-fixture-${n}`;
    if (!this.fixtures.has(name)) {
      this.fixtures.set(name, (async () => {
        await this.request('PUT', `/${name}`);
        for (let i = 0; i < n; i += 1000) {
          const docs = [];
          for (let j = i; j < Math.min(n, i + 1000); j++) docs.push(makeDoc(j));
          await this.request('POST', `/${name}/_bulk_docs`, { docs });
        }
        return name;
      })());
    }
    return this.fixtures.get(name);
  }

  /**
   * A target whose file holds nothing else: a new server of the same kind for Outpost, which
   * keeps every database in one file; the same target for the others, which give each database
   * its own file.
   */
  async isolated() {
    if (!this.kind.startsWith('outpost')) return this;
    const server = await startServer({ kind: 'outpost', quiet: true, bin: this.bin });
    const target = new Target(server, this.clients, this.kind);
    target.bin = this.bin;
    return target;
  }

  /** Closes the pools and ends the servers. */
  async destroy() {
    await this.close();
    for (const s of this.servers) await s.destroy();
  }

  async close() {
    await Promise.all(this.pools.map((p) => p.close().catch(() => {})));
  }
}

/**
 * Runs `op(workerIndex, iteration)` from `clients` concurrent workers for `seconds`, and returns
 * throughput and latency percentiles.
 */
async function timedConcurrent(clients, seconds, op) {
  const latencies = [];
  const deadline = performance.now() + seconds * 1000;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, w) => {
      for (let i = 0; performance.now() < deadline; i++) {
        const t0 = performance.now();
        await op(w, i);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    value: latencies.length / elapsed,
    unit: 'ops/s',
    better: 'higher',
    detail: `${latencies.length} ops, p50 ${percentile(latencies, 50).toFixed(2)} ms, p99 ${percentile(latencies, 99).toFixed(2)} ms`,
  };
}

/** Median of `runs` timings of `fn` (after one untimed warm-up), as documents per second. */
async function medianRate(docs, runs, fn) {
  await fn();
  const times = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const ms = times[Math.floor(times.length / 2)];
  return { value: docs / (ms / 1000), unit: 'docs/s', better: 'higher', detail: `median ${ms.toFixed(1)} ms of ${runs}` };
}

/** Fills a new database with `n` documents made by `makeDoc`, 1,000 per request. */
async function fillDb(t, db, n) {
  await t.request('PUT', `/${db}`);
  for (let i = 0; i < n; i += 1000) {
    const docs = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) docs.push(makeDoc(j));
    await t.request('POST', `/${db}/_bulk_docs`, { docs });
  }
}

/** `POST /_replicate` without a time limit: a one-shot answer comes when the copy is done. */
async function postReplicate(t, body) {
  const res = await undici.request(`${t.url}/_replicate`, {
    method: 'POST',
    headers: t.headers(),
    body: JSON.stringify(body),
    headersTimeout: 0,
    bodyTimeout: 0,
  });
  const text = await res.body.text();
  if (res.statusCode >= 300) throw new Error(`${t.kind}: POST /_replicate -> ${res.statusCode} ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

/**
 * Server-to-server replication as each server does it: for Outpost the `outpost replicate`
 * command (a separate process speaking HTTP to both sides), for pouchdb-server its own
 * `POST /_replicate`. Both sides are full URLs on the same server, so both go over loopback
 * HTTP. `continuous` returns a function that stops the replication.
 */
async function serverReplicate(t, source, target, continuous) {
  const from = `${t.pouchUrl}/${source}`;
  const to = `${t.pouchUrl}/${target}`;
  if (t.kind === 'outpost' || t.kind === 'outpost-before') {
    const args = ['replicate', from, to, '--create-target'];
    if (continuous) {
      args.push('--continuous');
      const child = spawn(t.bin, args, { stdio: ['ignore', 'ignore', 'ignore'] });
      return () => child.kill('SIGTERM');
    }
    const out = await new Promise((resolve, reject) => {
      execFile(t.bin, args, { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
    });
    return JSON.parse(out);
  }
  if (continuous) {
    await postReplicate(t, { source: from, target: to, create_target: true, continuous: true });
    return () => postReplicate(t, { source: from, target: to, create_target: true, continuous: true, cancel: true }).catch(() => {});
  }
  return postReplicate(t, { source: from, target: to, create_target: true });
}

/**
 * The live-latency samples: a live PouchDB pull from node `reader` of `t` is running, a `PUT` is
 * sent to node `writer` and the clock stops when the pull emits the change. Results are named
 * `label` p50 and p99.
 */
async function liveLatency(t, opts, writer, reader, label) {
  const db = t.freshDb('live');
  await t.request('PUT', `/${db}`, undefined, t.pools[writer]);
  const node = t.servers[reader];
  const local = new PouchDB(`live-${t.kind}-${Date.now()}`, { adapter: 'memory' });
  const waiting = new Map();
  const rep = PouchDB.replicate(new PouchDB(`${node.pouchUrl || node.url}/${db}`), local, { live: true, retry: true });
  rep.on('change', (info) => {
    for (const doc of info.docs) {
      const resolve = waiting.get(doc._id);
      if (resolve) {
        waiting.delete(doc._id);
        resolve(performance.now());
      }
    }
  });
  // Let the live replication reach its waiting longpoll before the first sample.
  await sleep(500);
  const samples = [];
  for (let i = 0; i < opts.latencySamples; i++) {
    const id = `live-${i}`;
    const seen = new Promise((resolve) => waiting.set(id, resolve));
    const t0 = performance.now();
    await t.request('PUT', `/${db}/${id}`, { i, at: Date.now() }, t.pools[writer]);
    const t1 = await Promise.race([seen, sleep(10_000).then(() => NaN)]);
    if (Number.isNaN(t1)) throw new Error(`${t.kind}: change ${id} not seen within 10 s`);
    samples.push(t1 - t0);
    await sleep(5 + Math.random() * 20); // spread writes over the longpoll cycle
  }
  rep.cancel();
  await local.destroy();
  samples.sort((a, b) => a - b);
  return [
    { metric: `${label} p50`, value: percentile(samples, 50), unit: 'ms', better: 'lower', detail: `${samples.length} samples` },
    { metric: `${label} p99`, value: percentile(samples, 99), unit: 'ms', better: 'lower', detail: `max ${samples[samples.length - 1].toFixed(2)} ms` },
  ];
}

function replicate(from, to) {
  return new Promise((resolve, reject) => {
    PouchDB.replicate(from, to).on('complete', resolve).on('error', reject);
  });
}

// ---------------------------------------------------------------------------------------------
// Workloads. Each entry: name, what it measures, and run(target, opts) -> one result or an array
// of results { metric, value, unit, better: 'higher' | 'lower', detail }. Add new workloads here
// (replication between servers, attachments, ...); the table and the ratios follow.

const WORKLOADS = [
  {
    name: 'put',
    description: 'single-document PUT of new documents, N concurrent keep-alive clients',
    async run(t, opts) {
      const db = t.freshDb('put');
      await t.request('PUT', `/${db}`);
      const r = await timedConcurrent(opts.clients, opts.seconds, (w, i) =>
        t.request('PUT', `/${db}/w${w}-${i}`, makeDoc(i, `w${w}`)),
      );
      return { metric: `PUT, ${opts.clients} clients`, ...r };
    },
  },
  {
    name: 'get',
    description: 'single-document GET of random existing documents, N concurrent keep-alive clients',
    async run(t, opts) {
      const db = await t.fixture(opts.docs);
      const r = await timedConcurrent(opts.clients, opts.seconds, () => {
        const i = Math.floor(Math.random() * opts.docs);
        return t.request('GET', `/${db}/${makeDoc(i)._id}`);
      });
      return { metric: `GET, ${opts.clients} clients`, ...r };
    },
  },
  {
    name: 'bulk-docs',
    description: '_bulk_docs of N new documents in batches of 1,000, one client',
    async run(t, opts) {
      const db = t.freshDb('bulk');
      await t.request('PUT', `/${db}`);
      const batches = [];
      for (let i = 0; i < opts.docs; i += 1000) {
        const docs = [];
        for (let j = i; j < Math.min(opts.docs, i + 1000); j++) docs.push(makeDoc(j));
        batches.push(JSON.stringify({ docs }));
      }
      const t0 = performance.now();
      for (const body of batches) {
        const res = await t.nextPool().request({
          method: 'POST',
          path: `/${db}/_bulk_docs`,
          headers: t.headers(),
          body,
        });
        const text = await res.body.text();
        if (res.statusCode !== 201) throw new Error(`${t.kind}: _bulk_docs -> ${res.statusCode} ${text.slice(0, 200)}`);
      }
      const ms = performance.now() - t0;
      return {
        metric: `_bulk_docs ${opts.docs.toLocaleString('en-US')} docs / 1,000`,
        value: opts.docs / (ms / 1000),
        unit: 'docs/s',
        better: 'higher',
        detail: `${ms.toFixed(0)} ms`,
      };
    },
  },
  {
    name: 'all-docs',
    description: 'GET _all_docs?include_docs=true over N documents, body read to the end',
    async run(t, opts) {
      const db = await t.fixture(opts.docs);
      const r = await medianRate(opts.docs, 5, async () => {
        const body = await t.json('GET', `/${db}/_all_docs?include_docs=true`);
        if (body.rows.length !== opts.docs) throw new Error(`${t.kind}: _all_docs returned ${body.rows.length} rows`);
      });
      return { metric: `_all_docs?include_docs=true, ${opts.docs.toLocaleString('en-US')} docs`, ...r };
    },
  },
  {
    name: 'changes',
    description: 'GET _changes (normal feed, since=0) over N documents, body read to the end',
    async run(t, opts) {
      const db = await t.fixture(opts.docs);
      const r = await medianRate(opts.docs, 5, async () => {
        const body = await t.json('GET', `/${db}/_changes?style=all_docs`);
        if (body.results.length !== opts.docs) throw new Error(`${t.kind}: _changes returned ${body.results.length} rows`);
      });
      return { metric: `_changes, ${opts.docs.toLocaleString('en-US')} docs`, ...r };
    },
  },
  {
    name: 'pouch-pull',
    description: 'PouchDB 9 (memory adapter) pulls N documents into an empty database',
    async run(t, opts) {
      const db = await t.fixture(opts.docs);
      const local = new PouchDB(`pull-${t.kind}-${Date.now()}`, { adapter: 'memory' });
      const t0 = performance.now();
      const res = await replicate(new PouchDB(`${t.pouchUrl}/${db}`), local);
      const ms = performance.now() - t0;
      if (res.docs_written !== opts.docs) throw new Error(`${t.kind}: pulled ${res.docs_written} docs`);
      await local.destroy();
      return { metric: `PouchDB pull ${opts.docs.toLocaleString('en-US')} docs`, value: opts.docs / (ms / 1000), unit: 'docs/s', better: 'higher', detail: `${ms.toFixed(0)} ms` };
    },
  },
  {
    name: 'initial-pull',
    description: 'PouchDB 9 (memory adapter) pulls --pull-docs documents, one in ten with a 50 KB binary attachment, into an empty database (the first sync of a new device)',
    async run(t, opts) {
      const n = opts.pullDocs;
      const db = t.freshDb('initial');
      await t.request('PUT', `/${db}`);
      const withFile = Math.ceil(n / 10);
      for (let i = 0; i < n; i += 200) {
        const docs = [];
        for (let j = i; j < Math.min(n, i + 200); j++) {
          const doc = makeDoc(j);
          // Distinct bytes in every attachment, so no server can store one copy for all.
          if (j % 10 === 0) {
            doc._attachments = { 'photo.bin': { content_type: 'application/octet-stream', data: crypto.randomBytes(50 * 1024).toString('base64') } };
          }
          docs.push(doc);
        }
        await t.request('POST', `/${db}/_bulk_docs`, { docs });
      }
      const local = new PouchDB(`initial-${t.kind}-${Date.now()}`, { adapter: 'memory' });
      const t0 = performance.now();
      const res = await replicate(new PouchDB(`${t.pouchUrl}/${db}`), local);
      const ms = performance.now() - t0;
      if (res.docs_written !== n) throw new Error(`${t.kind}: pulled ${res.docs_written} of ${n} docs`);
      const sample = await local.get('doc-000010', { attachments: true, binary: true });
      if (sample._attachments['photo.bin'].data.length !== 50 * 1024) throw new Error(`${t.kind}: attachment not pulled whole`);
      await local.destroy();
      return { metric: `PouchDB initial pull, ${n.toLocaleString('en-US')} docs, ${withFile.toLocaleString('en-US')} with 50 KB attachments`, value: n / (ms / 1000), unit: 'docs/s', better: 'higher', detail: `${(ms / 1000).toFixed(1)} s` };
    },
  },
  {
    name: 'pouch-push',
    description: 'PouchDB 9 (memory adapter) pushes N documents into an empty server database',
    async run(t, opts) {
      const local = new PouchDB(`push-${t.kind}-${Date.now()}`, { adapter: 'memory' });
      for (let i = 0; i < opts.docs; i += 1000) {
        const docs = [];
        for (let j = i; j < Math.min(opts.docs, i + 1000); j++) docs.push(makeDoc(j));
        await local.bulkDocs(docs);
      }
      const t0 = performance.now();
      const res = await replicate(local, new PouchDB(`${t.pouchUrl}/${t.freshDb('push')}`));
      const ms = performance.now() - t0;
      if (res.docs_written !== opts.docs) throw new Error(`${t.kind}: pushed ${res.docs_written} docs`);
      await local.destroy();
      return { metric: `PouchDB push ${opts.docs.toLocaleString('en-US')} docs`, value: opts.docs / (ms / 1000), unit: 'docs/s', better: 'higher', detail: `${ms.toFixed(0)} ms` };
    },
  },
  {
    name: 'live-latency',
    description: 'time from a server write (PUT sent) to the change arriving in a live PouchDB pull; on outpost-cluster also with the write on one node and the pull from another',
    async run(t, opts) {
      const results = await liveLatency(t, opts, 0, 0, 'live-sync latency');
      if (t.servers.length > 1) results.push(...(await liveLatency(t, opts, 0, 1, 'cross-node live-sync latency')));
      return results;
    },
  },
  {
    name: 'replicate',
    description: 'one-shot server-to-server replication of --repl-docs new documents (outpost replicate vs pouchdb-server POST /_replicate)',
    async run(t, opts) {
      const n = opts.replDocs;
      const source = t.freshDb('repl-src');
      await fillDb(t, source, n);
      const t0 = performance.now();
      const res = await serverReplicate(t, source, t.freshDb('repl-dst'), false);
      const ms = performance.now() - t0;
      // CouchDB reports the counts in the session's history entry, the others at the top.
      const written = res.docs_written ?? res.history?.[0]?.docs_written;
      if (written !== n) throw new Error(`${t.kind}: replicated ${written} of ${n} docs`);
      return { metric: `replicate ${n.toLocaleString('en-US')} docs server to server`, value: n / (ms / 1000), unit: 'docs/s', better: 'higher', detail: `${(ms / 1000).toFixed(1)} s` };
    },
  },
  {
    name: 'replication-lag',
    description: 'continuous server-to-server replication: time from a PUT on the source to the change in the target\'s longpoll feed',
    async run(t, opts) {
      const source = t.freshDb('lag-src');
      const target = t.freshDb('lag-dst');
      await t.request('PUT', `/${source}`);
      await t.request('PUT', `/${target}`);
      const stop = await serverReplicate(t, source, target, true);
      try {
        // The replication is live once a first document goes through.
        await t.request('PUT', `/${source}/warm-up`, { warm: true });
        const deadline = performance.now() + 20_000;
        for (;;) {
          const res = await t.nextPool().request({ method: 'GET', path: `/${target}/warm-up`, headers: t.headers() });
          await res.body.text();
          if (res.statusCode === 200) break;
          if (performance.now() > deadline) throw new Error(`${t.kind}: continuous replication did not start`);
          await sleep(50);
        }
        const samples = [];
        for (let i = 0; i < opts.latencySamples; i++) {
          const id = `lag-${i}`;
          const { update_seq: since } = await t.json('GET', `/${target}`);
          const seen = (async () => {
            let seq = since;
            for (;;) {
              const q = encodeURIComponent(typeof seq === 'string' ? seq : JSON.stringify(seq));
              const feed = await t.json('GET', `/${target}/_changes?feed=longpoll&timeout=10000&since=${q}`);
              if (feed.results.some((r) => r.id === id)) return performance.now();
              if (feed.results.length === 0) return NaN;
              seq = feed.last_seq;
            }
          })();
          const t0 = performance.now();
          await t.request('PUT', `/${source}/${id}`, { i, at: Date.now() });
          const t1 = await seen;
          if (Number.isNaN(t1)) throw new Error(`${t.kind}: change ${id} not replicated within 10 s`);
          samples.push(t1 - t0);
          await sleep(5 + Math.random() * 20);
        }
        samples.sort((a, b) => a - b);
        return [
          { metric: 'continuous replication lag p50', value: percentile(samples, 50), unit: 'ms', better: 'lower', detail: `${samples.length} samples` },
          { metric: 'continuous replication lag p99', value: percentile(samples, 99), unit: 'ms', better: 'lower', detail: `max ${samples[samples.length - 1].toFixed(2)} ms` },
        ];
      } finally {
        await stop();
      }
    },
  },
  {
    name: 'conflicts',
    description: 'one new_edits=false _bulk_docs of --conflict-revs conflicting revisions of one document, and the latency of PUTs to another database meanwhile',
    async run(t, opts) {
      const n = opts.conflictRevs;
      const db = t.freshDb('conflicts');
      const other = t.freshDb('bystander');
      await t.request('PUT', `/${db}`);
      await t.request('PUT', `/${other}`);
      const docs = [];
      for (let i = 0; i < n; i++) {
        const sig = crypto.createHash('md5').update(`branch-${i}`).digest('hex');
        docs.push({ _id: 'contested', _rev: `1-${sig}`, _revisions: { start: 1, ids: [sig] }, branch: i });
      }
      const body = JSON.stringify({ docs, new_edits: false });
      let done = false;
      const t0 = performance.now();
      const big = t.request('POST', `/${db}/_bulk_docs`, body).then(() => {
        done = true;
        return performance.now() - t0;
      });
      // A bystander on its own connection writes to an unrelated database while the big request
      // runs; its slowest write is what one pathological request costs everybody else.
      const bystander = new undici.Pool(t.url, { connections: 1 });
      const latencies = [];
      try {
        for (let i = 0; !done; i++) {
          const s0 = performance.now();
          const res = await bystander.request({ method: 'PUT', path: `/${other}/p${i}`, headers: t.headers(), body: JSON.stringify({ i }) });
          await res.body.text();
          latencies.push(performance.now() - s0);
          await sleep(10);
        }
      } finally {
        await bystander.close();
      }
      const ms = await big;
      latencies.sort((a, b) => a - b);
      return [
        { metric: `new_edits=false, ${n.toLocaleString('en-US')} conflicting revisions of one doc`, value: ms, unit: 'ms', better: 'lower', detail: `${(n / (ms / 1000)).toFixed(0)} revs/s` },
        { metric: 'unrelated PUT during it, slowest', value: latencies[latencies.length - 1] ?? NaN, unit: 'ms', better: 'lower', detail: `${latencies.length} PUTs, p50 ${percentile(latencies, 50).toFixed(2)} ms` },
      ];
    },
  },
  {
    name: 'keys-memory',
    description: 'growth of the server\'s RSS while it answers _all_docs?include_docs=true with 400 keys naming one 2 MB document, and the same through _bulk_get',
    async run(t) {
      if (!t.server.pid) return [];
      const db = t.freshDb('keys');
      await t.request('PUT', `/${db}`);
      await t.request('PUT', `/${db}/big`, { blob: 'x'.repeat(2 * 1024 * 1024) });
      const keys = Array.from({ length: 400 }, () => 'big');
      const a = await withRssSampling(t.server.pid, () => t.drain('POST', `/${db}/_all_docs?include_docs=true`, { keys }));
      const b = await withRssSampling(t.server.pid, () => t.drain('POST', `/${db}/_bulk_get`, { docs: keys.map((id) => ({ id })) }));
      return [
        { metric: '_all_docs keys ×400 of a 2 MB doc: RSS growth', value: a.growthMiB, unit: 'MiB', better: 'lower', detail: `${(a.result / 2 ** 20).toFixed(0)} MiB answered, peak RSS ${a.peakMiB.toFixed(0)} MiB` },
        { metric: '_bulk_get ×400 of a 2 MB doc: RSS growth', value: b.growthMiB, unit: 'MiB', better: 'lower', detail: `${(b.result / 2 ** 20).toFixed(0)} MiB answered, peak RSS ${b.peakMiB.toFixed(0)} MiB` },
      ];
    },
  },
  {
    name: 'changes-paging',
    description: 'a full _changes pull of --page-docs documents in pages of 100: time per page at the start and at the end',
    async run(t, opts) {
      const n = opts.pageDocs;
      const db = t.freshDb('paging');
      await t.request('PUT', `/${db}`);
      for (let i = 0; i < n; i += 5000) {
        const docs = [];
        for (let j = i; j < Math.min(n, i + 5000); j++) docs.push({ _id: `p${String(j).padStart(8, '0')}`, n: j });
        await t.request('POST', `/${db}/_bulk_docs`, { docs });
      }
      const pages = [];
      let since = 0;
      let seen = 0;
      const t0 = performance.now();
      for (;;) {
        const q = encodeURIComponent(typeof since === 'string' ? since : JSON.stringify(since));
        const p0 = performance.now();
        const page = await t.json('GET', `/${db}/_changes?limit=100&since=${q}`);
        pages.push(performance.now() - p0);
        seen += page.results.length;
        if (page.results.length < 100) break;
        since = page.last_seq;
      }
      const total = performance.now() - t0;
      if (seen !== n) throw new Error(`${t.kind}: paged ${seen} of ${n} changes`);
      const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
      const first = mean(pages.slice(0, 100));
      const last = mean(pages.slice(-100));
      return [
        { metric: `_changes of ${n.toLocaleString('en-US')} docs by 100: first 100 pages`, value: first, unit: 'ms', better: 'lower', detail: 'mean per page' },
        { metric: `_changes of ${n.toLocaleString('en-US')} docs by 100: last 100 pages`, value: last, unit: 'ms', better: 'lower', detail: 'mean per page' },
        { metric: `_changes of ${n.toLocaleString('en-US')} docs by 100: whole pull`, value: total / 1000, unit: 's', better: 'lower', detail: `${pages.length} pages` },
      ];
    },
  },
  {
    name: 'mango',
    description: 'Mango json indexes over --mango-docs documents: building an index (POST _index and the first _find), an indexed $eq returning 100 rows, and a range with a sort on an indexed field returning 100 rows',
    async run(t, opts) {
      const n = opts.mangoDocs;
      const db = t.freshDb('mango');
      await fillDb(t, db, n);
      const find = (body) => t.request('POST', `/${db}/_find`, body);
      const count = (text) => JSON.parse(text).docs.length;
      const results = [];
      const eq = { selector: { 'customer.name': 'customer 5' }, limit: 100 };
      const range = { selector: { n: { $gte: Math.floor(n / 2), $lt: n } }, sort: ['n'], limit: 100 };
      // Two indexes. A server may build an index when it is created (pouchdb-server) or when a
      // query first needs it (Outpost, CouchDB): the build is timed from the POST _index to the
      // end of the first _find that uses it.
      for (const [field, body] of [['customer.name', eq], ['n', range]]) {
        const t0 = performance.now();
        await t.request('POST', `/${db}/_index`, { index: { fields: [field] }, name: field, ddoc: field });
        const got = count(await find(body));
        const ms = performance.now() - t0;
        if (got === 0) throw new Error(`${t.kind}: the index build query returned nothing`);
        results.push({ metric: `index on ${field}, ${n.toLocaleString('en-US')} docs: POST _index + first _find`, value: n / (ms / 1000), unit: 'docs/s', better: 'higher', detail: `${(ms / 1000).toFixed(1)} s` });
      }
      for (const [name, body] of [['$eq on an indexed field, 100 rows', eq], ['range + sort on an indexed field, 100 rows', range]]) {
        const rows = count(await find(body));
        const r = await medianRate(rows, 9, async () => {
          const got = count(await find(body));
          if (got === 0) throw new Error(`${t.kind}: ${name} returned nothing`);
        });
        results.push({ metric: `_find ${name}`, ...r });
      }
      return results;
    },
  },
  {
    name: 'views',
    description: 'JavaScript views over --view-docs documents: building a map view and a map + _sum view (PUT of the design document and the first query), then a keyed query and a grouped reduce',
    async run(t, opts) {
      const n = opts.viewDocs;
      const db = t.freshDb('views');
      await fillDb(t, db, n);
      const results = [];
      // One design document per view: CouchDB builds every view of a design document together.
      const views = [
        ['map', { map: 'function (doc) { emit(doc.customer.name, doc.n); }' }, '?key=%22customer%205%22&limit=100'],
        ['sum', { map: 'function (doc) { emit(doc.customer.city, doc.n); }', reduce: '_sum' }, '?group=true'],
      ];
      for (const [name, view, query] of views) {
        const path = `/${db}/_design/${name}/_view/v`;
        const t0 = performance.now();
        await t.request('PUT', `/${db}/_design/${name}`, { views: { v: view } });
        const rows = JSON.parse(await t.request('GET', `${path}${query}`)).rows.length;
        const ms = performance.now() - t0;
        if (rows === 0) throw new Error(`${t.kind}: the ${name} view returned nothing`);
        const label = view.reduce ? 'map + _sum' : 'map';
        results.push({ metric: `view build, ${label}, ${n.toLocaleString('en-US')} docs: PUT design doc + first query`, value: n / (ms / 1000), unit: 'docs/s', better: 'higher', detail: `${(ms / 1000).toFixed(1)} s` });
        const r = await medianRate(rows, 9, async () => {
          const got = JSON.parse(await t.request('GET', `${path}${query}`)).rows.length;
          if (got !== rows) throw new Error(`${t.kind}: ${name} view gave ${got} rows, then ${rows}`);
        });
        results.push({ metric: view.reduce ? 'view query, _sum grouped by key (4 groups)' : 'view query by key, 100 rows', ...r });
      }
      return results;
    },
  },
  {
    name: 'compact',
    description: 'file size of a database churned to ten times its live size, before and after _compact, and of a fresh copy of its live data',
    async run(t) {
      // Outpost keeps every database in one file, so it gets servers of its own for this.
      const churned = await t.isolated();
      const fresh = await t.isolated();
      try {
        const db = churned.freshDb('churn');
        const copy = fresh.freshDb('live');
        await churned.request('PUT', `/${db}`);
        await fresh.request('PUT', `/${copy}`);
        const pad = 'y'.repeat(1000);
        let docs = Array.from({ length: 2000 }, (_, i) => ({ _id: `c${i}`, v: 0, pad }));
        for (let round = 0; round < 10; round++) {
          for (let i = 0; i < docs.length; i += 500) {
            const res = await churned.json('POST', `/${db}/_bulk_docs`, { docs: docs.slice(i, i + 500) });
            res.forEach((r, k) => {
              docs[i + k] = { ...docs[i + k], _rev: r.rev, v: round + 1 };
            });
          }
        }
        const live = docs.map(({ _rev, ...d }) => d);
        for (let i = 0; i < live.length; i += 500) await fresh.request('POST', `/${copy}/_bulk_docs`, { docs: live.slice(i, i + 500) });
        await fresh.request('POST', `/${copy}/_compact`);
        // CouchDB and Outpost report `sizes.file`; pouchdb-server reports `disk_size`.
        const fileSize = (info) => info.sizes?.file ?? info.disk_size ?? NaN;
        const liveSize = fileSize(await fresh.compacted(copy));
        const before = fileSize(await churned.json('GET', `/${db}`));
        await churned.request('POST', `/${db}/_compact`);
        const after = fileSize(await churned.compacted(db));
        const mib = (b) => b / 2 ** 20;
        return [
          { metric: 'churned database file before _compact', value: mib(before), unit: 'MiB', better: 'lower', detail: `${(before / liveSize).toFixed(1)}× live` },
          { metric: 'churned database file after _compact', value: mib(after), unit: 'MiB', better: 'lower', detail: `${(after / liveSize).toFixed(2)}× live (${mib(liveSize).toFixed(1)} MiB)` },
        ];
      } finally {
        if (churned !== t) await churned.destroy();
        if (fresh !== t) await fresh.destroy();
      }
    },
  },
];

// ---------------------------------------------------------------------------------------------
// Report

function fmt(value, unit) {
  if (!Number.isFinite(value)) return 'n/a';
  if (unit === 'ms') return `${value.toFixed(2)} ms`;
  if (unit === 'MiB') return `${value.toFixed(1)} MiB`;
  if (unit === 's') return `${value.toFixed(1)} s`;
  return `${Math.round(value).toLocaleString('en-US')} ${unit}`;
}

/** How many times better Outpost is than another server (>1 means Outpost is better). */
function ratio(outpost, reference, better) {
  if (!Number.isFinite(outpost) || !Number.isFinite(reference) || outpost === 0 || reference === 0) return '—';
  const r = better === 'higher' ? outpost / reference : reference / outpost;
  return `${r.toFixed(r < 10 ? 2 : 1)}×`;
}

function table(results, kinds) {
  const lines = [];
  const others = kinds.includes('outpost') ? kinds.filter((k) => k !== 'outpost') : [];
  const header = ['workload', ...kinds, ...others.map((k) => `outpost vs ${k}`)];
  lines.push(`| ${header.join(' | ')} |`);
  lines.push(`| ${header.map((h, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`);
  for (const row of results) {
    const cells = kinds.map((k) => (row.values[k] ? fmt(row.values[k].value, row.unit) : 'n/a'));
    const extra = others.map((k) => ratio(row.values.outpost?.value, row.values[k]?.value, row.better));
    lines.push(`| ${row.metric} | ${[...cells, ...extra].join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Outpost's store as printed with the results: the PostgreSQL URL without its password. */
function storeName(store) {
  if (!store) return 'SQLite';
  if (!/^postgres(ql)?:\/\//.test(store)) return `SQLite in ${store}`;
  const u = new URL(store);
  u.password = '';
  return `PostgreSQL ${u}`;
}

function machine(opts, targets) {
  const cpus = os.cpus();
  let outpostVersion = null;
  const outpost = targets.find((t) => t.kind === 'outpost') || targets.find((t) => t.bin);
  if (outpost) {
    try {
      outpostVersion = execFileSync(outpost.bin, ['--version'], { encoding: 'utf8' }).trim();
    } catch {
      outpostVersion = 'unknown';
    }
  }
  return {
    date: new Date().toISOString(),
    cpu: `${cpus[0] ? cpus[0].model.trim() : 'unknown'} × ${cpus.length}`,
    memory: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    outpost: outpostVersion,
    'pouchdb-server': interopRequire('pouchdb-server/package.json').version,
    pouchdb: interopRequire('pouchdb/package.json').version,
    command: `node bench/run.js ${process.argv.slice(2).join(' ')}`.trim(),
    store: storeName(process.env.OUTPOST_STORE),
    options: { docs: opts.docs, seconds: opts.seconds, clients: opts.clients, latencySamples: opts.latencySamples, nodes: opts.nodes },
  };
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.list) {
    for (const w of WORKLOADS) console.log(`${w.name.padEnd(14)} ${w.description}`);
    return;
  }
  const selected = opts.workloads
    ? opts.workloads.map((name) => {
        const w = WORKLOADS.find((x) => x.name === name);
        if (!w) throw new Error(`unknown workload ${name}; --list shows them`);
        return w;
      })
    : WORKLOADS;

  const bins = {
    outpost: process.env.OUTPOST_BIN || path.join(REPO, 'target', 'release', 'outpost'),
    'outpost-before': process.env.OUTPOST_BEFORE_BIN,
  };
  bins['outpost-basic'] = bins.outpost;
  bins['outpost-cookie'] = bins.outpost;
  bins['outpost-cluster'] = bins.outpost;
  bins['outpost-sqlite'] = bins.outpost;
  const targets = [];
  // The nodes of a cluster share a PostgreSQL database: OUTPOST_STORE's, or one made for this run.
  let freshStore = null;
  if (opts.only.includes('outpost-cluster')) {
    if (!process.env.OUTPOST_STORE) {
      freshStore = freshPgStore();
      process.env.OUTPOST_STORE = freshStore.url;
      console.error(`created ${freshStore.url} for this run`);
    } else if (!storeName(process.env.OUTPOST_STORE).startsWith('PostgreSQL')) {
      throw new Error('outpost-cluster needs OUTPOST_STORE to be a PostgreSQL URL (or unset)');
    }
  }
  try {
    for (const kind of opts.only) {
      let server;
      if (kind === 'couchdb') {
        server = externalCouchDb();
        const target = new Target(server, opts.clients);
        for (const db of await target.json('GET', '/_all_dbs')) {
          if (db.startsWith('bench-')) await target.request('DELETE', `/${db}`);
        }
        targets.push(target);
        console.error(`using couchdb at ${server.url} (pid ${server.pid ?? 'unknown'})`);
        continue;
      }
      if (kind === 'outpost-before' && !bins[kind]) throw new Error('outpost-before needs OUTPOST_BEFORE_BIN');
      const isOutpost = kind.startsWith('outpost');
      const authed = kind === 'outpost-basic' || kind === 'outpost-cookie';
      // An undefined variable is left out of the child's environment: SQLite in its data directory.
      const env = authed ? AUTH_ENV : kind === 'outpost-sqlite' ? { OUTPOST_STORE: undefined } : undefined;
      const count = kind === 'outpost-cluster' ? opts.nodes : 1;
      const servers = [];
      while (servers.length < count) {
        const s = await startServer({ kind: isOutpost ? 'outpost' : kind, quiet: true, bin: isOutpost ? bins[kind] : undefined, env });
        servers.push(s);
        console.error(`started ${kind} at ${s.url} (pid ${s.pid}, data in ${s.dir})`);
      }
      if (authed) await signInBench(servers[0], kind);
      const target = new Target(servers.length > 1 ? servers : servers[0], opts.clients, kind);
      target.bin = bins[kind];
      targets.push(target);
    }

    const rows = new Map();
    for (const w of selected) {
      for (const t of targets) {
        console.error(`${w.name} on ${t.kind} ...`);
        const out = await w.run(t, opts);
        for (const r of Array.isArray(out) ? out : [out]) {
          if (!rows.has(r.metric)) rows.set(r.metric, { metric: r.metric, unit: r.unit, better: r.better, values: {} });
          rows.get(r.metric).values[t.kind] = r;
          console.error(`  ${r.metric}: ${fmt(r.value, r.unit)} (${r.detail})`);
        }
      }
    }
    const rss = { metric: 'peak RSS of the server process (VmHWM)', unit: 'MiB', better: 'lower', values: {} };
    for (const t of targets) {
      // A cluster's row is its largest node's.
      const peaks = t.servers.filter((s) => s.pid).map((s) => ({ pid: s.pid, mib: peakRssKiB(s.pid) / 1024 }));
      if (peaks.length === 0) continue;
      const top = peaks.reduce((a, b) => (b.mib > a.mib ? b : a));
      const detail = peaks.length > 1 ? `largest of ${peaks.length} nodes: ${peaks.map((p) => p.mib.toFixed(1)).join(', ')} MiB` : `pid ${top.pid}`;
      rss.values[t.kind] = { value: top.mib, detail };
    }
    rows.set(rss.metric, rss);

    const results = [...rows.values()];
    const info = machine(opts, targets);
    console.log(`\n## ${opts.only.join(' vs ')}\n`);
    console.log(`${info.date} · ${info.cpu} · ${info.memory} · ${info.os} · node ${info.node}`);
    console.log(`outpost: ${info.outpost ?? 'not run'} · pouchdb-server ${info['pouchdb-server']} (LevelDB) · PouchDB ${info.pouchdb}`);
    console.log(`outpost store: ${info.store}${opts.only.includes('outpost-sqlite') ? ' (outpost-sqlite: SQLite)' : ''}`);
    if (opts.only.includes('outpost-cluster')) {
      console.log(`outpost-cluster: ${opts.nodes} nodes on that store, requests sent to them in turn, on ${os.cpus().length} cores`);
    }
    console.log(`command: ${info.command}\n`);
    console.log(table(results, opts.only));
    console.log('\nRatios are how many times better Outpost is (higher throughput, lower latency or memory).');
    if (opts.json) {
      fs.writeFileSync(opts.json, JSON.stringify({ machine: info, results }, null, 2));
      console.error(`raw results written to ${opts.json}`);
    }
  } finally {
    for (const t of targets) await t.destroy();
    if (freshStore) {
      try {
        freshStore.drop();
      } catch (err) {
        console.error(`could not drop ${freshStore.url}: ${err.message}`);
      }
    }
  }
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
