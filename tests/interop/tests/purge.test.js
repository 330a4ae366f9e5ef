'use strict';
// `_purge` as PouchDB sees it: a purged document is gone for a client that pulls afterwards, a
// purged conflict branch is not pulled, and, purges not being replicated (as in CouchDB), a
// client that still holds the purged revisions sends them back. pouchdb-server, the reference
// server of this suite, has no `_purge`, so the file runs against Outpost only.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName } = require('../lib/pouch');
const { ok, request } = require('../lib/http');

const ctx = useServer();
const skip = (process.env.INTEROP_SERVER || 'outpost') !== 'outpost';

test('a purged document is never pulled, and a device holding it pushes it back', { skip }, async () => {
  const name = dbName('purge');
  const base = `${ctx.server.url}/${name}`;
  const first = localDb('purge');
  await first.bulkDocs([{ _id: 'secret', v: 1 }, { _id: 'kept', v: 2 }]);
  const remote = remoteDb(ctx.server, name);
  await first.replicate.to(remote);
  const { _rev: rev } = await first.get('secret');
  // Another device pulled the document before the purge.
  const device = localDb('purge');
  await device.replicate.from(remote);

  const purged = await ok('POST', `${base}/_purge`, { json: { secret: [rev] } });
  assert.deepEqual(purged, { purge_seq: null, purged: { secret: [rev] } });
  assert.equal((await request('GET', `${base}/secret`)).status, 404);

  const fresh = localDb('purge');
  const pulled = await fresh.replicate.from(remote);
  assert.equal(pulled.docs_written, 1);
  assert.deepEqual((await fresh.allDocs()).rows.map((r) => r.id), ['kept']);

  // Not replicated: the device still has the revision, and its first push brings it back
  // (a client whose checkpoint is past the revision would not send it again).
  await device.replicate.to(remote);
  const back = await ok('GET', `${base}/secret`);
  assert.equal(back._rev, rev);
});

test('a purged conflict branch is not pulled; the winner left is', { skip }, async () => {
  const name = dbName('purge');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  await ok('POST', `${base}/_bulk_docs`, {
    json: {
      new_edits: false,
      docs: [
        { _id: 'd', _rev: '2-bbbb', v: 'b', _revisions: { start: 2, ids: ['bbbb', 'aaaa'] } },
        { _id: 'd', _rev: '2-cccc', v: 'c', _revisions: { start: 2, ids: ['cccc', 'aaaa'] } },
      ],
    },
  });
  await ok('POST', `${base}/_purge`, { json: { d: ['2-cccc'] } });

  const local = localDb('purge');
  await local.replicate.from(remoteDb(ctx.server, name));
  const doc = await local.get('d', { conflicts: true, revs_info: true });
  assert.equal(doc._rev, '2-bbbb');
  assert.equal(doc.v, 'b');
  assert.equal(doc._conflicts, undefined);
  assert.deepEqual(doc._revs_info.map((r) => r.rev), ['2-bbbb', '1-aaaa']);
});
