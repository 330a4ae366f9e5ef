'use strict';
// PouchDB syncing with credentials against a server with accounts (Outpost with a server admin;
// skipped for pouchdb-server, whose accounts are configured differently): Basic credentials in
// the URL, a cookie session from `POST /_session`, a JWT bearer token; `couch_peruser`; and the
// `_users` privacy rules seen through PouchDB.

const crypto = require('node:crypto');
const test = require('node:test');
const { before, after } = require('node:test');
const assert = require('node:assert/strict');
const { PouchDB, localDb, dbName, snapshot } = require('../lib/pouch');
const { startServer } = require('../lib/server');
const { request } = require('../lib/http');

const skip = (process.env.INTEROP_SERVER || 'outpost') !== 'outpost';
const JWT_SECRET = 'interop jwt secret';
const ADMIN = { Authorization: `Basic ${Buffer.from('admin:secret').toString('base64')}` };

let server = null;
before(async () => {
  if (skip) return;
  server = await startServer({
    env: {
      OUTPOST_ADMIN_USER: 'admin',
      OUTPOST_ADMIN_PASSWORD: 'secret',
      OUTPOST_PASSWORD_ITERATIONS: '1000',
      OUTPOST_JWT_HS256_SECRET: JWT_SECRET,
      OUTPOST_COUCH_PERUSER: 'true',
    },
  });
});
after(async () => {
  if (server) await server.destroy();
});

/** A plain request as the server admin; throws unless 2xx. */
async function asAdmin(method, path, json) {
  const res = await request(method, `${server.url}${path}`, { json, headers: ADMIN });
  if (res.status < 200 || res.status > 299) {
    throw new Error(`${method} ${path} -> ${res.status} ${JSON.stringify(res.body)}`);
  }
  return res.body;
}

/** A user with a password, and a database whose only member is that user. */
async function userWithDb(name) {
  await request('PUT', `${server.url}/_users`, { headers: ADMIN });
  await asAdmin('PUT', `/_users/org.couchdb.user:${name}`, {
    name, type: 'user', roles: [], password: `pw-${name}`,
  });
  const db = dbName(name);
  await asAdmin('PUT', `/${db}`);
  await asAdmin('PUT', `/${db}/_security`, { admins: { names: [], roles: [] }, members: { names: [name], roles: [] } });
  return db;
}

/** A PouchDB handle whose every request carries `headers`. */
function withHeaders(url, headers) {
  return new PouchDB(url, {
    fetch: (u, opts = {}) => {
      for (const [k, v] of Object.entries(headers())) opts.headers.set(k, v);
      return PouchDB.fetch(u, opts);
    },
  });
}

async function syncAndCheck(remote, db) {
  const local = localDb('auth');
  await local.bulkDocs([{ _id: 'from-client', v: 1 }]);
  await asAdmin('PUT', `/${db}/from-server`, { v: 2 });
  const result = await local.sync(remote);
  assert.equal(result.push.docs_written, 1);
  assert.equal(result.pull.docs_written, 1);
  assert.deepEqual(await snapshot(local), await snapshot(remote));
  assert.equal((await asAdmin('GET', `/${db}/from-client`)).v, 1);
}

test('sync with Basic credentials in the URL; wrong ones are refused', { skip }, async () => {
  const db = await userWithDb('basic');
  const url = new URL(`${server.url}/${db}`);
  url.username = 'basic';
  url.password = 'pw-basic';
  await syncAndCheck(new PouchDB(url.toString()), db);
  url.password = 'wrong';
  await assert.rejects(new PouchDB(url.toString()).info(), (err) => err.status === 401);
  // Without credentials: 401, and the database is not readable.
  await assert.rejects(new PouchDB(`${server.url}/${db}`).allDocs(), (err) => err.status === 401);
});

test('sync with a cookie session from POST /_session', { skip }, async () => {
  const db = await userWithDb('cookie');
  const login = await request('POST', `${server.url}/_session`, { json: { name: 'cookie', password: 'pw-cookie' } });
  assert.equal(login.status, 200);
  assert.deepEqual(login.body, { ok: true, name: 'cookie', roles: [] });
  const setCookie = login.headers.get('set-cookie');
  assert.match(setCookie, /^AuthSession=[^;]+; Version=1; Path=\/; HttpOnly/);
  const cookie = setCookie.split(';')[0];
  const session = await request('GET', `${server.url}/_session`, { headers: { Cookie: cookie } });
  assert.equal(session.body.userCtx.name, 'cookie');
  assert.equal(session.body.info.authenticated, 'cookie');
  await syncAndCheck(withHeaders(`${server.url}/${db}`, () => ({ Cookie: cookie })), db);
});

function jwt(claims) {
  const b64 = (x) => Buffer.from(JSON.stringify(x)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = crypto.createHmac('sha256', JWT_SECRET).update(body).digest('base64url');
  return `${body}.${sig}`;
}

test('sync with a JWT bearer token; a forged one is refused', { skip }, async () => {
  const db = dbName('jwt');
  await asAdmin('PUT', `/${db}`);
  await asAdmin('PUT', `/${db}/_security`, { members: { names: [], roles: ['writers'] } });
  const token = jwt({ sub: 'carol', '_couchdb.roles': ['writers'], exp: Math.floor(Date.now() / 1000) + 600 });
  await syncAndCheck(withHeaders(`${server.url}/${db}`, () => ({ Authorization: `Bearer ${token}` })), db);
  const forged = token.slice(0, -4) + (token.endsWith('AAAA') ? 'BBBB' : 'AAAA');
  const remote = withHeaders(`${server.url}/${db}`, () => ({ Authorization: `Bearer ${forged}` }));
  await assert.rejects(remote.allDocs(), (err) => err.status === 401);
});

test('couch_peruser: a new user syncs with their private database, alone', { skip }, async () => {
  await request('PUT', `${server.url}/_users`, { headers: ADMIN });
  for (const name of ['dora', 'eve']) {
    await asAdmin('PUT', `/_users/org.couchdb.user:${name}`, { name, type: 'user', roles: [], password: `pw-${name}` });
  }
  const userdb = (name) => `userdb-${Buffer.from(name).toString('hex')}`;
  const url = (name, who) => {
    const u = new URL(`${server.url}/${userdb(name)}`);
    u.username = who;
    u.password = `pw-${who}`;
    return u.toString();
  };
  const local = localDb('peruser');
  await local.put({ _id: 'diary', text: 'private' });
  const push = await local.replicate.to(new PouchDB(url('dora', 'dora')));
  assert.equal(push.docs_written, 1);
  await assert.rejects(new PouchDB(url('dora', 'eve')).get('diary'), (err) => err.status === 403);
});

test('_users privacy: a user reads and changes only their own document', { skip }, async () => {
  await userWithDb('fay');
  await userWithDb('gus');
  const users = (who) => {
    const u = new URL(`${server.url}/_users`);
    u.username = who;
    u.password = `pw-${who}`;
    return new PouchDB(u.toString(), { skip_setup: true });
  };
  const own = await users('fay').get('org.couchdb.user:fay');
  assert.equal(own.password, undefined);
  assert.equal(own.password_scheme, 'pbkdf2');
  await assert.rejects(users('fay').get('org.couchdb.user:gus'), (err) => err.status === 403);
  await assert.rejects(users('fay').allDocs(), (err) => err.status === 403);
  // Changing roles is refused; changing the password works and the new one logs in.
  await assert.rejects(users('fay').put({ ...own, roles: ['boss'] }), (err) => err.status === 403);
  await users('fay').put({ ...own, password: 'pw-fay2' });
  const u = new URL(`${server.url}/_users`);
  u.username = 'fay';
  u.password = 'pw-fay2';
  assert.equal((await new PouchDB(u.toString(), { skip_setup: true }).get('org.couchdb.user:fay')).name, 'fay');
});
