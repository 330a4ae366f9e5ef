'use strict';
// Plain HTTP calls to the server under test, for setting up server-side state and checking what
// the server stored without going through PouchDB (so a PouchDB bug cannot hide a server bug).

/**
 * Sends one request and returns `{ status, headers, body }`; `body` is parsed JSON when the
 * response's content type says JSON (we send `Accept: application/json` unless told otherwise,
 * as PouchDB does, so CouchDB labels JSON answers as such), a Buffer otherwise. Never throws on
 * an HTTP error status: tests assert on the status themselves.
 */
async function request(method, url, { json, raw, contentType, headers = {} } = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers } };
  // fetch refuses URLs with credentials in them; send them as Basic instead, as browsers do.
  const parsed = new URL(url);
  if (parsed.username || parsed.password) {
    const user = `${decodeURIComponent(parsed.username)}:${decodeURIComponent(parsed.password)}`;
    init.headers.Authorization = `Basic ${Buffer.from(user).toString('base64')}`;
    parsed.username = '';
    parsed.password = '';
    url = parsed.toString();
  }
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers['Content-Type'] = 'application/json';
  } else if (raw !== undefined) {
    init.body = raw;
    init.headers['Content-Type'] = contentType || 'application/octet-stream';
  }
  const res = await fetch(url, init);
  const bytes = Buffer.from(await res.arrayBuffer());
  const type = res.headers.get('content-type') || '';
  let body = bytes;
  if (type.includes('json')) {
    try {
      body = JSON.parse(bytes.toString('utf8'));
    } catch {
      // Left as bytes: the assertion on the body will show what the server sent.
    }
  }
  return { status: res.status, headers: res.headers, body };
}

/** Like `request`, but throws with the server's answer unless the status is 2xx. */
async function ok(method, url, options) {
  const res = await request(method, url, options);
  if (res.status < 200 || res.status > 299) {
    const shown = Buffer.isBuffer(res.body) ? res.body.toString('utf8') : JSON.stringify(res.body);
    throw new Error(`${method} ${url} -> ${res.status} ${shown}`);
  }
  return res.body;
}

/** The path segment for a document id, encoded as PouchDB does (`_design/` and `_local/` keep their slash). */
function docPath(id) {
  for (const prefix of ['_design/', '_local/']) {
    if (id.startsWith(prefix)) return prefix + encodeURIComponent(id.slice(prefix.length));
  }
  return encodeURIComponent(id);
}

module.exports = { request, ok, docPath };

/**
 * Every document of a server database over plain HTTP, in the same shape as `snapshot()` in
 * pouch.js (`[{ id, rev, doc }]` sorted by id, `_conflicts` included).
 */
async function serverSnapshot(dbUrl) {
  const all = await ok('GET', `${dbUrl}/_all_docs?include_docs=true&conflicts=true`);
  return all.rows.map((row) => normalise({ id: row.id, rev: row.value.rev, doc: row.doc }));
}

/**
 * Sorts `_conflicts` in a snapshot entry: CouchDB does not document their order and clients do
 * not depend on it, so comparisons between replicas should not either.
 */
function normalise(entry) {
  if (entry.doc && Array.isArray(entry.doc._conflicts)) entry.doc._conflicts = [...entry.doc._conflicts].sort();
  return entry;
}

module.exports.serverSnapshot = serverSnapshot;
module.exports.normalise = normalise;
