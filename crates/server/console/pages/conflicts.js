// Conflicts: the conflicted documents of a database (`/{db}/_conflicts`), and for one document
// its live branches side by side, resolved in one click through `/{db}/_resolve`.

import * as api from '../api.js';
import { h, mount, title, dbTabs, errorBox, toast, pretty } from '../ui.js';
import { compare, content } from '../diff.js';

const PAGE = 50;

export async function renderList(ctx) {
  const [db] = ctx.params;
  const enc = encodeURIComponent(db);
  const start = ctx.query.get('start');
  const page = await api.get(`${api.dbPath(db)}/_conflicts`, { limit: String(PAGE), startkey: start === null ? undefined : start });
  mount(ctx.main,
    title(db),
    dbTabs(db, 'conflicts'),
    h('h2', {}, 'Conflicted documents'),
    page.rows.length === 0
      ? h('p', {}, 'No document has conflicting revisions.')
      : h('div', { class: 'scroll' }, h('table', {},
        h('caption', { class: 'sr-only' }, `Conflicted documents of ${db}`),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Id'), h('th', { scope: 'col' }, 'Winning revision'), h('th', { scope: 'col', class: 'num' }, 'Conflicts'))),
        h('tbody', {}, page.rows.map((r) => h('tr', {},
          h('th', { scope: 'row' }, h('a', { href: `#/db/${enc}/conflicts/${encodeURIComponent(r.id)}` }, r.id)),
          h('td', { class: 'mono' }, r.rev),
          h('td', { class: 'num' }, r.conflicts.length)))))),
    h('nav', { class: 'pager', 'aria-label': 'Pages' },
      start !== null ? h('button', { type: 'button', onclick: () => history.back() }, 'Previous page') : null,
      page.next ? h('a', { class: 'button', href: `#/db/${enc}/conflicts?start=${encodeURIComponent(page.next)}` }, 'Next page') : null));
}

function show(value) {
  return value === undefined ? h('em', { class: 'absent' }, 'absent') : h('code', {}, JSON.stringify(value));
}

export async function renderDoc(ctx) {
  const [db, id] = ctx.params;
  const enc = encodeURIComponent(db);
  const path = api.docPath(db, id);
  const [winner, leaves] = await Promise.all([
    api.get(path, { conflicts: 'true' }),
    api.get(path, { open_revs: 'all' }),
  ]);
  // The winner first, then the other live branches in revision order.
  const live = leaves.filter((l) => l.ok && !l.ok._deleted).map((l) => l.ok);
  live.sort((a, b) => (a._rev === winner._rev ? -1 : b._rev === winner._rev ? 1 : a._rev < b._rev ? 1 : -1));
  const revs = live.map((b) => b._rev);
  const status = h('div', { 'aria-live': 'polite' });

  async function resolve(body, label) {
    mount(status);
    try {
      const res = await api.post(`${api.dbPath(db)}/_resolve`, { id, doc: content(body), revs });
      toast(`Resolved ${id} with ${label}: now ${res.rev}`);
      ctx.navigate(`#/db/${enc}/doc/${encodeURIComponent(id)}`);
    } catch (err) {
      mount(status, errorBox(err));
    }
  }

  if (live.length < 2) {
    mount(ctx.main, title(id), dbTabs(db, 'conflicts'),
      h('p', {}, 'This document has no conflicting revisions. ', h('a', { href: `#/db/${enc}/doc/${encodeURIComponent(id)}` }, 'Open it')));
    return;
  }

  const rows = compare(live);
  const merged = h('textarea', { class: 'json', rows: 12, spellcheck: 'false', 'aria-label': 'JSON to keep', value: pretty(content(winner)) });
  const heads = live.map((b, i) => h('th', { scope: 'col' },
    h('span', { class: 'mono' }, b._rev), ' ',
    h('span', { class: `tag ${i === 0 ? 'winner' : 'conflict'}` }, i === 0 ? 'winner' : 'conflict')));

  mount(ctx.main,
    title(id),
    dbTabs(db, 'conflicts'),
    h('p', {}, `${live.length} live branches. Changed fields are marked. Keeping one branch writes it as the next revision of the winner and deletes the others, in one step.`),
    h('div', { class: 'scroll' }, h('table', { class: 'diff' },
      h('caption', { class: 'sr-only' }, `Fields of each branch of ${id}`),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Field'), heads)),
      h('tbody', {}, rows.map((r) => h('tr', { class: r.differs ? 'differs' : null },
        h('th', { scope: 'row' }, r.key, r.differs ? h('span', { class: 'sr-only' }, ' (differs)') : null),
        r.values.map((v) => h('td', {}, show(v)))))),
      h('tfoot', {}, h('tr', {}, h('td', {}),
        live.map((b, i) => h('td', {}, h('button', {
          type: 'button',
          onclick: () => resolve(b, b._rev),
          'aria-label': `Keep ${i === 0 ? 'the winning' : 'the conflicting'} revision ${b._rev}`,
        }, 'Keep this version'))))))),
    status,
    h('section', { 'aria-labelledby': 'merge-h' },
      h('h2', { id: 'merge-h' }, 'Or keep an edited version'),
      h('form', {
        onsubmit: (e) => {
          e.preventDefault();
          let body;
          try {
            body = JSON.parse(merged.value);
          } catch (err) {
            mount(status, errorBox(`Not valid JSON: ${err.message}`));
            return;
          }
          resolve(body, 'the edited version');
        },
      }, merged, h('div', { class: 'buttons' }, h('button', { type: 'submit' }, 'Resolve with this JSON')))));
}
