// One document: its JSON to view and edit, its attachments, its revision tree with
// `_conflicts`, and its history from the event log (`_events?doc_id=`).

import * as api from '../api.js';
import { h, mount, field, title, dbTabs, errorBox, bytes, when, toast, pretty, seqNumber } from '../ui.js';

/** Fields the editor does not show: they describe the document rather than belong to it. */
const META = ['_revs_info', '_conflicts', '_deleted_conflicts', '_attachments'];

/** `{rev: {rev, parent, children}}` from the `_revisions` paths of every leaf. */
export function buildTree(leaves) {
  const nodes = new Map();
  const node = (rev) => {
    if (!nodes.has(rev)) nodes.set(rev, { rev, parent: null, children: [] });
    return nodes.get(rev);
  };
  for (const leaf of leaves) {
    const doc = leaf.ok;
    const path = doc._revisions
      ? doc._revisions.ids.map((id, i) => `${doc._revisions.start - i}-${id}`)
      : [doc._rev];
    for (let i = 0; i < path.length; i += 1) {
      const n = node(path[i]);
      if (i === 0) {
        n.leaf = true;
        n.deleted = Boolean(doc._deleted);
      }
      if (i + 1 < path.length && n.parent === null) {
        const parent = node(path[i + 1]);
        n.parent = parent.rev;
        if (!parent.children.includes(n.rev)) parent.children.push(n.rev);
      }
    }
  }
  const roots = [...nodes.values()].filter((n) => n.parent === null);
  return { nodes, roots };
}

function treeView(tree, winner) {
  const item = (n) => {
    const kind = n.rev === winner ? 'winner' : n.leaf ? (n.deleted ? 'deleted' : 'conflict') : null;
    return h('li', {},
      h('span', { class: `rev ${kind || ''}` }, n.rev),
      kind ? h('span', { class: `tag ${kind}` }, kind) : null,
      n.children.length ? h('ul', {}, n.children.sort().map((c) => item(tree.nodes.get(c)))) : null);
  };
  return h('ul', { class: 'revtree', 'aria-label': 'Revision tree' }, tree.roots.map(item));
}

function timeline(events) {
  if (events.length === 0) return h('p', {}, 'No events.');
  return h('ol', { class: 'timeline' }, events.map((e) => h('li', {},
    h('span', { class: `tag ${e.type}` }, e.type),
    ' ',
    h('span', { class: 'mono' }, e.rev),
    ' ',
    h('span', { class: 'meta' },
      `seq ${seqNumber(e.seq)}, ${e.origin}, ${when(e.at)}`,
      e.parent ? `, parent ${e.parent}` : '',
      e.policy ? `, policy ${e.policy}` : '',
      e.superseded ? `, superseded ${e.superseded.join(' ')}` : ''))));
}

function editorFor(doc) {
  const shown = {};
  for (const [k, v] of Object.entries(doc)) if (!META.includes(k)) shown[k] = v;
  return h('textarea', { class: 'json', rows: 18, spellcheck: 'false', autocapitalize: 'off', value: pretty(shown) });
}

export async function render(ctx) {
  const [db, id] = ctx.params;
  const enc = encodeURIComponent(db);
  const path = api.docPath(db, id);
  let doc;
  try {
    doc = await api.get(path, { revs_info: 'true', conflicts: 'true', deleted_conflicts: 'true' });
  } catch (err) {
    if (err.status !== 404) throw err;
    mount(ctx.main, title(id), dbTabs(db, 'docs'), errorBox(err), historySection(db, id, await events(db, id)));
    return;
  }
  const [leaves, history] = await Promise.all([
    api.get(path, { open_revs: 'all', revs: 'true' }),
    events(db, id),
  ]);
  const tree = buildTree(leaves.filter((l) => l.ok));
  const editor = editorFor(doc);
  editor.setAttribute('aria-label', `JSON of ${id}`);
  const status = h('div', { 'aria-live': 'polite' });

  async function save(e) {
    e.preventDefault();
    mount(status);
    let body;
    try {
      body = JSON.parse(editor.value);
    } catch (err) {
      mount(status, errorBox(`Not valid JSON: ${err.message}`));
      return;
    }
    body._id = id;
    body._rev = doc._rev;
    if (doc._attachments && !('_attachments' in body)) body._attachments = doc._attachments;
    try {
      const res = await api.put(path, body);
      toast(`Saved ${id} as ${res.rev}`);
      ctx.navigate(location.hash);
    } catch (err) {
      mount(status, errorBox(err));
    }
  }

  async function remove() {
    if (!window.confirm(`Delete the document ${id}?`)) return;
    try {
      await api.del(path, { rev: doc._rev });
      toast(`Deleted ${id}`);
      ctx.navigate(`#/db/${enc}`);
    } catch (err) {
      mount(status, errorBox(err));
    }
  }

  const file = h('input', { type: 'file', name: 'attachment' });
  const attStatus = h('div', { 'aria-live': 'polite' });
  async function upload(e) {
    e.preventDefault();
    const f = file.files[0];
    if (!f) return;
    try {
      await api.call('PUT', `${path}/${encodeURIComponent(f.name)}`, { body: f, query: { rev: doc._rev }, contentType: f.type || 'application/octet-stream' });
      toast(`Attached ${f.name}`);
      ctx.navigate(location.hash);
    } catch (err) {
      mount(attStatus, errorBox(err));
    }
  }
  async function detach(name) {
    if (!window.confirm(`Remove the attachment ${name}?`)) return;
    try {
      await api.del(`${path}/${encodeURIComponent(name)}`, { rev: doc._rev });
      toast(`Removed ${name}`);
      ctx.navigate(location.hash);
    } catch (err) {
      mount(attStatus, errorBox(err));
    }
  }
  const atts = Object.entries(doc._attachments || {});
  const conflicts = doc._conflicts || [];

  mount(ctx.main,
    title(id),
    dbTabs(db, 'docs'),
    h('p', { class: 'meta' }, 'Revision ', h('span', { class: 'mono' }, doc._rev)),
    conflicts.length
      ? h('p', { class: 'notice' },
        `This document has ${conflicts.length} conflicting revision${conflicts.length > 1 ? 's' : ''}: `,
        h('span', { class: 'mono' }, conflicts.join(' ')), '. ',
        h('a', { href: `#/db/${enc}/conflicts/${encodeURIComponent(id)}` }, 'Compare and resolve'))
      : null,
    h('section', { 'aria-labelledby': 'json-h' },
      h('h2', { id: 'json-h' }, 'JSON'),
      h('form', { onsubmit: save }, editor,
        h('div', { class: 'buttons' },
          h('button', { type: 'submit' }, 'Save'),
          h('button', { type: 'button', class: 'danger', onclick: remove }, 'Delete document')),
        status)),
    h('section', { 'aria-labelledby': 'att-h' },
      h('h2', { id: 'att-h' }, 'Attachments'),
      atts.length === 0 ? h('p', {}, 'None.') : h('ul', { class: 'plain' }, atts.map(([name, a]) => h('li', {},
        h('a', { href: `${path}/${encodeURIComponent(name)}`, download: name }, name),
        ` ${a.content_type}, ${bytes(a.length)} `,
        h('button', { type: 'button', class: 'link danger', onclick: () => detach(name), 'aria-label': `Remove ${name}` }, 'Remove')))),
      h('form', { class: 'inline', onsubmit: upload }, field('Add a file', file), h('button', { type: 'submit' }, 'Upload'), attStatus)),
    h('section', { 'aria-labelledby': 'rev-h' },
      h('h2', { id: 'rev-h' }, 'Revision tree'),
      treeView(tree, doc._rev),
      doc._deleted_conflicts && doc._deleted_conflicts.length
        ? h('p', { class: 'meta' }, 'Deleted conflicts: ', h('span', { class: 'mono' }, doc._deleted_conflicts.join(' ')))
        : null),
    historySection(db, id, history));
}

async function events(db, id) {
  const res = await api.get(`${api.dbPath(db)}/_events`, { doc_id: id });
  return res.results;
}

function historySection(db, id, history) {
  return h('section', { 'aria-labelledby': 'hist-h' },
    h('h2', { id: 'hist-h' }, 'History'),
    h('p', { class: 'meta' }, `Every revision the database accepted for ${id}, oldest first, from its event log.`),
    timeline(history));
}

/** A new document: `PUT` when the JSON names an `_id`, `POST` (a server-chosen id) otherwise. */
export async function renderNew(ctx) {
  const [db] = ctx.params;
  const enc = encodeURIComponent(db);
  const editor = h('textarea', { class: 'json', rows: 14, spellcheck: 'false', autocapitalize: 'off', 'aria-label': 'JSON of the new document', value: pretty({ _id: '' }) });
  const status = h('div', { 'aria-live': 'polite' });
  async function create(e) {
    e.preventDefault();
    mount(status);
    let body;
    try {
      body = JSON.parse(editor.value);
    } catch (err) {
      mount(status, errorBox(`Not valid JSON: ${err.message}`));
      return;
    }
    if (body._id === '') delete body._id;
    try {
      const res = body._id ? await api.put(api.docPath(db, body._id), body) : await api.post(api.dbPath(db), body);
      toast(`Created ${res.id}`);
      ctx.navigate(`#/db/${enc}/doc/${encodeURIComponent(res.id)}`);
    } catch (err) {
      mount(status, errorBox(err));
    }
  }
  mount(ctx.main,
    title('New document'),
    dbTabs(db, 'docs'),
    h('form', { onsubmit: create },
      h('p', { class: 'meta' }, 'Leave _id empty to let the server choose one.'),
      editor,
      h('div', { class: 'buttons' }, h('button', { type: 'submit' }, 'Create document')),
      status));
}
