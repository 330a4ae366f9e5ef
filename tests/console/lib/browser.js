'use strict';
// Debian's Chromium driven by playwright-core (no browser download), the place screenshots go,
// and a recorder of what a page got wrong: failed requests and uncaught errors.

const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** Launches headless Chromium. As root (containers, CI) Chromium's sandbox cannot start. */
async function launch() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install Debian's chromium package or set CHROMIUM_BIN`);
  }
  const args = process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [];
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args });
}

/** `target/browser-artifacts/<suite>`, created; screenshots are kept there, never committed. */
function artifacts(suite) {
  const dir = process.env.CONSOLE_ARTIFACTS
    ? path.join(process.env.CONSOLE_ARTIFACTS, suite)
    : path.join(REPO_ROOT, 'target', 'browser-artifacts', suite);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Records a page's uncaught errors, console errors and answers of 400 or more, so a test can
 * assert that a flow went through without the server refusing anything the UI asked.
 */
function watch(page) {
  const problems = { errors: [], failed: [] };
  page.on('pageerror', (err) => problems.errors.push(String(err && err.stack ? err.stack : err)));
  page.on('response', (res) => {
    if (res.status() >= 400) problems.failed.push(`${res.request().method()} ${new URL(res.url()).pathname}${new URL(res.url()).search} -> ${res.status()}`);
  });
  return problems;
}

module.exports = { launch, artifacts, watch, REPO_ROOT };
