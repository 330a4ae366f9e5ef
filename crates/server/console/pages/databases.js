// The databases: counts, sizes, policy and retention from `GET /_dbs_info`; create and delete.

import * as api from '../api.js';
import { h, mount, field, title, errorBox, bytes, toast } from '../ui.js';

function retentionText(r) {
  if (!r) return 'keep all';
  const parts = [];
  if (r.max_events_per_doc) parts.push(`${r.max_events_per_doc} events/doc`);
  if (r.max_age_seconds) parts.push(`${r.max_age_seconds} s`);
  return parts.join(', ');
}

export async function render(ctx) {
  const list = await api.get('/_dbs_info');
  const name = h('input', { name: 'db', required: true, autocomplete: 'off', pattern: '^[a-z][a-z0-9_$()+/\\-]*$' });
  const status = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'inline', onsubmit: create },
    field('New database', name, 'Lowercase letters, digits and _$()+-/, starting with a letter'),
    h('button', { type: 'submit' }, 'Create'),
    status);

  async function create(e) {
    e.preventDefault();
    mount(status);
    try {
      await api.put(api.dbPath(name.value));
      toast(`Database ${name.value} created`);
      ctx.navigate(`#/db/${encodeURIComponent(name.value)}`);
    } catch (err) {
      mount(status, errorBox(err));
    }
  }

  async function remove(db) {
    if (!window.confirm(`Delete the database ${db} and every document in it? This cannot be undone.`)) return;
    try {
      await api.del(api.dbPath(db));
      toast(`Database ${db} deleted`);
      ctx.navigate('#/');
    } catch (err) {
      toast(err.message, 'bad');
    }
  }

  const rows = list.map((entry) => {
    const info = entry.info;
    if (!info) return h('tr', {}, h('th', { scope: 'row' }, entry.key), h('td', { colspan: 6 }, entry.error));
    const o = info.outpost || {};
    const enc = encodeURIComponent(entry.key);
    return h('tr', {},
      h('th', { scope: 'row' }, h('a', { href: `#/db/${enc}` }, entry.key)),
      h('td', { class: 'num' }, info.doc_count),
      h('td', { class: 'num' }, info.doc_del_count),
      h('td', { class: 'num' }, bytes(info.sizes && info.sizes.file)),
      h('td', {}, o.conflict_policy || '—', o.lww_field ? ` (${o.lww_field})` : ''),
      h('td', {}, retentionText(o.retention)),
      h('td', { class: 'actions' },
        h('a', { href: `#/db/${enc}/settings`, 'aria-label': `Settings of ${entry.key}` }, 'Settings'),
        ' ',
        h('button', { type: 'button', class: 'danger', onclick: () => remove(entry.key), 'aria-label': `Delete ${entry.key}` }, 'Delete')));
  });

  mount(ctx.main,
    title('Databases'),
    form,
    list.length === 0
      ? h('p', {}, 'No databases yet.')
      : h('div', { class: 'scroll' }, h('table', {},
        h('caption', { class: 'sr-only' }, 'Databases with their counts, sizes and settings'),
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col' }, 'Name'),
          h('th', { scope: 'col', class: 'num' }, 'Documents'),
          h('th', { scope: 'col', class: 'num' }, 'Deleted'),
          h('th', { scope: 'col', class: 'num' }, 'Size'),
          h('th', { scope: 'col' }, 'Conflict policy'),
          h('th', { scope: 'col' }, 'Retention'),
          h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
        h('tbody', {}, rows))));
}
