// Replication jobs: `_replicator` documents with their state, progress and errors from
// `GET /_scheduler/docs` (refreshed while the page is open); start one by writing a
// `_replicator` document, stop one by deleting it.

import * as api from '../api.js';
import { h, mount, field, title, errorBox, toast, when } from '../ui.js';

const REFRESH_MS = 2000;

function progress(info) {
  if (!info || info.docs_written === undefined) return '—';
  const parts = [`${info.docs_written} written`, `${info.docs_read} read`];
  if (info.doc_write_failures) parts.push(`${info.doc_write_failures} refused`);
  if (info.changes_pending !== null && info.changes_pending !== undefined) parts.push(`${info.changes_pending} pending`);
  return parts.join(', ');
}

export async function render(ctx) {
  const source = h('input', { name: 'source', required: true, autocomplete: 'off' });
  const target = h('input', { name: 'target', required: true, autocomplete: 'off' });
  const id = h('input', { name: 'id', autocomplete: 'off' });
  const continuous = h('input', { type: 'checkbox', name: 'continuous' });
  const createTarget = h('input', { type: 'checkbox', name: 'create_target' });
  const status = h('div', { 'aria-live': 'polite' });
  const table = h('div', { 'aria-live': 'polite', 'aria-busy': 'false' });

  async function start(e) {
    e.preventDefault();
    mount(status);
    const doc = { source: source.value, target: target.value };
    if (continuous.checked) doc.continuous = true;
    if (createTarget.checked) doc.create_target = true;
    try {
      const res = id.value ? await api.put(api.docPath('_replicator', id.value), doc) : await api.post('/_replicator', doc);
      toast(`Replication ${res.id} started`);
      source.value = '';
      target.value = '';
      id.value = '';
      await refresh();
    } catch (err) {
      mount(status, errorBox(err));
    }
  }

  async function stop(docId) {
    if (!window.confirm(`Stop the replication ${docId}? Its _replicator document is deleted.`)) return;
    try {
      const doc = await api.get(api.docPath('_replicator', docId));
      await api.del(api.docPath('_replicator', docId), { rev: doc._rev });
      toast(`Replication ${docId} stopped`);
      await refresh();
    } catch (err) {
      toast(err.message, 'bad');
    }
  }

  async function refresh() {
    let docs;
    try {
      docs = (await api.get('/_scheduler/docs')).docs;
    } catch (err) {
      mount(table, errorBox(err));
      return;
    }
    if (docs.length === 0) {
      mount(table, h('p', {}, 'No replication jobs.'));
      return;
    }
    mount(table, h('div', { class: 'scroll' }, h('table', {},
      h('caption', { class: 'sr-only' }, 'Replication jobs'),
      h('thead', {}, h('tr', {}, ['Job', 'Source', 'Target', 'State', 'Progress', 'Last sync', 'Error'].map((c) => h('th', { scope: 'col' }, c)), h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
      h('tbody', {}, docs.map((d) => h('tr', { 'data-job': d.doc_id },
        h('th', { scope: 'row' }, d.doc_id),
        h('td', { class: 'wrap' }, d.source),
        h('td', { class: 'wrap' }, d.target),
        h('td', {}, h('span', { class: `tag ${d.state}` }, d.state), d.error_count ? ` (${d.error_count} failures)` : ''),
        h('td', {}, progress(d.info)),
        h('td', {}, when(d.info && d.info.last_sync)),
        h('td', { class: 'wrap' }, (d.info && d.info.error) || ''),
        h('td', {}, h('button', { type: 'button', class: 'danger', onclick: () => stop(d.doc_id), 'aria-label': `Stop ${d.doc_id}` }, 'Stop'))))))));
  }

  mount(ctx.main,
    title('Replication'),
    h('section', { 'aria-labelledby': 'new-h' },
      h('h2', { id: 'new-h' }, 'Start a replication'),
      h('form', { class: 'card', onsubmit: start },
        field('Source', source, 'A database of this server by name, or a URL such as https://user:pass@host/db'),
        field('Target', target, 'The same forms as the source'),
        field('Job name (optional)', id, 'The _replicator document id; chosen by the server when empty'),
        h('div', { class: 'checks' },
          h('label', {}, continuous, ' Continuous'),
          h('label', {}, createTarget, ' Create the target')),
        h('button', { type: 'submit' }, 'Start'),
        status)),
    h('section', { 'aria-labelledby': 'jobs-h' },
      h('h2', { id: 'jobs-h' }, 'Jobs'),
      table));
  await refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  ctx.onLeave(() => clearInterval(timer));
}
