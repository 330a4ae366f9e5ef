'use strict';
// Push: a local PouchDB replicates to the server (`db.replicate.to`). The server must accept the
// client's revisions as they are (`_bulk_docs` with `new_edits: false`, CouchDB replication
// protocol, docs.couchdb.org/en/stable/replication/protocol.html) and serve them back unchanged.

const test = require('node:test');
const assert = require('node:assert/strict');
const { localDb, remoteDb, useServer, dbName, snapshot } = require('../lib/pouch');
const { ok, docPath } = require('../lib/http');

const ctx = useServer();

function sampleDocs(n) {
  const docs = [];
  for (let i = 0; i < n; i++) {
    docs.push({
      _id: `doc-${String(i).padStart(3, '0')}`,
      n: i,
      name: `document ${i}`,
      tags: ['a', i % 2 ? 'odd' : 'even'],
      nested: { deep: { value: i * 1.5, flag: i % 3 === 0, nothing: null } },
    });
  }
  return docs;
}

test('push creates the database and writes every document with the client revisions', async () => {
  const local = localDb('push');
  await local.bulkDocs(sampleDocs(50));
  // A second revision for some documents, so the server receives a revision history longer than one.
  for (let i = 0; i < 50; i += 5) {
    const doc = await local.get(`doc-${String(i).padStart(3, '0')}`);
    doc.edited = true;
    await local.put(doc);
  }
  const name = dbName('push');
  const remote = remoteDb(ctx.server, name);

  const result = await local.replicate.to(remote);
  assert.equal(result.ok, true);
  assert.equal(result.docs_written, 50);
  assert.deepEqual(result.errors, []);

  const base = `${ctx.server.url}/${name}`;
  const info = await ok('GET', `${base}/`);
  assert.equal(info.doc_count, 50);

  // What the server serves over plain HTTP is exactly what the client holds.
  const all = await ok('GET', `${base}/_all_docs?include_docs=true`);
  const expected = await snapshot(local);
  assert.deepEqual(
    all.rows.map((r) => ({ id: r.id, rev: r.value.rev, doc: r.doc })),
    expected,
  );

  // Edited documents keep their full history on the server.
  const edited = await ok('GET', `${base}/${docPath('doc-005')}?revs=true`);
  const localEdited = await local.get('doc-005', { revs: true });
  assert.equal(edited._rev, localEdited._rev);
  assert.match(edited._rev, /^2-/);
  assert.deepEqual(edited._revisions, localEdited._revisions);
});

test('a second push of an unchanged database writes nothing', async () => {
  const local = localDb('push');
  await local.bulkDocs(sampleDocs(10));
  const remote = remoteDb(ctx.server, dbName('push'));
  assert.equal((await local.replicate.to(remote)).docs_written, 10);
  const again = await local.replicate.to(remote);
  assert.equal(again.docs_written, 0);
  assert.equal(again.docs_read, 0);
});

test('pushing new revisions of already pushed documents updates them on the server', async () => {
  const local = localDb('push');
  await local.bulkDocs(sampleDocs(10));
  const name = dbName('push');
  const remote = remoteDb(ctx.server, name);
  await local.replicate.to(remote);

  const doc = await local.get('doc-003');
  doc.name = 'renamed';
  const { rev } = await local.put(doc);
  const result = await local.replicate.to(remote);
  assert.equal(result.docs_written, 1);

  const served = await ok('GET', `${ctx.server.url}/${name}/doc-003?conflicts=true`);
  assert.equal(served._rev, rev);
  assert.equal(served.name, 'renamed');
  assert.equal(served._conflicts, undefined, 'a linear edit must not create a conflict');
});
