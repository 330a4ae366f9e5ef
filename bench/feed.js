#!/usr/bin/env node
'use strict';
// Benchmark of the multiplexed feed (docs/feed.md): many WebSocket subscribers spread over many
// databases on one server, a writer writing to random databases, and for every write the time
// until each subscriber of its database received it. Prints delivery latency p50/p99/max, the
// deliveries that never came, and the server's resident memory per subscriber. It is a
// benchmark, not a test: nothing fails on a slow figure.
//
//   cargo build --release -p outpost-cli
//   node --experimental-websocket bench/feed.js             # Node 20; Node 22+ needs no flag
//   node --experimental-websocket bench/feed.js --subscribers 200 --writes 100
//
// Uses the server launcher of tests/interop (no npm dependency for Outpost itself).

const fs = require('node:fs');
const path = require('node:path');
const { performance } = require('node:perf_hooks');

const REPO = path.resolve(__dirname, '..');
const { startServer } = require(path.join(REPO, 'tests', 'interop', 'lib', 'server.js'));

const USAGE = `usage: node --experimental-websocket bench/feed.js [options]

  --subscribers N      WebSocket connections (default 1000)
  --databases N        databases (default 100)
  --per-subscriber N   databases each connection follows, chosen at random (default 10)
  --writes N           documents written, one at a time, to random databases (default 300)
  --interval-ms N      pause between writes (default 10)
  --bin PATH           the outpost binary (default OUTPOST_BIN, else target/release/outpost)
  --json FILE          also write the raw figures as JSON`;

function parseArgs(argv) {
  const opts = { subscribers: 1000, databases: 100, perSubscriber: 10, writes: 300, intervalMs: 10, bin: null, json: null };
  const names = {
    '--subscribers': 'subscribers',
    '--databases': 'databases',
    '--per-subscriber': 'perSubscriber',
    '--writes': 'writes',
    '--interval-ms': 'intervalMs',
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (names[arg]) {
      opts[names[arg]] = Number(argv[++i]);
    } else if (arg === '--bin') {
      opts.bin = argv[++i];
    } else if (arg === '--json') {
      opts.json = argv[++i];
    } else {
      console.error(`unknown option ${arg}\n${USAGE}`);
      process.exit(2);
    }
  }
  opts.perSubscriber = Math.min(opts.perSubscriber, opts.databases);
  return opts;
}

/** Resident memory of a process in bytes (Linux). */
function rss(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
  return kb * 1024;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function sample(n, k) {
  const all = Array.from({ length: n }, (_, i) => i);
  for (let i = all.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return all.slice(0, k);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  if (typeof WebSocket !== 'function') {
    console.error('no WebSocket in this Node.js: run with --experimental-websocket (Node 20) or use Node 22+');
    process.exit(2);
  }
  const opts = parseArgs(process.argv.slice(2));
  const bin = opts.bin || process.env.OUTPOST_BIN || path.join(REPO, 'target', 'release', 'outpost');
  const server = await startServer({ kind: 'outpost', bin, quiet: true });
  try {
    const dbs = Array.from({ length: opts.databases }, (_, i) => `bench-feed-${i}`);
    for (const db of dbs) {
      const res = await fetch(`${server.url}/${db}`, { method: 'PUT' });
      if (!res.ok) throw new Error(`PUT /${db}: ${res.status}`);
    }
    const idle = rss(server.pid);

    // Which connections follow each database, and when each write was sent.
    const followers = new Map(dbs.map((db) => [db, 0]));
    const sentAt = new Map();
    const latencies = [];
    let pending = 0;
    const wsUrl = `${server.url.replace(/^http/, 'ws')}/_outpost/v1/feed`;
    const sockets = [];
    const connectStarted = performance.now();
    await Promise.all(
      Array.from({ length: opts.subscribers }, () =>
        new Promise((resolve, reject) => {
          const mine = sample(opts.databases, opts.perSubscriber).map((i) => dbs[i]);
          let caughtUp = 0;
          const ws = new WebSocket(wsUrl);
          sockets.push(ws);
          ws.onopen = () => {
            for (const db of mine) ws.send(JSON.stringify({ type: 'subscribe', db, since: 'now' }));
          };
          ws.onmessage = (event) => {
            const frame = JSON.parse(event.data);
            if (frame.type === 'caught_up' && ++caughtUp === mine.length) {
              for (const db of mine) followers.set(db, followers.get(db) + 1);
              resolve();
            } else if (frame.type === 'change') {
              const t0 = sentAt.get(frame.change.id);
              if (t0 !== undefined) {
                latencies.push(performance.now() - t0);
                pending -= 1;
              }
            } else if (frame.type === 'error') {
              reject(new Error(`feed error: ${event.data}`));
            }
          };
          ws.onerror = () => reject(new Error('WebSocket error'));
        }),
      ),
    );
    const connectSeconds = (performance.now() - connectStarted) / 1000;
    await sleep(500);
    const subscribed = rss(server.pid);

    for (let n = 0; n < opts.writes; n++) {
      const db = dbs[Math.floor(Math.random() * dbs.length)];
      const id = `w${n}`;
      pending += followers.get(db);
      sentAt.set(id, performance.now());
      const res = await fetch(`${server.url}/${db}/${id}`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: '{}',
      });
      if (!res.ok) throw new Error(`PUT /${db}/${id}: ${res.status}`);
      if (opts.intervalMs) await sleep(opts.intervalMs);
    }
    // Deliveries still on their way, for at most ten seconds.
    const deadline = Date.now() + 10_000;
    while (pending > 0 && Date.now() < deadline) await sleep(20);
    const loaded = rss(server.pid);
    for (const ws of sockets) ws.close();

    latencies.sort((a, b) => a - b);
    const figures = {
      subscribers: opts.subscribers,
      databases: opts.databases,
      per_subscriber: opts.perSubscriber,
      writes: opts.writes,
      deliveries: latencies.length,
      missing: pending,
      connect_seconds: connectSeconds,
      latency_ms: { p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies[latencies.length - 1] },
      rss_bytes: { idle, subscribed, loaded },
      rss_per_subscriber_bytes: (subscribed - idle) / opts.subscribers,
    };
    const ms = (v) => v.toFixed(1);
    const mib = (v) => (v / 1048576).toFixed(1);
    console.log(`\n${opts.subscribers} subscribers × ${opts.perSubscriber} of ${opts.databases} databases, ${opts.writes} writes\n`);
    console.log('| figure | value |');
    console.log('| --- | --- |');
    console.log(`| connect and subscribe, all | ${connectSeconds.toFixed(2)} s |`);
    console.log(`| deliveries (missing) | ${figures.deliveries} (${figures.missing}) |`);
    console.log(`| delivery latency p50 / p99 / max | ${ms(figures.latency_ms.p50)} / ${ms(figures.latency_ms.p99)} / ${ms(figures.latency_ms.max)} ms |`);
    console.log(`| server RSS idle / subscribed / after writes | ${mib(idle)} / ${mib(subscribed)} / ${mib(loaded)} MiB |`);
    console.log(`| server RSS per subscriber | ${(figures.rss_per_subscriber_bytes / 1024).toFixed(1)} KiB |`);
    if (opts.json) fs.writeFileSync(opts.json, JSON.stringify(figures, null, 2));
  } finally {
    await server.destroy();
  }
}

main().catch((err) => {
  console.error(err.stack || err);
  process.exit(1);
});
