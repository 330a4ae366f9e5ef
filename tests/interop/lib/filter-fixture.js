'use strict';
// The data set shared by the doc_ids and selector replication tests: 60 documents with fields
// that selectors can test (numbers, strings, nested objects, arrays, a field only some have).

const { ok } = require('./http');

const colours = ['red', 'green', 'blue'];

function docs() {
  return Array.from({ length: 60 }, (_, i) => ({
    _id: `item-${String(i).padStart(2, '0')}`,
    n: i,
    colour: colours[i % 3],
    owner: { name: i % 4 === 0 ? 'ann' : 'bob', tags: i % 5 === 0 ? ['vip', 'x'] : ['x'] },
    ...(i % 6 === 0 ? { archived: true } : {}),
  }));
}

/** Creates database `name` on the server with the 60 documents; returns its URL. */
async function serverWith(server, name) {
  const base = `${server.url}/${name}`;
  await ok('PUT', base);
  await ok('POST', `${base}/_bulk_docs`, { json: { docs: docs() } });
  return base;
}

/** The ids of the live documents of a PouchDB database, sorted. */
async function ids(db) {
  return (await db.allDocs()).rows.map((r) => r.id);
}

/** The sorted ids of the fixture documents that satisfy `predicate`. */
function expectedIds(predicate) {
  return docs().filter(predicate).map((d) => d._id).sort();
}

module.exports = { docs, serverWith, ids, expectedIds };
