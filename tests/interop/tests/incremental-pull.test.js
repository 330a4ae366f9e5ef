'use strict';
// Incremental pull: PouchDB stores a checkpoint (`_local/<replication id>` with `last_seq`) on both
// sides after each batch, and a later replication between the same databases resumes from it
// (docs.couchdb.org/en/stable/replication/protocol.html, "Find Common Ancestry"). The replication
// id includes the server's `uuid` from `GET /`, so the uuid must survive a restart or every
// checkpoint is lost. The second pull must therefore ask `_changes` for what came after the
// checkpoint and receive only the new documents.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName } = require('../lib/pouch');
const { ok } = require('../lib/http');

const ctx = useServer();

function changesRequests(remote) {
  return remote.requests.filter((r) => new URL(r.url).pathname.endsWith('/_changes'));
}

function batch(prefix, from, to) {
  const docs = [];
  for (let i = from; i < to; i++) docs.push({ _id: `${prefix}${String(i).padStart(4, '0')}`, i });
  return docs;
}

test('a second pull resumes from the checkpoint and transfers only the new documents', async () => {
  const name = dbName('incr');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  await ok('POST', `${base}/_bulk_docs`, { json: { docs: batch('old', 0, 250) } });

  const local = localDb('incr');
  const first = remoteDb(ctx.server, name, { record: true });
  const r1 = await local.replicate.from(first);
  assert.equal(r1.docs_written, 250);

  // The checkpoint PouchDB wrote on the server is a _local document holding the last seq it read.
  const checkpointPut = first.requests.find((r) => r.method === 'PUT' && r.url.includes('/_local/'));
  assert.ok(checkpointPut, 'PouchDB wrote a checkpoint to the server');
  assert.ok(checkpointPut.status >= 200 && checkpointPut.status < 300, `checkpoint PUT answered ${checkpointPut.status}`);
  const checkpointUrl = checkpointPut.url.split('?')[0];
  const checkpoint = await ok('GET', checkpointUrl);
  assert.match(checkpoint._rev, /^0-\d+$/, '_local documents have revisions 0-N');
  assert.equal(String(checkpoint.last_seq), String(r1.last_seq));

  // A restart must keep the server uuid (and so the replication id and its checkpoints).
  const uuidBefore = (await ok('GET', `${ctx.server.url}/`)).uuid;
  await ctx.server.restart();
  assert.equal((await ok('GET', `${ctx.server.url}/`)).uuid, uuidBefore, 'server uuid is stable across restarts');

  await ok('POST', `${base}/_bulk_docs`, { json: { docs: batch('new', 0, 7) } });

  const second = remoteDb(ctx.server, name, { record: true });
  const r2 = await local.replicate.from(second);
  assert.equal(r2.docs_written, 7);
  assert.equal(r2.docs_read, 7);

  const changes = changesRequests(second);
  assert.ok(changes.length >= 1);
  const since = new URL(changes[0].url).searchParams.get('since');
  assert.equal(since, String(checkpoint.last_seq), 'the second pull starts at the checkpoint');
  const rows = changes.flatMap((c) => (c.body ? c.body.results : []));
  assert.deepEqual(
    rows.map((row) => row.id).sort(),
    batch('new', 0, 7).map((d) => d._id),
    'only the new documents are listed by _changes after the checkpoint',
  );

  const info = await local.info();
  assert.equal(info.doc_count, 257);
});

test('a pull with nothing new reads no documents and keeps the checkpoint', async () => {
  const name = dbName('incr');
  const base = `${ctx.server.url}/${name}`;
  await ok('PUT', base);
  await ok('POST', `${base}/_bulk_docs`, { json: { docs: batch('d', 0, 30) } });
  const local = localDb('incr');
  const r1 = await local.replicate.from(remoteDb(ctx.server, name));
  const second = remoteDb(ctx.server, name, { record: true });
  const r2 = await local.replicate.from(second);
  assert.equal(r2.docs_read, 0);
  assert.equal(r2.docs_written, 0);
  const since = new URL(changesRequests(second)[0].url).searchParams.get('since');
  assert.equal(since, String(r1.last_seq));
});
