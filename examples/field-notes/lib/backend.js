'use strict';
// The small REST backend the app's "submit report" reaches through `outpost gateway`. It keeps
// the reports it accepted in memory, applies a repeated `Idempotency-Key` once, and answers
// `GET /` for the gateway's health probe.
//
//   POST /reports      {"title": ..., "body": ...}  -> 201 {"id", "received_at"}
//   GET  /reports      -> every accepted report, with how many requests carried its key

const http = require('node:http');

/**
 * A backend that can be stopped and started again on the same port with its reports kept, as
 * a real service going down and coming back would.
 */
function createBackend() {
  const reports = new Map();
  const handle = (req, res) => {
    const send = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'GET' && req.url === '/') return send(200, { ok: true });
    if (req.method === 'GET' && req.url === '/reports') return send(200, [...reports.values()]);
    if (req.method === 'POST' && req.url === '/reports') {
      let text = '';
      req.setEncoding('utf8');
      req.on('data', (chunk) => {
        text += chunk;
      });
      req.on('end', () => {
        let body;
        try {
          body = JSON.parse(text);
        } catch {
          return send(400, { error: 'bad_request', reason: 'the body is not JSON' });
        }
        const key = req.headers['idempotency-key'] || `anonymous-${reports.size}`;
        const known = reports.get(key);
        if (known) {
          known.requests += 1;
          return send(201, { id: key, received_at: known.received_at });
        }
        const report = { id: key, title: body.title, body: body.body, requests: 1, received_at: new Date().toISOString() };
        reports.set(key, report);
        return send(201, { id: key, received_at: report.received_at });
      });
      return undefined;
    }
    return send(404, { error: 'not_found', reason: 'no such resource' });
  };
  let server = null;
  const backend = {
    port: 0,
    reports: () => [...reports.values()],
    /** Listens on `port` (the previous one after a stop, else a free one). */
    start(port = backend.port) {
      server = http.createServer(handle);
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, '127.0.0.1', () => {
          backend.port = server.address().port;
          resolve(backend);
        });
      });
    },
    stop() {
      if (!server) return Promise.resolve();
      const closing = server;
      server = null;
      return new Promise((done) => {
        closing.close(() => done());
        closing.closeAllConnections();
      });
    },
  };
  return backend;
}

module.exports = { createBackend };
