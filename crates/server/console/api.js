// The only module that talks to the server: fetch with the session cookie, JSON in and out,
// errors as `ApiError` carrying CouchDB's `{"error","reason"}` body.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.reason || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** Called on every 401, so the app can send the user to the sign-in page. */
let unauthorized = () => {};
export function onUnauthorized(fn) {
  unauthorized = fn;
}

/** A path segment for a database name (names may contain `/`, always encoded). */
export function dbPath(db) {
  return `/${encodeURIComponent(db)}`;
}

/** A document's path: `_design/` and `_local/` keep their slash, as CouchDB expects. */
export function docPath(db, id) {
  for (const prefix of ['_design/', '_local/']) {
    if (id.startsWith(prefix)) return `${dbPath(db)}/${prefix}${encodeURIComponent(id.slice(prefix.length))}`;
  }
  return `${dbPath(db)}/${encodeURIComponent(id)}`;
}

/** A query string from an object; values that are not strings are sent as JSON. */
export function qs(params = {}) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null) continue;
    const text = typeof v === 'string' && !['startkey', 'endkey', 'start_key', 'end_key', 'key'].includes(k) ? v : JSON.stringify(v);
    parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(text)}`);
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

/**
 * Sends a request. `body` is sent as JSON unless it is a Blob/File (sent as is, with
 * `contentType`); `text: true` returns the body as text instead of parsing it.
 */
export async function call(method, path, { body, query, headers = {}, contentType, text = false } = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers }, credentials: 'same-origin' };
  if (body !== undefined) {
    if (body instanceof Blob) {
      init.body = body;
      init.headers['Content-Type'] = contentType || body.type || 'application/octet-stream';
    } else {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
  }
  const response = await fetch(path + qs(query), init);
  const raw = await response.text();
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = JSON.parse(raw);
    } catch {
      parsed = { error: 'http_error', reason: raw.slice(0, 200) };
    }
    if (response.status === 401) unauthorized();
    throw new ApiError(response.status, parsed);
  }
  if (text) return raw;
  return raw ? JSON.parse(raw) : null;
}

export const get = (path, query, opts) => call('GET', path, { ...opts, query });
export const put = (path, body, query) => call('PUT', path, { body, query });
export const post = (path, body, query) => call('POST', path, { body, query });
export const del = (path, query) => call('DELETE', path, { query });

/** Whether the server has no admin configured: then everyone is an admin (admin party). */
export function adminParty(s) {
  return Boolean(s && s.userCtx && s.userCtx.name === null && s.userCtx.roles.includes('_admin'));
}
