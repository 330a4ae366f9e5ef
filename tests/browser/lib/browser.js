'use strict';
// Debian's Chromium driven by playwright-core: no browser is downloaded. CHROMIUM_BIN overrides
// the path. Without a Chromium the browser tests skip with a message, except under CI=true, where
// a missing browser fails them (.ci/run installs Debian's `chromium`).

const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ARTIFACTS = process.env.BROWSER_ARTIFACTS || path.resolve(__dirname, '..', '..', '..', 'target', 'browser-artifacts');

/**
 * Launches headless Chromium, or returns null (after skipping `t`) when there is none and the
 * run is not under CI.
 */
async function launch(t) {
  if (!fs.existsSync(CHROMIUM)) {
    const message = `no Chromium at ${CHROMIUM} (install Debian's chromium or set CHROMIUM_BIN)`;
    if (process.env.CI === 'true') throw new Error(message);
    t.skip(message);
    return null;
  }
  // The sandbox needs user namespaces, which containers and root often lack.
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
}

/** Where a screenshot named `name` goes (a test artifact under target/, never committed). */
function artifact(name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  return path.join(ARTIFACTS, name);
}

/** Polls `check` (async, truthy when done) every 50 ms until it passes or `limitMs` runs out. */
async function waitFor(check, limitMs, what) {
  const deadline = Date.now() + limitMs;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

module.exports = { launch, artifact, waitFor };
