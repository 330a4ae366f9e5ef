// One database's documents, a page at a time by id (`_all_docs` with `startkey`), with a
// search by id prefix.

import * as api from '../api.js';
import { h, mount, field, title, dbTabs, bytes, seqNumber } from '../ui.js';

const PAGE = 25;

export async function render(ctx) {
  const [db] = ctx.params;
  const enc = encodeURIComponent(db);
  const prefix = ctx.query.get('q') || '';
  const start = ctx.query.get('start');
  const query = { limit: PAGE + 1 };
  if (start !== null) query.startkey = start;
  else if (prefix) query.startkey = prefix;
  if (prefix) query.endkey = `${prefix}\ufff0`;
  const [info, page] = await Promise.all([
    api.get(api.dbPath(db)),
    api.get(`${api.dbPath(db)}/_all_docs`, query),
  ]);
  const rows = page.rows.slice(0, PAGE);
  const next = page.rows.length > PAGE ? page.rows[PAGE].id : null;

  const search = h('input', { type: 'search', name: 'q', value: prefix, autocomplete: 'off' });
  const form = h('form', {
    class: 'inline', role: 'search',
    onsubmit: (e) => {
      e.preventDefault();
      ctx.navigate(`#/db/${enc}${search.value ? `?q=${encodeURIComponent(search.value)}` : ''}`);
    },
  }, field('Find by id', search, 'Documents whose id starts with this'), h('button', { type: 'submit' }, 'Search'));

  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' },
    start !== null ? h('button', { type: 'button', onclick: () => history.back() }, 'Previous page') : null,
    next !== null
      ? h('a', { class: 'button', href: `#/db/${enc}?${new URLSearchParams({ ...(prefix ? { q: prefix } : {}), start: next })}` }, 'Next page')
      : null);

  mount(ctx.main,
    title(db),
    dbTabs(db, 'docs'),
    h('p', { class: 'meta' },
      `${info.doc_count} documents, ${info.doc_del_count} deleted, ${bytes(info.sizes.file)} on disk, update sequence ${seqNumber(info.update_seq)}. `,
      h('a', { class: 'button', href: `#/db/${enc}/new` }, 'New document')),
    form,
    rows.length === 0
      ? h('p', {}, prefix ? `No document id starts with “${prefix}”.` : 'No documents.')
      : h('div', { class: 'scroll' }, h('table', {},
        h('caption', { class: 'sr-only' }, `Documents of ${db}`),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Id'), h('th', { scope: 'col' }, 'Revision'))),
        h('tbody', {}, rows.map((r) => h('tr', {},
          h('th', { scope: 'row' }, h('a', { href: `#/db/${enc}/doc/${encodeURIComponent(r.id)}` }, r.id)),
          h('td', { class: 'mono' }, r.value.rev)))))),
    pager);
}
