'use strict';
// Starts the server under test as a child process on a free loopback port with its own temporary
// data directory, so every test file gets a clean server and the tests can kill and restart it on
// the same port and data (which is what a crash looks like to a client).
//
// Which server runs is chosen with INTEROP_SERVER:
//   outpost (default)  OUTPOST_BIN (or <repo>/target/debug/outpost) serve --data DIR --listen ADDR
//   pouchdb-server     pouchdb-server 4 on LevelDB (not in-memory), the reference we compare with
// Outpost inherits this process's environment, so OUTPOST_STORE=postgres://... runs every server
// on PostgreSQL (all of them sharing that database: a "clean server" is then a clean data
// directory, and the test files use their own database names).
//
// INTEROP_SERVER_LOG=1 copies the server's output to this process's stderr; otherwise it goes to
// a log file in the temporary directory whose tail is printed when the server fails to start.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

/** Every child still running, so they can be killed if the test process exits abruptly. */
const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Asks the kernel for a free port by binding to port 0 and closing the socket again. */
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

function outpostBin(explicit) {
  // Resolved against our working directory: the server itself runs in its temporary directory.
  const bin = path.resolve(explicit || process.env.OUTPOST_BIN || path.join(REPO_ROOT, 'target', 'debug', 'outpost'));
  if (!fs.existsSync(bin)) {
    throw new Error(
      `outpost binary not found at ${bin}: build it (cargo build -p outpost-cli) or set OUTPOST_BIN, ` +
        'or run against pouchdb-server with INTEROP_SERVER=pouchdb-server',
    );
  }
  return bin;
}

/**
 * The command line for each kind of server; `dir` is the temporary directory of this server.
 * `quiet` turns off per-request logging on both servers (the benchmark wants neither paying
 * for a log line per request); otherwise both log at their info level.
 */
function command(kind, { dir, port, quiet, bin, tls, env = {} }) {
  const dataDir = path.join(dir, 'data');
  if (kind === 'outpost') {
    const tlsArgs = tls ? ['--tls-cert', tls.cert, '--tls-key', tls.key] : [];
    return {
      cmd: outpostBin(bin),
      args: ['serve', '--data', dataDir, '--listen', `127.0.0.1:${port}`, ...tlsArgs],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || (quiet ? 'warn' : 'info'), ...env },
    };
  }
  if (kind === 'pouchdb-server') {
    // pouchdb-server keeps its configuration (including the server uuid, which PouchDB's
    // replication ids and therefore checkpoints depend on) in config.json: keep it in `dir` so a
    // restart finds the same uuid, as a restarted CouchDB would.
    const config = path.join(dir, 'config.json');
    if (!fs.existsSync(config)) {
      const log = { file: path.join(dir, 'pouchdb-server.log'), level: quiet ? 'warning' : 'info' };
      fs.writeFileSync(config, JSON.stringify({ log }, null, 2));
    }
    return {
      cmd: process.execPath,
      args: [
        require.resolve('pouchdb-server/bin/pouchdb-server'),
        '--port', String(port),
        '--host', '127.0.0.1',
        '--dir', dataDir,
        '--config', config,
        '-n', // no copy of the request log on stdout (the long form is parsed as a negation)
        '--no-color',
      ],
      env: process.env,
    };
  }
  throw new Error(`unknown INTEROP_SERVER ${JSON.stringify(kind)}: use outpost or pouchdb-server`);
}

function tail(file, lines = 40) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '(no output)';
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Starts a server and resolves once `GET /` answers with a welcome. Options: `kind` (default
 * INTEROP_SERVER, else outpost), `port` (default a free one), `bin` (the outpost binary, default
 * OUTPOST_BIN), `quiet` (no per-request logging), `tls` (outpost only: `{ cert, key, fetch }`, PEM
 * file paths and a fetch that trusts the certificate; the server then speaks HTTPS).
 * `env` (more environment variables for outpost).
 *
 * Returns `{ kind, url, port, dir, pid, stop(), kill(), restart(), destroy() }`:
 * - `stop()` ends the process with SIGTERM (SIGKILL after 10 s) and keeps the data;
 * - `kill()` ends it with SIGKILL, as a crash or power cut would from the client's point of view;
 * - `restart()` starts it again on the same port and data directory (after `stop` or `kill`);
 * - `destroy()` stops it and removes the temporary directory.
 */
async function startServer(options = {}) {
  const kind = options.kind || process.env.INTEROP_SERVER || 'outpost';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `interop-${kind}-`));
  const port = options.port || (await freePort());
  const url = `${options.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const probe = options.tls ? options.tls.fetch : fetch;
  const logFile = path.join(dir, 'server.out');
  const echo = process.env.INTEROP_SERVER_LOG === '1';
  let child = null;
  let exited = null;

  async function launch() {
    const { cmd, args, env } = command(kind, { dir, port, quiet: options.quiet, bin: options.bin, tls: options.tls, env: options.env });
    const out = fs.openSync(logFile, 'a');
    child = spawn(cmd, args, {
      cwd: dir,
      env,
      stdio: ['ignore', echo ? 'inherit' : out, echo ? 'inherit' : out],
    });
    fs.closeSync(out);
    running.add(child);
    const thisChild = child;
    exited = new Promise((resolve) => {
      thisChild.on('exit', (code, signal) => {
        running.delete(thisChild);
        resolve({ code, signal });
      });
      thisChild.on('error', (err) => {
        running.delete(thisChild);
        resolve({ code: null, signal: null, error: err });
      });
    });
    let exitInfo = null;
    exited.then((info) => {
      exitInfo = info;
    });
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (exitInfo) {
        throw new Error(
          `${kind} exited before answering (${JSON.stringify(exitInfo)}): ${cmd} ${args.join(' ')}\n` +
            tail(logFile),
        );
      }
      try {
        const res = await probe(`${url}/`, { signal: AbortSignal.timeout(1000) });
        const body = await res.json();
        // CouchDB answers {"couchdb":"Welcome",...}, pouchdb-server {"express-pouchdb":"Welcome!",...};
        // either way a JSON welcome with a uuid means the server is accepting requests.
        if (res.ok && body && typeof body.uuid === 'string') {
          server.pid = thisChild.pid;
          return;
        }
      } catch {
        // Not listening yet.
      }
      await sleep(50);
    }
    thisChild.kill('SIGKILL');
    throw new Error(`${kind} did not answer GET / within ${READY_TIMEOUT_MS} ms\n${tail(logFile)}`);
  }

  async function end(signal) {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  }

  const server = {
    kind,
    url,
    port,
    dir,
    logFile,
    pid: null,
    stop: () => end('SIGTERM'),
    kill: () => end('SIGKILL'),
    async restart() {
      await end('SIGTERM');
      await launch();
    },
    async destroy() {
      await end('SIGTERM');
      fs.rmSync(dir, { recursive: true, force: true });
    },
    /** The last lines the server printed, for assertion messages. */
    logTail: (lines) => tail(logFile, lines),
  };

  await launch();
  return server;
}

module.exports = { startServer, freePort };
