'use strict';
// CouchDB's Fauxton (the npm package `fauxton`), serving its UI and proxying every other
// request to a CouchDB URL, started on a free port as a child process.

const { spawn } = require('node:child_process');
const path = require('node:path');
const { freePort } = require('../../interop/lib/server.js');

const READY_TIMEOUT_MS = 30_000;

/** Starts Fauxton in front of `couchUrl`; resolves to `{ url, stop() }` once it serves its page. */
async function startFauxton(couchUrl) {
  const port = await freePort();
  const bin = path.join(__dirname, '..', 'node_modules', 'fauxton', 'bin', 'fauxton');
  const child = spawn(process.execPath, [bin, '--couchdb', couchUrl, '--port', String(port)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  // Not left behind if the test process ends abruptly.
  const reap = () => child.kill('SIGKILL');
  process.on('exit', reap);
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    try {
      const res = await fetch(`${url}/`);
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`Fauxton did not start:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    url,
    async stop() {
      process.off('exit', reap);
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}

module.exports = { startFauxton };
