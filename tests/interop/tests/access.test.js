'use strict';
// Per-document access (beyond CouchDB): two users live-syncing one `access=true` database with
// PouchDB each end up with exactly the documents whose `_access` names them, in both directions,
// and when one of them is taken off a document in the middle, their replica loses it (it becomes
// a deletion there) and gets it back when they are listed again. Skipped for pouchdb-server.

const test = require('node:test');
const { isDeepStrictEqual } = require('node:util');
const { before, after } = require('node:test');
const assert = require('node:assert/strict');
const { PouchDB, localDb, dbName, waitFor } = require('../lib/pouch');
const { startServer } = require('../lib/server');
const { request } = require('../lib/http');

const skip = (process.env.INTEROP_SERVER || 'outpost') !== 'outpost';
const ADMIN = { Authorization: `Basic ${Buffer.from('admin:secret').toString('base64')}` };

let server = null;
before(async () => {
  if (skip) return;
  server = await startServer({
    env: {
      OUTPOST_ADMIN_USER: 'admin',
      OUTPOST_ADMIN_PASSWORD: 'secret',
      OUTPOST_PASSWORD_ITERATIONS: '1000',
    },
  });
});
after(async () => {
  if (server) await server.destroy();
});

async function asAdmin(method, path, json) {
  const res = await request(method, `${server.url}${path}`, { json, headers: ADMIN });
  if (res.status < 200 || res.status > 299) {
    throw new Error(`${method} ${path} -> ${res.status} ${JSON.stringify(res.body)}`);
  }
  return res.body;
}

function remoteAs(db, name) {
  const url = new URL(`${server.url}/${db}`);
  url.username = name;
  url.password = `pw-${name}`;
  return new PouchDB(url.toString(), { skip_setup: true });
}

/** The live documents of a local database: id → body without `_rev`. */
async function contents(db) {
  const res = await db.allDocs({ include_docs: true });
  const out = {};
  for (const row of res.rows) {
    const { _rev, ...doc } = row.doc;
    out[row.id] = doc;
  }
  return out;
}

/** Waits until `db` holds exactly `expected` (id → body); fails with what it holds. */
async function holdsExactly(db, expected, what) {
  const got = await waitFor(async () => {
    const now = await contents(db);
    return isDeepStrictEqual(now, expected) ? now : null;
  }, { timeoutMs: 20_000 });
  assert.deepEqual(got ?? await contents(db), expected, what);
}

test('two users live-sync one access=true database: each holds exactly their documents, through a revocation', { skip }, async () => {
  await request('PUT', `${server.url}/_users`, { headers: ADMIN });
  for (const name of ['ana', 'ben']) {
    await asAdmin('PUT', `/_users/org.couchdb.user:${name}`, { name, type: 'user', roles: [], password: `pw-${name}` });
  }
  const db = dbName('access');
  await asAdmin('PUT', `/${db}?access=true`);
  await asAdmin('PUT', `/${db}/_security`, { admins: { names: [], roles: [] }, members: { names: ['ana', 'ben'], roles: [] } });
  assert.equal((await asAdmin('GET', `/${db}`)).props.access, true);

  const ana = localDb('ana');
  const ben = localDb('ben');
  const syncs = [
    ana.sync(remoteAs(db, 'ana'), { live: true, retry: true }),
    ben.sync(remoteAs(db, 'ben'), { live: true, retry: true }),
  ];
  const denied = [];
  for (const s of syncs) s.on('denied', (err) => denied.push(err));
  try {
    // Both directions: each writes locally; the other side sees only what names them.
    await ana.put({ _id: 'ana-1', _access: ['ana'], text: 'ana alone' });
    await ana.put({ _id: 'shared', _access: ['ana', 'ben'], text: 'for both' });
    await ben.put({ _id: 'ben-1', _access: ['ben'], text: 'ben alone' });
    await asAdmin('PUT', `/${db}/server-ana`, { _access: ['ana'], text: 'from the server' });
    const anaDocs = {
      'ana-1': { _id: 'ana-1', _access: ['ana'], text: 'ana alone' },
      'server-ana': { _id: 'server-ana', _access: ['ana'], text: 'from the server' },
      shared: { _id: 'shared', _access: ['ana', 'ben'], text: 'for both' },
    };
    await holdsExactly(ana, anaDocs, 'ana before');
    await holdsExactly(ben, {
      'ben-1': { _id: 'ben-1', _access: ['ben'], text: 'ben alone' },
      shared: { _id: 'shared', _access: ['ana', 'ben'], text: 'for both' },
    }, 'ben before');
    // Ben's edit of the shared document reaches ana.
    const shared = await ben.get('shared');
    await ben.put({ ...shared, text: 'edited by ben' });
    anaDocs.shared = { _id: 'shared', _access: ['ana', 'ben'], text: 'edited by ben' };
    await holdsExactly(ana, anaDocs, 'ana sees ben\'s edit');

    // Ana takes ben off: his replica no longer holds a readable version, and nothing of what
    // she writes afterwards reaches him.
    const current = await ana.get('shared');
    await ana.put({ ...current, _access: ['ana'], text: 'ana only now' });
    anaDocs.shared = { _id: 'shared', _access: ['ana'], text: 'ana only now' };
    await holdsExactly(ben, { 'ben-1': { _id: 'ben-1', _access: ['ben'], text: 'ben alone' } }, 'ben after the revocation');
    await assert.rejects(ben.get('shared'), (err) => err.status === 404);
    await ben.put({ _id: 'ben-2', _access: ['ben'], text: 'ben later' });
    await holdsExactly(ana, anaDocs, 'ana after the revocation');
    const again = await ana.get('shared');
    await ana.put({ ...again, text: 'still ana only' });
    anaDocs.shared = { _id: 'shared', _access: ['ana'], text: 'still ana only' };
    await holdsExactly(ana, anaDocs, 'ana edits alone');

    // Listed again: ben gets the current version back.
    const back = await ana.get('shared');
    await ana.put({ ...back, _access: ['ana', 'ben'], text: 'both again' });
    anaDocs.shared = { _id: 'shared', _access: ['ana', 'ben'], text: 'both again' };
    await holdsExactly(ben, {
      'ben-1': { _id: 'ben-1', _access: ['ben'], text: 'ben alone' },
      'ben-2': { _id: 'ben-2', _access: ['ben'], text: 'ben later' },
      shared: { _id: 'shared', _access: ['ana', 'ben'], text: 'both again' },
    }, 'ben after regaining access');
    await holdsExactly(ana, anaDocs, 'ana at the end');
    // The server holds everything, and refused nothing the clients sent.
    const all = await asAdmin('GET', `/${db}/_all_docs`);
    assert.deepEqual(all.rows.map((r) => r.id), ['ana-1', 'ben-1', 'ben-2', 'server-ana', 'shared']);
    assert.deepEqual(denied, []);
  } finally {
    for (const s of syncs) s.cancel();
  }
});
