'use strict';
// PouchDB over TLS: Outpost serves HTTPS with a self-signed certificate made here (openssl), and
// PouchDB, given a fetch that trusts only that certificate, pushes, pulls and syncs live over
// HTTP/1.1 and over HTTP/2 (undici with `allowH2`, which ALPN then picks). Browsers allow six
// HTTP/1.1 connections per host, so many live feeds at once need HTTP/2.

const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Agent, fetch: undiciFetch } = require('undici');
const PouchDB = require('pouchdb');
const { startServer } = require('../lib/server');
const { localDb, dbName, snapshot } = require('../lib/pouch');

const outpostOnly = (process.env.INTEROP_SERVER || 'outpost') !== 'outpost';

/** Whether the `openssl` command that makes the certificate is on PATH; said on stderr if not. */
function haveOpenssl() {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    process.stderr.write('SKIPPED: PouchDB over TLS: openssl is not on PATH (install Debian\'s `openssl`)\n');
    return false;
  }
}
const skip = outpostOnly ? 'Outpost only' : !haveOpenssl() && 'openssl is not on PATH';

/** A key and a self-signed certificate for 127.0.0.1, written into a new directory. */
function selfSigned() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'interop-tls-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1',
  ], { stdio: 'ignore' });
  return { dir, cert, key };
}

/**
 * A fetch trusting only `certFile`; HTTP/2 is offered when `h2`.
 *
 * undici 6 fails the request in flight when a graceful GOAWAY (code 0, NO_ERROR) arrives, even
 * one that RFC 9113 section 6.8 lets a server send at any time and after which a client is meant
 * to retry on a new connection; its own source says it "cannot recover". Such a request is sent
 * once more here (PouchDB's requests in this test are idempotent and their bodies are strings),
 * and said on stderr; any other error, or a second GOAWAY, fails the test.
 */
function trustingFetch(certFile, h2) {
  const dispatcher = new Agent({ connect: { ca: fs.readFileSync(certFile) }, allowH2: h2 });
  const send = (url, opts) => undiciFetch(url, { ...opts, dispatcher });
  return async (url, opts = {}) => {
    try {
      return await send(url, opts);
    } catch (err) {
      const message = String(err?.cause?.message ?? err?.message ?? err);
      const retryable = opts.body === undefined || typeof opts.body === 'string';
      if (!h2 || !retryable || !message.includes('"GOAWAY" frame received with code 0')) throw err;
      process.stderr.write(`tls.test.js: ${opts.method || 'GET'} ${url} met a graceful GOAWAY; sending it again\n`);
      return send(url, opts);
    }
  };
}

for (const h2 of [false, true]) {
  test(`PouchDB syncs with Outpost over HTTPS (${h2 ? 'HTTP/2' : 'HTTP/1.1'})`, { skip }, async () => {
    const files = selfSigned();
    const fetch = trustingFetch(files.cert, h2);
    const server = await startServer({ tls: { cert: files.cert, key: files.key, fetch } });
    try {
      const name = dbName('tls');
      const remote = new PouchDB(`${server.url}/${name}`, { fetch });
      const a = localDb('tls-a');
      const docs = [];
      for (let i = 0; i < 40; i++) docs.push({ _id: `doc-${i}`, i });
      await a.bulkDocs(docs);
      const push = await a.replicate.to(remote);
      assert.equal(push.docs_written, 40);

      // A live pull on a second client sees a write made afterwards on the first.
      const b = localDb('tls-b');
      const live = b.replicate.from(remote, { live: true, retry: true });
      try {
        const arrived = new Promise((resolve) => {
          live.on('change', (info) => {
            if (info.docs.some((d) => d._id === 'late')) resolve();
          });
        });
        await a.put({ _id: 'late', v: 1 });
        await a.replicate.to(remote);
        await arrived;
      } finally {
        live.cancel();
      }
      assert.deepEqual(await snapshot(b), await snapshot(a));
      // The access log names each request's HTTP version.
      const log = fs.readFileSync(server.logFile, 'utf8');
      assert.equal(log.includes('HTTP/2.0'), h2, 'HTTP/2 requests in the access log');
    } finally {
      await server.destroy();
      fs.rmSync(files.dir, { recursive: true, force: true });
    }
  });
}
