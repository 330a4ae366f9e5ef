'use strict';
// The multiplexed feed in Chromium: one page follows 20 databases over one WebSocket while a
// writer (this process) writes to all of them, and the server is restarted in the middle. The
// page must end with every change exactly once: it resumes from its last sequence per database.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { startServer } = require('../../interop/lib/server');
const { launch, artifact, waitFor } = require('../lib/browser');

const DATABASES = 20;
const DOCS_PER_ROUND = 5;
/** Far above the normal running time, so only a hang trips it. */
const PATIENCE_MS = 60_000;

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>feed</title>
<style>body{font:14px sans-serif;margin:1em}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>
</head><body><h1>Multiplexed feed</h1><p id="status">connecting</p>
<table><thead><tr><th>database</th><th>changes</th><th>last seq</th></tr></thead><tbody id="rows"></tbody></table>
</body></html>`;

async function put(url, pathname, body) {
  const res = await fetch(url + pathname, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(res.ok, `PUT ${pathname}: ${res.status} ${await res.text()}`);
}

test('a page subscribed to 20 databases receives every change across a server restart', async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer();
  t.after(async () => {
    await browser.close();
    await server.destroy();
  });
  const dbs = Array.from({ length: DATABASES }, (_, i) => `feed-${String(i).padStart(2, '0')}`);
  for (const db of dbs) await put(server.url, `/${db}`);

  const page = await browser.newPage();
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.setContent(PAGE);
  await page.addScriptTag({ path: path.join(__dirname, '..', 'lib', 'outpost-feed.js') });
  await page.evaluate(
    ({ url, dbs }) => {
      window.received = {};
      const rows = document.getElementById('rows');
      const cells = {};
      for (const db of dbs) {
        window.received[db] = [];
        const tr = document.createElement('tr');
        tr.innerHTML = `<td>${db}</td><td>0</td><td>0</td>`;
        rows.appendChild(tr);
        cells[db] = tr.children;
      }
      window.feed = new OutpostFeed(url.replace(/^http/, 'ws') + '/_outpost/v1/feed', {
        onChange(db, change) {
          window.received[db].push(change.id);
          cells[db][1].textContent = window.received[db].length;
          cells[db][2].textContent = change.seq;
        },
        onStatus(status, detail) {
          document.getElementById('status').textContent = `${status} (connections: ${window.feed ? window.feed.connections : 0})`;
          if (status === 'caught_up') window.caughtUp = (window.caughtUp || 0) + 1;
          if (status === 'error') (window.errors = window.errors || []).push(detail);
        },
      });
      for (const db of dbs) window.feed.subscribe(db);
    },
    { url: server.url, dbs },
  );
  await waitFor(() => page.evaluate(() => window.caughtUp === 20), PATIENCE_MS, 'all 20 subscriptions to catch up');

  const written = Object.fromEntries(dbs.map((db) => [db, []]));
  async function writeRound(round) {
    for (let n = 0; n < DOCS_PER_ROUND; n++) {
      for (const db of dbs) {
        const id = `r${round}-${n}`;
        await put(server.url, `/${db}/${id}`, { round, n });
        written[db].push(id);
      }
    }
  }
  await writeRound(1);
  // Restarted with changes possibly still on their way: the page resumes where it was.
  await server.restart();
  await writeRound(2);

  const total = DATABASES * DOCS_PER_ROUND * 2;
  await waitFor(
    () => page.evaluate((n) => Object.values(window.received).reduce((a, l) => a + l.length, 0) >= n, total),
    PATIENCE_MS,
    `${total} changes on the page`,
  );
  const received = await page.evaluate(() => window.received);
  for (const db of dbs) {
    assert.deepEqual([...received[db]].sort(), [...written[db]].sort(), `${db}: every change exactly once`);
  }
  // The only error is the restart's notice; no subscription was refused or failed.
  const errors = await page.evaluate(() => window.errors || []);
  assert.deepEqual([...new Set(errors.map((e) => e.error))], ['shutting_down'], JSON.stringify(errors));
  // One connection at a time: the first, then the one after the restart (a retry that found
  // the server still down never opened).
  const connections = await page.evaluate(() => window.feed.connections);
  assert.ok(connections >= 2, `reconnected after the restart (${connections} connections)`);
  assert.equal(new Set(sockets).size, 1, 'every connection went to the one feed URL');
  await page.screenshot({ path: artifact('feed-20-databases.png'), fullPage: true });
});
