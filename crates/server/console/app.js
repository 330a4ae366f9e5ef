// The console's shell: who is signed in, the hash router, and focus handling after each
// navigation. Each page is a module exporting `render(ctx)`.

import * as api from './api.js';
import { adminParty } from './api.js';
import { h, mount, errorBox, toast } from './ui.js';
import * as login from './pages/login.js';
import * as databases from './pages/databases.js';
import * as documents from './pages/documents.js';
import * as document_ from './pages/document.js';
import * as settings from './pages/settings.js';
import * as conflicts from './pages/conflicts.js';
import * as replication from './pages/replication.js';
import * as metrics from './pages/metrics.js';
import * as gateway from './pages/gateway.js';

/** Routes: a pattern over the hash path and the page that renders it. */
const ROUTES = [
  [/^\/login$/, login.render],
  [/^\/$/, databases.render],
  [/^\/db\/([^/]+)$/, documents.render],
  [/^\/db\/([^/]+)\/new$/, document_.renderNew],
  [/^\/db\/([^/]+)\/doc\/(.+)$/, document_.render],
  [/^\/db\/([^/]+)\/settings$/, settings.render],
  [/^\/db\/([^/]+)\/conflicts$/, conflicts.renderList],
  [/^\/db\/([^/]+)\/conflicts\/(.+)$/, conflicts.renderDoc],
  [/^\/replication$/, replication.render],
  [/^\/metrics$/, metrics.render],
  [/^\/gateway$/, gateway.render],
];

const main = document.getElementById('main');
let session = null;
/** Cleanups of the current page (timers of pages that poll). */
let cleanups = [];

/** Asks the server who we are; `null` when it cannot be reached. */
async function loadSession() {
  session = await api.get('/_session');
  renderWho();
  await showGateway();
  return session;
}

/** Adds the gateway's page to the navigation when a gateway runs beside this server. */
async function showGateway() {
  const nav = document.getElementById('nav');
  const existing = nav.querySelector('a[href="#/gateway"]');
  const admin = session && session.userCtx.roles.includes('_admin');
  const present = admin && (await gateway.present());
  if (present && !existing) nav.append(h('li', {}, h('a', { href: '#/gateway' }, 'Gateway')));
  if (!present && existing) existing.parentElement.remove();
}

function renderWho() {
  const who = document.getElementById('who');
  const banner = document.getElementById('banner');
  const user = session && session.userCtx;
  if (adminParty(session)) {
    mount(who, h('span', {}, 'Open server'));
    mount(banner, h('p', { class: 'notice' },
      'No server admin is configured, so every client is treated as an admin. Outpost then listens only on loopback; ',
      'set an admin (OUTPOST_ADMIN_PASSWORD, or the configuration file) before exposing it.'));
  } else if (user && user.name) {
    mount(banner);
    mount(who,
      h('span', {}, 'Signed in as ', h('strong', {}, user.name)),
      ' ',
      h('button', { type: 'button', class: 'link', onclick: signOut }, 'Sign out'));
  } else {
    mount(banner);
    mount(who, h('a', { href: '#/login' }, 'Sign in'));
  }
}

async function signOut() {
  try {
    await api.del('/_session');
  } catch (err) {
    toast(String(err.message), 'bad');
  }
  await loadSession();
  location.hash = '#/login';
}

function parseHash() {
  const raw = location.hash.startsWith('#/') ? location.hash.slice(1) : '/';
  const [path, query = ''] = raw.split('?');
  return { path, query: new URLSearchParams(query) };
}

async function route() {
  for (const fn of cleanups) fn();
  cleanups = [];
  const { path, query } = parseHash();
  for (const link of document.querySelectorAll('#nav a')) {
    const target = link.getAttribute('href').slice(1);
    const current = target === '/' ? path === '/' || path.startsWith('/db/') : path.startsWith(target);
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const found = ROUTES.map(([re, page]) => [path.match(re), page]).find(([m]) => m);
  if (!found) {
    mount(main, h('h1', { tabindex: '-1', id: 'page-title' }, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to the databases')));
    focusTitle();
    return;
  }
  const [match, page] = found;
  const params = match.slice(1).map(decodeURIComponent);
  const ctx = {
    main,
    params,
    query,
    session,
    reloadSession: loadSession,
    onLeave: (fn) => cleanups.push(fn),
    navigate: (hash) => {
      if (location.hash === hash) route();
      else location.hash = hash;
    },
  };
  mount(main, h('p', { class: 'loading' }, 'Loading…'));
  try {
    await page(ctx);
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 401) return;
    mount(main, h('h1', { tabindex: '-1', id: 'page-title' }, 'Something went wrong'), errorBox(err));
  }
  focusTitle();
}

/** Moves focus to the new page's heading, unless the page put it somewhere on purpose. */
function focusTitle() {
  if (main.contains(document.activeElement) && document.activeElement !== main) return;
  const title = document.getElementById('page-title');
  if (title) title.focus({ preventScroll: false });
}

api.onUnauthorized(() => {
  if (!location.hash.startsWith('#/login')) {
    const back = encodeURIComponent(location.hash || '#/');
    location.hash = `#/login?next=${back}`;
  }
});

document.getElementById('skip').addEventListener('click', (e) => {
  e.preventDefault();
  main.focus();
});

window.addEventListener('hashchange', route);

try {
  await loadSession();
} catch (err) {
  mount(main, h('h1', {}, 'Cannot reach the server'), errorBox(err));
}
if (session) route();
