'use strict';
// CouchDB's own tools and client libraries, unmodified, against the server: nano (the
// Apache CouchDB project's Node.js client), couchbackup/couchrestore (Cloudant's backup tools)
// and couchimport (CSV/TSV import through `_bulk_docs`). Each runs the way its users run it.

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const { useServer, dbName } = require('../lib/pouch');
const { ok } = require('../lib/http');

const ctx = useServer();
const bin = (name) => path.join(__dirname, '..', 'node_modules', '.bin', name);

/// Runs a command with `input` on stdin; resolves with its stdout, rejects with its stderr.
function run(command, args, { input = '', env = {} } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(out);
      else reject(new Error(`${command} ${args.join(' ')} exited ${code}: ${err}`));
    });
    child.stdin.end(input);
  });
}

test('nano: databases, documents, bulk writes, attachments, changes and conflicts', async () => {
  const nano = require('nano')(ctx.server.url);
  const name = dbName('nano');
  await nano.db.create(name);
  const db = nano.use(name);
  assert.ok((await nano.db.list()).includes(name));

  const created = await db.insert({ kind: 'order', n: 1.10, big: 12345678901234567890 }, 'order-1');
  assert.equal(created.ok, true);
  const read = await db.get('order-1');
  assert.equal(read.kind, 'order');

  const bulk = await db.bulk({ docs: [{ _id: 'a', n: 1 }, { _id: 'b', n: 2 }, { _id: 'c', n: 3 }] });
  assert.deepEqual(bulk.map((r) => r.ok), [true, true, true]);
  const listed = await db.list({ include_docs: true, startkey: 'a', endkey: 'b' });
  assert.deepEqual(listed.rows.map((r) => r.doc.n), [1, 2]);
  const fetched = await db.fetch({ keys: ['c', 'missing'] });
  assert.equal(fetched.rows[0].doc.n, 3);
  assert.equal(fetched.rows[1].error, 'not_found');

  const att = await db.attachment.insert('a', 'note.txt', Buffer.from('hello'), 'text/plain',
    { rev: bulk[0].rev });
  const bytes = await db.attachment.get('a', 'note.txt');
  assert.equal(bytes.toString(), 'hello');
  const a = await db.get('a');
  assert.equal(a._rev, att.rev);
  assert.equal(a._attachments['note.txt'].length, 5);

  const changes = await db.changes({ since: 0, include_docs: true });
  assert.deepEqual(changes.results.map((r) => r.id).sort(), ['a', 'b', 'c', 'order-1']);

  // A stale write is a 409 that nano reports as such.
  await assert.rejects(db.insert({ _id: 'b', _rev: bulk[1].rev.replace(/^1-/, '1-0'), n: 9 }),
    (err) => err.statusCode === 409);
  // A conflict made by replication shows in `_conflicts`.
  await db.bulk({ docs: [{ _id: 'b', _rev: '1-ffffffffffffffffffffffffffffffff', n: 20 }], new_edits: false });
  const b = await db.get('b', { conflicts: true });
  assert.equal(b._conflicts.length, 1);

  const info = await db.info();
  assert.equal(info.doc_count, 4);
  await nano.db.destroy(name);
  assert.ok(!(await nano.db.list()).includes(name));
});

test('couchbackup and couchrestore: a backup restores to an identical database', async () => {
  const source = dbName('backup-src');
  const target = dbName('backup-dst');
  await ok('PUT', `${ctx.server.url}/${source}`);
  await ok('PUT', `${ctx.server.url}/${target}`);
  const docs = [];
  for (let i = 0; i < 1200; i++) {
    docs.push({ _id: `doc-${String(i).padStart(4, '0')}`, i, price: i / 100, tags: ['x', `t${i % 7}`] });
  }
  await ok('POST', `${ctx.server.url}/${source}/_bulk_docs`, { json: { docs } });
  // A deleted document and a design document travel too.
  const gone = await ok('PUT', `${ctx.server.url}/${source}/gone`, { json: { x: 1 } });
  await ok('DELETE', `${ctx.server.url}/${source}/gone?rev=${gone.rev}`);
  await ok('PUT', `${ctx.server.url}/${source}/_design/app`, { json: { views: {} } });
  // Binary attachments (couchbackup's `--attachments`, which it calls experimental).
  const photo = Buffer.alloc(70_000, 0);
  for (let i = 0; i < photo.length; i++) photo[i] = (i * 31) % 256;
  const first = await ok('GET', `${ctx.server.url}/${source}/doc-0001`);
  await ok('PUT', `${ctx.server.url}/${source}/doc-0001/photo.bin?rev=${first._rev}`,
    { raw: photo, contentType: 'application/octet-stream' });

  const backup = await run(bin('couchbackup'),
    ['--url', ctx.server.url, '--db', source, '--mode', 'full', '--attachments']);
  assert.ok(backup.length > 0, 'the backup is not empty');
  await run(bin('couchrestore'), ['--url', ctx.server.url, '--db', target, '--attachments'],
    { input: backup });

  const all = async (db) => (await ok('GET', `${ctx.server.url}/${db}/_all_docs?include_docs=true&attachments=true`))
    .rows.map((r) => {
      const { _rev, ...doc } = r.doc;
      // `revpos` is the generation that added the attachment, which a restore renumbers.
      for (const att of Object.values(doc._attachments || {})) delete att.revpos;
      return doc;
    });
  const restored = await all(target);
  assert.equal(restored.length, 1201);
  assert.deepEqual(restored, await all(source));
  const copy = restored.find((d) => d._id === 'doc-0001');
  assert.deepEqual(Buffer.from(copy._attachments['photo.bin'].data, 'base64'), photo);
});

test('couchimport: a CSV file becomes one document per row', async () => {
  const name = dbName('import');
  await ok('PUT', `${ctx.server.url}/${name}`);
  const rows = ['id,city,population'];
  for (let i = 0; i < 700; i++) rows.push(`${i},City ${i},${1000 + i}`);
  await run(bin('couchimport'), [], {
    input: `${rows.join('\n')}\n`,
    env: { COUCH_URL: ctx.server.url, COUCH_DATABASE: name, COUCH_DELIMITER: ',' },
  });
  const info = await ok('GET', `${ctx.server.url}/${name}`);
  assert.equal(info.doc_count, 700);
  const some = await ok('GET', `${ctx.server.url}/${name}/_all_docs?include_docs=true&limit=700`);
  const cities = some.rows.map((r) => r.doc.city).sort();
  assert.equal(cities[0], 'City 0');
  assert.ok(some.rows.every((r) => typeof r.doc.population === 'string' || typeof r.doc.population === 'number'));
});
