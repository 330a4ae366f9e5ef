#!/usr/bin/env node
'use strict';
// Benchmark of the example app (examples/field-notes) in Chromium: the time to first render of a
// reload while offline (the service worker and IndexedDB alone), and the time for a note added in
// one browser to appear in another signed in as the same user (PouchDB live sync through
// Outpost), p50/p99 over `--changes` notes. A benchmark, not a test: nothing fails on a figure.
//
//   cargo build --release -p outpost-cli
//   (cd tests/browser && npm ci) && (cd examples/field-notes && npm ci)
//   node bench/field-notes.js [--changes 100] [--reloads 10] [--bin target/release/outpost]
//
// Uses playwright-core from tests/browser and Debian's Chromium (CHROMIUM_BIN overrides it).

const path = require('node:path');
const { createRequire } = require('node:module');

const REPO = path.resolve(__dirname, '..');
const browserRequire = createRequire(path.join(REPO, 'tests', 'browser', 'package.json'));
const { chromium } = browserRequire('playwright-core');
const { startStack } = require(path.join(REPO, 'examples', 'field-notes', 'lib', 'stack.js'));

function parseArgs(argv) {
  const opts = { changes: 100, reloads: 10, bin: null };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--changes') opts.changes = Number(argv[++i]);
    else if (argv[i] === '--reloads') opts.reloads = Number(argv[++i]);
    else if (argv[i] === '--bin') opts.bin = argv[++i];
    else {
      console.error('usage: node bench/field-notes.js [--changes N] [--reloads N] [--bin PATH]');
      process.exit(2);
    }
  }
  return opts;
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function signIn(browser, url, name, password) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(url);
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText(`Signed in as ${name}`).waitFor();
  await page.waitForFunction(() => navigator.serviceWorker.controller !== null);
  return { context, page };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  process.env.OUTPOST_BIN = opts.bin || process.env.OUTPOST_BIN || path.join(REPO, 'target', 'release', 'outpost');
  const password = 'bench-password';
  const stack = await startStack({ users: [{ name: 'bench', password }] });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });
  try {
    const a = await signIn(browser, stack.url, 'bench', password);
    const b = await signIn(browser, stack.url, 'bench', password);

    // A note added in A, timed until B shows it. The clock is the browsers' (both run on the
    // same machine and share its monotonic clock through Date.now()).
    const latencies = [];
    for (let n = 0; n < opts.changes; n++) {
      const text = `note ${n} ${Date.now()}`;
      const seen = b.page.waitForFunction(
        (t) => [...document.querySelectorAll('#notes li .text')].some((e) => e.textContent === t) && Date.now(),
        text,
        { polling: 'raf', timeout: 60_000 },
      );
      const started = await a.page.evaluate(() => Date.now());
      await a.page.getByLabel('New note').fill(text);
      await a.page.getByRole('button', { name: 'Add', exact: true }).click();
      const at = await (await seen).jsonValue();
      latencies.push(at - started);
    }
    latencies.sort((x, y) => x - y);

    // Reloads while offline: from the navigation's start to the first note on screen.
    await a.context.setOffline(true);
    const renders = [];
    for (let n = 0; n < opts.reloads; n++) {
      await a.page.reload();
      await a.page.locator('#notes li .text').first().waitFor();
      renders.push(await a.page.evaluate(() => performance.now()));
    }
    renders.sort((x, y) => x - y);

    console.log(`\nfield notes, ${opts.changes} notes, ${opts.reloads} offline reloads\n`);
    console.log('| figure | p50 | p99 |');
    console.log('| --- | --- | --- |');
    console.log(`| a note from one browser shown in another | ${percentile(latencies, 50)} ms | ${percentile(latencies, 99)} ms |`);
    console.log(`| first render of an offline reload (navigation to first note) | ${percentile(renders, 50).toFixed(0)} ms | ${percentile(renders, 99).toFixed(0)} ms |`);
  } finally {
    await browser.close();
    await stack.stop();
  }
}

main().catch((err) => {
  console.error(err.stack || err);
  process.exit(1);
});
