// Key metrics as small line charts, from the Prometheus text of `/_outpost/v1/metrics`,
// sampled while the page is open. Counters are shown as rates per second.

import * as api from '../api.js';
import { h, mount, title, errorBox, bytes } from '../ui.js';

const INTERVAL_MS = 3000;
const KEEP = 60;

/** Parses the exposition into `[{name, labels, value}]`. */
export function parse(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[3] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

function sum(samples, name, filter = () => true) {
  const found = samples.filter((s) => s.name === name && filter(s.labels));
  return found.length ? found.reduce((a, s) => a + s.value, 0) : null;
}

/** The charts: a title, how to read the value from a scrape, whether it is a counter, a format. */
const CHARTS = [
  ['Requests per second', (s) => sum(s, 'outpost_http_requests_total'), true, (v) => v.toFixed(1)],
  ['Server errors (5xx) per second', (s) => sum(s, 'outpost_http_requests_total', (l) => (l.status || '').startsWith('5')), true, (v) => v.toFixed(2)],
  ['Documents written per second', (s) => sum(s, 'outpost_documents_written_total'), true, (v) => v.toFixed(1)],
  ['Documents read per second', (s) => sum(s, 'outpost_documents_read_total'), true, (v) => v.toFixed(1)],
  ['Conflicts detected per second', (s) => sum(s, 'outpost_conflicts_detected_total'), true, (v) => v.toFixed(2)],
  ['Open changes feeds', (s) => sum(s, 'outpost_changes_feeds_open'), false, (v) => String(v)],
  ['Replication jobs running', (s) => sum(s, 'outpost_replication_jobs', (l) => l.state === 'running'), false, (v) => String(v)],
  ['Replication changes pending', (s) => sum(s, 'outpost_replication_pending_changes'), false, (v) => String(v)],
  ['Resident memory', (s) => sum(s, 'outpost_process_resident_memory_bytes'), false, bytes],
  ['Storage', (s) => sum(s, 'outpost_storage_database_bytes'), false, bytes],
  ['Gateway queue: pending', (s) => sum(s, 'outpost_gateway_queue_pending'), false, (v) => String(v)],
  ['Gateway queue: dead-lettered', (s) => sum(s, 'outpost_gateway_queue_dead'), false, (v) => String(v)],
];

function chart(label, points, format) {
  const w = 300;
  const hgt = 80;
  const values = points.map((p) => p.v);
  const max = Math.max(...values, 1e-9);
  const min = Math.min(...values, 0);
  const span = max - min || 1;
  const step = points.length > 1 ? w / (KEEP - 1) : 0;
  const coords = points.map((p, i) => `${(i * step).toFixed(1)},${(hgt - ((p.v - min) / span) * (hgt - 4) - 2).toFixed(1)}`);
  const svgNS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(svgNS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${hgt}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${label}: ${format(values[values.length - 1])} now, at most ${format(max)} in the last ${points.length} samples`);
  const line = document.createElementNS(svgNS, 'polyline');
  line.setAttribute('points', coords.join(' '));
  line.setAttribute('class', 'line');
  svg.append(line);
  return h('figure', { class: 'chart' },
    h('figcaption', {}, label, h('strong', {}, format(values[values.length - 1]))),
    svg);
}

export async function render(ctx) {
  const history = CHARTS.map(() => []);
  let previous = null;
  const grid = h('div', { class: 'charts' });
  const status = h('div');
  mount(ctx.main,
    title('Metrics'),
    h('p', { class: 'meta' }, `Sampled every ${INTERVAL_MS / 1000} s while this page is open. The full set is at `, h('a', { href: '/_outpost/v1/metrics' }, '/_outpost/v1/metrics'), '.'),
    status,
    grid);

  async function sample() {
    let text;
    try {
      text = await api.get('/_outpost/v1/metrics', undefined, { text: true });
    } catch (err) {
      mount(status, errorBox(err));
      return;
    }
    mount(status);
    const now = performance.now();
    const samples = parse(text);
    const current = CHARTS.map(([, read]) => read(samples));
    CHARTS.forEach(([, , counter], i) => {
      const v = current[i];
      if (v === null) return;
      if (counter) {
        if (previous && previous.values[i] !== null) {
          const dt = (now - previous.at) / 1000;
          history[i].push({ v: Math.max(0, (v - previous.values[i]) / dt) });
        }
      } else {
        history[i].push({ v });
      }
      if (history[i].length > KEEP) history[i].shift();
    });
    previous = { at: now, values: current };
    const figures = CHARTS.map(([label, , , format], i) => (history[i].length ? chart(label, history[i], format) : null)).filter(Boolean);
    mount(grid, figures.length ? figures : h('p', { class: 'loading' }, 'Collecting the first samples…'));
  }
  await sample();
  const timer = setInterval(sample, INTERVAL_MS);
  ctx.onLeave(() => clearInterval(timer));
}
