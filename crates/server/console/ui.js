// Small DOM helpers shared by the pages: an element builder that never parses HTML (so no
// value from the server can inject markup), formatting, and the status message area.

/**
 * Builds an element: `h('a', { href: '#/' , class: 'x', onclick: fn }, 'text', child, ...)`.
 * Attributes starting with `on` become listeners; `null`/`false` attributes and children are
 * skipped; arrays of children are flattened.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'value') {
      el.value = value;
    } else if (name === 'checked') {
      el.checked = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces the content of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** Shows a short message in the polite live region, so screen readers announce it too. */
export function toast(message, kind = 'ok') {
  const el = document.getElementById('toast');
  el.className = `toast ${kind}`;
  el.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    el.textContent = '';
    el.className = 'toast';
  }, 6000);
}

/** A block that announces an error at once (role=alert). */
export function errorBox(err) {
  return h('p', { class: 'error', role: 'alert' }, describe(err));
}

/** A human sentence for an error from the API or from the browser. */
export function describe(err) {
  if (err && err.body && (err.body.reason || err.body.error)) {
    return `${err.body.error || 'error'}: ${err.body.reason || ''} (HTTP ${err.status})`;
  }
  return String((err && err.message) || err);
}

/** Bytes as a short human string. */
export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** A time (ms since the epoch, or an ISO string, or seconds) as local date and time. */
export function when(t) {
  if (t === null || t === undefined || t === '') return '—';
  const d = typeof t === 'number' ? new Date(t < 1e11 ? t * 1000 : t) : new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

/** A sequence's number: sequences are opaque `N-<suffix>` strings whose `N` grows. */
export function seqNumber(seq) {
  return typeof seq === 'number' ? seq : parseInt(String(seq), 10);
}

/** A labelled form field. */
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  const hintEl = hint ? h('small', { id: `${id}-hint`, class: 'hint' }, hint) : null;
  if (hintEl) input.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hintEl);
}

/** The page heading; it takes focus after navigation so keyboard and screen-reader users land on it. */
export function title(text, ...extra) {
  return h('h1', { tabindex: '-1', id: 'page-title' }, text, ...extra);
}

/** A pretty-printed JSON value. */
export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** The tabs of one database's pages. */
export function dbTabs(db, current) {
  const enc = encodeURIComponent(db);
  const tabs = [
    ['docs', 'Documents', `#/db/${enc}`],
    ['conflicts', 'Conflicts', `#/db/${enc}/conflicts`],
    ['settings', 'Settings', `#/db/${enc}/settings`],
  ];
  return h(
    'nav',
    { class: 'tabs', 'aria-label': `Database ${db}` },
    h('ul', {}, tabs.map(([key, label, href]) =>
      h('li', {}, h('a', { href, 'aria-current': key === current ? 'page' : null }, label)))),
  );
}
