#!/usr/bin/env node
'use strict';
// Per-document access: what a member's `_changes` costs on an `access=true` database of
// `--docs` documents (default 100,000) of which they can read `--visible` (default 1,000), next
// to `_changes` by the same member on a database holding only those documents. The feed of a
// member is read from their part of the access index, so the two should cost about the same
// whatever the size of the shared database. A benchmark, not a test: nothing fails on a figure.
//
//   cargo build --release -p outpost-cli
//   (cd tests/interop && npm ci)
//   node bench/access.js                          # 100,000 documents, 1,000 visible
//   node bench/access.js --docs 5000 --visible 100 --runs 3   # a quick smoke run
//
// `OUTPOST_BIN` selects the binary (default target/release/outpost; the launcher falls back to
// target/debug when given that path). Figures: median of `--runs` full reads of the feed
// (`style=all_docs`, as PouchDB asks) after one warm-up, and the same paged with `limit=100`.

const path = require('node:path');
const { createRequire } = require('node:module');
const { performance } = require('node:perf_hooks');

const REPO = path.resolve(__dirname, '..');
const INTEROP = path.join(REPO, 'tests', 'interop');
const interopRequire = createRequire(path.join(INTEROP, 'package.json'));
let undici;
try {
  undici = interopRequire('undici');
} catch (err) {
  console.error(`missing npm dependencies (${err.message}); run: (cd tests/interop && npm ci)`);
  process.exit(2);
}
const { startServer } = require(path.join(INTEROP, 'lib', 'server.js'));

function parseArgs(argv) {
  const opts = { docs: 100_000, visible: 1_000, runs: 5, batch: 2_000 };
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].replace(/^--/, '');
    if (!(name in opts) || i + 1 >= argv.length) {
      throw new Error(`usage: node bench/access.js [--docs N] [--visible N] [--runs N] [--batch N]`);
    }
    opts[name] = Number(argv[++i]);
    if (!Number.isInteger(opts[name]) || opts[name] <= 0) throw new Error(`--${name} must be a positive integer`);
  }
  if (opts.visible > opts.docs) throw new Error('--visible cannot exceed --docs');
  return opts;
}

const ADMIN = `Basic ${Buffer.from('admin:secret').toString('base64')}`;
const MEMBER = `Basic ${Buffer.from('reader:pw-reader').toString('base64')}`;

async function call(pool, method, path, auth, body) {
  const res = await pool.request({
    method,
    path,
    headers: { authorization: auth, 'content-type': 'application/json', accept: 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.body.text();
  if (res.statusCode < 200 || res.statusCode > 299) {
    throw new Error(`${method} ${path} -> ${res.statusCode} ${text.slice(0, 300)}`);
  }
  return JSON.parse(text);
}

/** Writes `n` documents, the `visible` ones (spread evenly) listing the reader. */
async function fill(pool, db, n, visibleEvery, batch) {
  for (let start = 0; start < n; start += batch) {
    const docs = [];
    for (let i = start; i < Math.min(n, start + batch); i++) {
      const mine = i % visibleEvery === 0;
      docs.push({ _id: `doc-${String(i).padStart(7, '0')}`, _access: [mine ? 'reader' : `other-${i % 50}`], n: i, text: 'x'.repeat(64) });
    }
    await call(pool, 'POST', `/${db}/_bulk_docs`, ADMIN, { docs });
  }
}

/** Reads the member's whole feed; returns how many rows it had. */
async function readFeed(pool, db, limit) {
  let since = 0;
  let rows = 0;
  for (;;) {
    const page = await call(pool, 'GET', `/${db}/_changes?style=all_docs&since=${since}${limit ? `&limit=${limit}` : ''}`, MEMBER);
    rows += page.results.length;
    since = page.last_seq;
    if (!limit || page.results.length < limit) return rows;
  }
}

async function median(runs, fn) {
  await fn();
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const visibleEvery = Math.floor(opts.docs / opts.visible);
  const server = await startServer({
    kind: 'outpost',
    quiet: true,
    bin: process.env.OUTPOST_BIN || path.join(REPO, 'target', 'release', 'outpost'),
    env: { OUTPOST_ADMIN_USER: 'admin', OUTPOST_ADMIN_PASSWORD: 'secret', OUTPOST_PASSWORD_ITERATIONS: '1000' },
  });
  const pool = new undici.Pool(server.url, { connections: 1 });
  try {
    await call(pool, 'PUT', '/_users', ADMIN);
    await call(pool, 'PUT', '/_users/org.couchdb.user:reader', ADMIN, { name: 'reader', type: 'user', roles: [], password: 'pw-reader' });
    const security = { admins: { names: [], roles: [] }, members: { names: ['reader'], roles: [] } };
    await call(pool, 'PUT', '/shared?access=true', ADMIN);
    await call(pool, 'PUT', '/shared/_security', ADMIN, security);
    await call(pool, 'PUT', '/own?access=true', ADMIN);
    await call(pool, 'PUT', '/own/_security', ADMIN, security);
    let t0 = performance.now();
    await fill(pool, 'shared', opts.docs, visibleEvery, opts.batch);
    console.error(`wrote ${opts.docs} documents in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    // The same visible documents, alone in a database.
    const visible = Math.ceil(opts.docs / visibleEvery);
    await fill(pool, 'own', visible, 1, opts.batch);
    const counts = [await readFeed(pool, 'shared'), await readFeed(pool, 'own')];
    if (counts[0] !== counts[1]) throw new Error(`the member sees ${counts[0]} rows in shared, ${counts[1]} in own`);
    const results = [];
    for (const [label, limit] of [['whole feed', 0], ['pages of 100', 100]]) {
      const shared = await median(opts.runs, () => readFeed(pool, 'shared', limit));
      const own = await median(opts.runs, () => readFeed(pool, 'own', limit));
      results.push({ label, shared, own });
    }
    console.log(`\nA member's _changes (${counts[0]} rows) on an access=true database of ${opts.docs} documents vs a database of only those ${counts[0]}; median of ${opts.runs} (ms):\n`);
    console.log('| read | shared database | own database | ratio |');
    console.log('| --- | ---: | ---: | ---: |');
    for (const r of results) {
      console.log(`| ${r.label} | ${r.shared.toFixed(1)} | ${r.own.toFixed(1)} | ${(r.shared / r.own).toFixed(2)}× |`);
    }
  } finally {
    await pool.close();
    await server.destroy();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
