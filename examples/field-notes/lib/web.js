'use strict';
// The app's web server: the app shell from public/, PouchDB's browser build from node_modules
// (nothing is fetched from a CDN), and two reverse-proxied paths so the page talks to one origin
// (the session cookie is then first-party and no CORS is needed):
//
//   /couch/...  -> the Outpost sync server
//   /api/...    -> the Outpost gateway in front of the REST backend

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const PUBLIC = path.join(__dirname, '..', 'public');
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.webmanifest': 'application/manifest+json',
  '.svg': 'image/svg+xml',
};

function vendorFile(name) {
  if (name === 'pouchdb.min.js') return require.resolve('pouchdb/dist/pouchdb.min.js');
  return null;
}

function proxy(req, res, target, prefix) {
  const url = new URL(target);
  const headers = { ...req.headers, host: url.host };
  const upstream = http.request(
    {
      hostname: url.hostname,
      port: url.port,
      method: req.method,
      path: req.url.slice(prefix.length) || '/',
      headers,
    },
    (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    },
  );
  upstream.on('error', () => {
    if (!res.headersSent) {
      res.writeHead(502, { 'content-type': 'application/json' });
    }
    res.end(JSON.stringify({ error: 'bad_gateway', reason: `${prefix} is not reachable` }));
  });
  res.on('close', () => upstream.destroy());
  req.pipe(upstream);
}

function serveFile(res, file) {
  fs.readFile(file, (err, data) => {
    if (err) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      return res.end('not found');
    }
    res.writeHead(200, {
      'content-type': TYPES[path.extname(file)] || 'application/octet-stream',
      // The service worker decides what is kept; the browser's HTTP cache must not get in between.
      'cache-control': 'no-cache',
    });
    return res.end(data);
  });
}

/** Starts the web server; `couch` and `api` are the base URLs proxied to. */
function startWeb({ port = 0, couch, api }) {
  const server = http.createServer((req, res) => {
    if (req.url.startsWith('/couch/')) return proxy(req, res, couch, '/couch');
    if (req.url.startsWith('/api/')) return proxy(req, res, api, '/api');
    const pathname = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (pathname.startsWith('/vendor/')) {
      const file = vendorFile(pathname.slice('/vendor/'.length));
      return file ? serveFile(res, file) : serveFile(res, '');
    }
    const relative = pathname === '/' ? 'index.html' : pathname.slice(1);
    const file = path.join(PUBLIC, relative);
    if (!file.startsWith(PUBLIC + path.sep)) return serveFile(res, '');
    return serveFile(res, file);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        close: () =>
          new Promise((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}

module.exports = { startWeb };
