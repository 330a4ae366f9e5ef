// The offline request gateway's queue, when a gateway runs in this process: its upstream and
// counts, and its entries by state (pending, dead, done) with retry and drop, through
// `/_outpost/gateway/v1/` (the gateway's admin API, reached as a server admin).

import * as api from '../api.js';
import { h, mount, title, errorBox, toast, when } from '../ui.js';

const BASE = '/_outpost/gateway/v1';
const REFRESH_MS = 2000;
const STATES = ['pending', 'dead', 'done'];

/** Whether a gateway runs beside this server. */
export async function present() {
  try {
    return (await api.get('/_outpost/gateway')).running === true;
  } catch {
    return false;
  }
}

export async function render(ctx) {
  const shown = STATES.includes(ctx.query.get('state')) ? ctx.query.get('state') : 'pending';
  const status = h('div', { 'aria-live': 'polite' });
  const table = h('div');

  async function retry(id) {
    try {
      await api.post(`${BASE}/queue/${encodeURIComponent(id)}/retry`);
      toast(`Entry ${id} will be delivered again`);
      await refresh();
    } catch (err) {
      toast(err.message, 'bad');
    }
  }

  async function drop(id) {
    if (!window.confirm(`Drop the queued request ${id}? It will never be delivered.`)) return;
    try {
      await api.del(`${BASE}/queue/${encodeURIComponent(id)}`);
      toast(`Entry ${id} dropped`);
      await refresh();
    } catch (err) {
      toast(err.message, 'bad');
    }
  }

  async function refresh() {
    let gateway;
    let list;
    try {
      [gateway, list] = await Promise.all([
        api.get(`${BASE}/gateway`),
        api.get(`${BASE}/queue`, { state: shown, limit: '100' }),
      ]);
    } catch (err) {
      mount(status, errorBox(err));
      return;
    }
    const q = gateway.queue;
    const up = gateway.upstream;
    mount(status, h('p', {},
      'Upstream ', h('span', { class: 'mono' }, up.url || '—'), ' is ',
      h('span', { class: `tag ${up.state === 'up' ? 'completed' : 'failed'}` }, up.state || 'unknown'),
      `. ${q.depth} pending, ${q.dead} dead, ${q.done} delivered and kept.`));
    if (list.entries.length === 0) {
      mount(table, h('p', {}, `No ${shown} entries.`));
      return;
    }
    mount(table, h('div', { class: 'scroll' }, h('table', {},
      h('caption', { class: 'sr-only' }, `${shown} queue entries`),
      h('thead', {}, h('tr', {}, ['Entry', 'Queued', 'Attempts', 'Last answer', 'Last error'].map((c) => h('th', { scope: 'col' }, c)),
        h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
      h('tbody', {}, list.entries.map((e) => h('tr', { 'data-entry': e.id },
        h('th', { scope: 'row', class: 'mono' }, e.id),
        h('td', {}, when(e.created_ms)),
        h('td', { class: 'num' }, e.attempts),
        h('td', {}, e.response_status ?? '—'),
        h('td', { class: 'wrap' }, e.last_error || ''),
        h('td', { class: 'actions' },
          e.state !== 'done' ? h('button', { type: 'button', onclick: () => retry(e.id), 'aria-label': `Retry ${e.id}` }, 'Retry') : null,
          ' ',
          e.state !== 'done' ? h('button', { type: 'button', class: 'danger', onclick: () => drop(e.id), 'aria-label': `Drop ${e.id}` }, 'Drop') : null)))))));
  }

  mount(ctx.main,
    title('Gateway queue'),
    status,
    h('nav', { class: 'tabs', 'aria-label': 'Entries by state' }, h('ul', {}, STATES.map((s) =>
      h('li', {}, h('a', { href: `#/gateway?state=${s}`, 'aria-current': s === shown ? 'page' : null }, s[0].toUpperCase() + s.slice(1)))))),
    table);
  await refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  ctx.onLeave(() => clearInterval(timer));
}
