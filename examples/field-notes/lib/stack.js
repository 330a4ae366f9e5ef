'use strict';
// Everything the app needs, on loopback ports, each in its own temporary directory:
//
//   outpost serve     the sync server: an admin, `couch_peruser` (a private database per user)
//   backend           the small REST backend the "submit report" action reaches
//   outpost gateway   in front of the backend: queues reports while it is down
//   web               the app shell, PouchDB's browser build, /couch and /api proxied
//
// Used by start.js (npm start) and by the browser tests (tests/browser), which stop and start
// the backend to see reports queue and get delivered.

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { createBackend } = require('./backend');
const { startWeb } = require('./web');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const READY_TIMEOUT_MS = 30_000;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function outpostBin() {
  const bin = path.resolve(process.env.OUTPOST_BIN || path.join(REPO_ROOT, 'target', 'debug', 'outpost'));
  if (!fs.existsSync(bin)) {
    throw new Error(`no outpost binary at ${bin}: run \`cargo build -p outpost-cli\` or set OUTPOST_BIN`);
  }
  return bin;
}

/** Starts `outpost <args>` and resolves once `probe` (a URL) answers with `ok(res)`. */
async function startOutpost(name, args, probe, ok, dir, env = {}) {
  const log = path.join(dir, `${name}.log`);
  const out = fs.openSync(log, 'a');
  const child = spawn(outpostBin(), args, {
    cwd: dir,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn', ...env },
    stdio: ['ignore', out, out],
  });
  fs.closeSync(out);
  let exited = null;
  child.on('exit', (code, signal) => {
    exited = { code, signal };
  });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exited) throw new Error(`outpost ${name} exited (${JSON.stringify(exited)}):\n${fs.readFileSync(log, 'utf8')}`);
    try {
      const res = await fetch(probe, { signal: AbortSignal.timeout(1000) });
      if (await ok(res)) break;
    } catch {
      // Not listening yet.
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  if (Date.now() >= deadline) {
    child.kill('SIGKILL');
    throw new Error(`outpost ${name} did not get ready:\n${fs.readFileSync(log, 'utf8')}`);
  }
  return {
    child,
    log,
    stop: () =>
      new Promise((resolve) => {
        if (exited) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
        return undefined;
      }),
  };
}

/**
 * Starts the stack. `users` are created as Outpost users (each gets its database);
 * `webPort` fixes the app's port (default: a free one). Resolves to
 * `{ url, couchUrl, admin, backend, userDb(name), stop() }`.
 */
async function startStack({ users = [], webPort = 0 } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'field-notes-'));
  const admin = { name: 'admin', password: crypto.randomBytes(12).toString('hex') };
  const couchPort = await freePort();
  const couchUrl = `http://127.0.0.1:${couchPort}`;
  const serve = await startOutpost(
    'serve',
    ['serve', '--data', path.join(dir, 'data'), '--listen', `127.0.0.1:${couchPort}`, '--couch-peruser'],
    `${couchUrl}/`,
    async (res) => res.ok && typeof (await res.json()).uuid === 'string',
    dir,
    { OUTPOST_ADMIN_USER: admin.name, OUTPOST_ADMIN_PASSWORD: admin.password },
  );
  const authorization = `Basic ${Buffer.from(`${admin.name}:${admin.password}`).toString('base64')}`;
  // The users' database, as CouchDB's setup makes it (412 when it exists already).
  const usersDb = await fetch(`${couchUrl}/_users`, { method: 'PUT', headers: { authorization } });
  if (!usersDb.ok && usersDb.status !== 412) throw new Error(`creating _users: ${usersDb.status} ${await usersDb.text()}`);
  for (const user of users) {
    const res = await fetch(`${couchUrl}/_users/org.couchdb.user:${encodeURIComponent(user.name)}`, {
      method: 'PUT',
      headers: { authorization, 'content-type': 'application/json' },
      body: JSON.stringify({ name: user.name, password: user.password, roles: [], type: 'user' }),
    });
    if (!res.ok) throw new Error(`creating user ${user.name}: ${res.status} ${await res.text()}`);
  }

  const backend = createBackend();
  await backend.start();
  const gatewayPort = await freePort();
  const gatewayUrl = `http://127.0.0.1:${gatewayPort}`;
  const gateway = await startOutpost(
    'gateway',
    [
      'gateway',
      '--upstream', `http://127.0.0.1:${backend.port}`,
      '--listen', `127.0.0.1:${gatewayPort}`,
      '--data', path.join(dir, 'gateway-data'),
      // A demo wants to see a report delivered soon after the backend is back.
      '--probe-interval', '250ms',
      '--unhealthy-threshold', '1',
      '--healthy-threshold', '1',
      '--retry-max', '1s',
    ],
    `${gatewayUrl}/_outpost/v1/ready`,
    async (res) => res.ok,
    dir,
  );
  const web = await startWeb({ port: webPort, couch: couchUrl, api: gatewayUrl });

  return {
    url: web.url,
    couchUrl,
    gatewayUrl,
    admin,
    authorization,
    backend,
    dir,
    /** The database `couch_peruser` made for `name`: userdb- and the name's hex. */
    userDb: (name) => `userdb-${Buffer.from(name, 'utf8').toString('hex')}`,
    async stop() {
      await web.close();
      await gateway.stop();
      await backend.stop();
      await serve.stop();
      if (process.env.FIELD_NOTES_KEEP_DATA !== '1') fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

module.exports = { startStack };
