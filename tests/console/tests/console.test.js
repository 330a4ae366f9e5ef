'use strict';
// The admin console in Chromium, as an operator uses it: sign in, create a database, add and
// edit a document, see and resolve a conflict, start a replication and watch it complete,
// look at the metrics. A screenshot of every page goes to target/browser-artifacts/console.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { startServer, freePort } = require('../../interop/lib/server.js');
const { launch, artifacts, watch } = require('../lib/browser.js');

const ADMIN = { name: 'admin', password: 'console-secret' };
const AUTH = { Authorization: `Basic ${Buffer.from(`${ADMIN.name}:${ADMIN.password}`).toString('base64')}` };

test('the admin console', async (t) => {
  // A gateway runs in the same process, in front of a backend that is down at first.
  const backendPort = await freePort();
  const gatewayPort = await freePort();
  const configDir = fs.mkdtempSync(path.join(os.tmpdir(), 'console-config-'));
  const config = path.join(configDir, 'outpost.toml');
  fs.writeFileSync(config, `[gateway]\nupstream = "http://127.0.0.1:${backendPort}"\nlisten = "127.0.0.1:${gatewayPort}"\n`);
  const server = await startServer({
    env: {
      OUTPOST_ADMIN_USER: ADMIN.name,
      OUTPOST_ADMIN_PASSWORD: ADMIN.password,
      OUTPOST_PASSWORD_ITERATIONS: '1000',
      OUTPOST_CONFIG: config,
      OUTPOST_GATEWAY_PROBE_INTERVAL: '200ms',
    },
  });
  const browser = await launch();
  const shots = artifacts('console');
  /** What the backend answers, and every request it received. */
  const backend = { status: 400, received: [] };
  const backendServer = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      backend.received.push({ method: req.method, url: req.url, body, status: backend.status });
      res.writeHead(backend.status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ ok: backend.status < 300 }));
    });
  });
  t.after(async () => {
    await browser.close();
    await server.destroy();
    backendServer.close();
    fs.rmSync(configDir, { recursive: true, force: true });
  });
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  const problems = watch(page);
  page.on('dialog', (dialog) => dialog.accept());
  /** The branch the conflict test keeps, which the replication then copies. */
  let kept;
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  /** A request of the test itself, as the admin, to set up what the console then shows. */
  async function admin(method, urlPath, body) {
    const res = await fetch(server.url + urlPath, {
      method,
      headers: { ...AUTH, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json();
    assert.ok(res.ok, `${method} ${urlPath}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  await t.test('an anonymous visitor is sent to sign in, and signs in', async () => {
    await page.goto(`${server.url}/_outpost/ui/`);
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await shot('01-sign-in');
    await page.getByLabel('Name').fill(ADMIN.name);
    await page.getByLabel('Password').fill('wrong');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'unauthorized' }).waitFor();
    await page.getByLabel('Password').fill(ADMIN.password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Databases' }).waitFor();
    await page.getByText(`Signed in as ${ADMIN.name}`).waitFor();
  });

  await t.test('creates a database', async () => {
    await page.getByLabel('New database').fill('field-notes');
    await page.getByRole('button', { name: 'Create' }).click();
    await page.getByRole('heading', { name: 'field-notes' }).waitFor();
    await page.getByText('0 documents').waitFor();
    const info = await admin('GET', '/field-notes');
    assert.equal(info.db_name, 'field-notes');
    await page.goto(`${server.url}/_outpost/ui/#/`);
    await page.getByRole('row', { name: /field-notes/ }).waitFor();
    await shot('02-databases');
  });

  await t.test('adds a document and edits it', async () => {
    await page.goto(`${server.url}/_outpost/ui/#/db/field-notes`);
    await page.getByRole('link', { name: 'New document' }).click();
    await page.getByLabel('JSON of the new document').fill(JSON.stringify({ _id: 'note-1', text: 'heron at the pond', count: 1 }));
    await page.getByRole('button', { name: 'Create document' }).click();
    await page.getByRole('heading', { name: 'note-1' }).waitFor();
    const editor = page.getByLabel('JSON of note-1');
    const shown = JSON.parse(await editor.inputValue());
    assert.equal(shown.text, 'heron at the pond');
    shown.count = 2;
    await editor.fill(JSON.stringify(shown, null, 2));
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByText(/^Saved note-1 as 2-/).waitFor();
    const stored = await admin('GET', '/field-notes/note-1');
    assert.equal(stored.count, 2);
    assert.match(stored._rev, /^2-/);
    // The history lists both revisions from the event log.
    await page.locator('ol.timeline li').nth(1).waitFor();
    assert.equal(await page.locator('ol.timeline li').count(), 2);
    await shot('03-document');
    await page.goto(`${server.url}/_outpost/ui/#/db/field-notes`);
    await page.getByRole('link', { name: 'note-1' }).waitFor();
    await shot('04-documents');
  });

  await t.test('shows a conflict side by side and resolves it in one click', async () => {
    const current = await admin('GET', '/field-notes/note-1?revs=true');
    // A second branch from generation 1, as a device that was offline would replicate it.
    const base = `1-${current._revisions.ids[1]}`;
    await admin('POST', '/field-notes/_bulk_docs', {
      new_edits: false,
      docs: [{ _id: 'note-1', _rev: '2-ffffffffffffffffffffffffffffffff', _revisions: { start: 2, ids: ['ffffffffffffffffffffffffffffffff', base.slice(2)] }, text: 'two herons at the pond', count: 2 }],
    });
    await page.goto(`${server.url}/_outpost/ui/#/db/field-notes/conflicts`);
    await page.getByRole('link', { name: 'note-1' }).click();
    await page.getByRole('heading', { name: 'note-1' }).waitFor();
    const differing = page.locator('table.diff tr.differs');
    await differing.first().waitFor();
    assert.match(await differing.first().locator('th').innerText(), /^text/);
    assert.equal(await differing.count(), 1, 'only the text differs between the branches');
    await shot('05-conflict');
    const losing = (await admin('GET', '/field-notes/note-1?conflicts=true'))._conflicts[0];
    kept = await admin('GET', `/field-notes/note-1?rev=${losing}`);
    await page.getByRole('button', { name: `Keep the conflicting revision ${losing}` }).click();
    await page.getByText(/^Resolved note-1/).waitFor();
    const after = await admin('GET', '/field-notes/note-1?conflicts=true');
    assert.equal(after._conflicts, undefined, 'no conflict is left');
    assert.equal(after.text, kept.text);
    assert.match(after._rev, /^3-/);
    await page.goto(`${server.url}/_outpost/ui/#/db/field-notes/conflicts`);
    await page.getByText('No document has conflicting revisions.').waitFor();
    await shot('06-conflicts');
  });

  await t.test('changes the policy and the security of a database', async () => {
    await page.goto(`${server.url}/_outpost/ui/#/db/field-notes/settings`);
    await page.getByLabel('Conflict policy').selectOption('lww');
    await page.getByLabel('Last-writer-wins field').fill('updated_at');
    await page.getByRole('button', { name: 'Save policy' }).click();
    await page.getByText('Policy and retention saved').waitFor();
    assert.equal((await admin('GET', '/field-notes/_outpost')).conflict_policy, 'lww');
    await page.getByRole('group', { name: 'Members' }).getByLabel('Names').fill('alice, bob');
    await page.getByRole('button', { name: 'Save security' }).click();
    await page.getByText('Security saved').waitFor();
    assert.deepEqual((await admin('GET', '/field-notes/_security')).members.names, ['alice', 'bob']);
    await shot('07-settings');
  });

  await t.test('starts a replication and sees it complete', async () => {
    await page.goto(`${server.url}/_outpost/ui/#/replication`);
    await page.getByRole('heading', { name: 'Replication', exact: true }).waitFor();
    await page.getByLabel('Source', { exact: true }).fill('field-notes');
    await page.getByLabel('Target', { exact: true }).fill('field-notes-copy');
    await page.getByLabel('Job name (optional)').fill('backup');
    await page.getByLabel('Create the target').check();
    await page.getByRole('button', { name: 'Start' }).click();
    const row = page.locator('tr[data-job="backup"]');
    await row.getByText('completed').waitFor({ timeout: 30_000 });
    // The winner and the tombstone of the resolved branch: two revisions.
    assert.match(await row.innerText(), /\b2 written\b/);
    const copy = await admin('GET', '/field-notes-copy/note-1');
    assert.equal(copy.text, kept.text);
    await shot('08-replication');
  });

  await t.test('shows the metrics as charts', async () => {
    await page.goto(`${server.url}/_outpost/ui/#/metrics`);
    await page.getByRole('img', { name: /^Resident memory:/ }).waitFor();
    // Counters become rates from the second sample on.
    await page.getByRole('img', { name: /^Requests per second:/ }).waitFor({ timeout: 15_000 });
    await shot('09-metrics');
  });

  await t.test('shows a dead-lettered gateway entry and retries it', async () => {
    // Queued while the backend is down.
    const sent = await fetch(`http://127.0.0.1:${gatewayPort}/reports`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ report: 'heron count', n: 2 }),
    });
    assert.equal(sent.status, 202);
    const id = new URL(sent.headers.get('location'), 'http://x').pathname.split('/').pop();
    // The backend comes up and refuses it: a 400 is dead-lettered at once.
    await new Promise((resolve) => backendServer.listen(backendPort, '127.0.0.1', resolve));
    await page.goto(`${server.url}/_outpost/ui/#/`);
    await page.getByRole('link', { name: 'Gateway' }).click();
    await page.getByRole('heading', { name: 'Gateway queue' }).waitFor();
    await page.getByRole('link', { name: 'Dead' }).click();
    const row = page.locator(`tr[data-entry="${id}"]`);
    await row.waitFor({ timeout: 30_000 });
    assert.match(await row.innerText(), /400/);
    await shot('11-gateway-dead');
    // Fixed on the backend's side, retried from the console: delivered once.
    backend.status = 201;
    await row.getByRole('button', { name: `Retry ${id}` }).click();
    await page.getByText(`Entry ${id} will be delivered again`).waitFor();
    await page.getByRole('link', { name: 'Done' }).click();
    await page.locator(`tr[data-entry="${id}"]`).waitFor({ timeout: 30_000 });
    await shot('12-gateway-done');
    // Besides the gateway's health probes (GET /): the refused delivery, then exactly one more.
    const writes = backend.received.filter((r) => r.method === 'POST');
    assert.deepEqual(writes.map((r) => [r.url, r.status]), [['/reports', 400], ['/reports', 201]]);
    assert.deepEqual(JSON.parse(writes[1].body), { report: 'heron count', n: 2 });
  });

  await t.test('is usable on a phone', async () => {
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const small = await phone.newPage();
    await small.goto(`${server.url}/_outpost/ui/`);
    await small.getByLabel('Name').fill(ADMIN.name);
    await small.getByLabel('Password').fill(ADMIN.password);
    await small.getByLabel('Password').press('Enter');
    await small.getByRole('heading', { name: 'Databases' }).waitFor();
    // Nothing but the table's own scroller is wider than the screen.
    const wide = await small.evaluate(() => [...document.querySelectorAll('body *')]
      .filter((el) => !el.closest('.scroll') && el.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
      .map((el) => `${el.tagName}.${el.className}`));
    assert.deepEqual(wide, [], 'nothing outside a scroller is wider than the screen');
    await small.screenshot({ path: path.join(shots, '13-phone-databases.png'), fullPage: true });
    await phone.close();
  });

  await t.test('signs out', async () => {
    await page.goto(`${server.url}/_outpost/ui/#/`);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    const session = await page.evaluate(() => fetch('/_session').then((r) => r.json()));
    assert.equal(session.userCtx.name, null);
  });

  await t.test('works with the keyboard alone', async () => {
    // Signed out by the previous step: the sign-in form has the focus.
    await page.keyboard.type(ADMIN.name);
    await page.keyboard.press('Tab');
    await page.keyboard.type(ADMIN.password);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Databases' }).waitFor();
    // Tab to the main navigation's Replication link and follow it.
    let focused = '';
    for (let i = 0; i < 30 && focused !== 'Replication'; i += 1) {
      await page.keyboard.press('Tab');
      focused = await page.evaluate(() => document.activeElement.textContent.trim());
    }
    assert.equal(focused, 'Replication');
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Replication', exact: true }).waitFor();
    // After navigating, the focus is on the new page's heading, where a screen reader starts.
    await page.waitForFunction(() => document.activeElement && document.activeElement.id === 'page-title');
    assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Replication');
  });

  await t.test('the pages asked nothing the server refused, and threw nothing', () => {
    assert.deepEqual(problems.errors, []);
    // The wrong password and the visit before signing in are the only refusals.
    const unexpected = problems.failed.filter((f) => !/^(GET \/_dbs_info|POST \/_session) -> 401$/.test(f));
    assert.deepEqual(unexpected, []);
  });
});

test('the admin console on a server without an admin', async (t) => {
  const server = await startServer();
  const browser = await launch();
  t.after(async () => {
    await browser.close();
    await server.destroy();
  });
  const page = await browser.newPage();
  const problems = watch(page);
  await page.goto(`${server.url}/_outpost/ui/`);
  // Open on loopback: no sign-in, and a banner that says why.
  await page.getByRole('heading', { name: 'Databases' }).waitFor();
  await page.getByText('No server admin is configured').waitFor();
  await page.getByText('Open server').waitFor();
  await page.getByLabel('New database').fill('open-notes');
  await page.getByRole('button', { name: 'Create' }).click();
  await page.getByRole('heading', { name: 'open-notes' }).waitFor();
  await page.screenshot({ path: path.join(artifacts('console'), '14-open-server.png'), fullPage: true });
  assert.deepEqual(problems.errors, []);
  assert.deepEqual(problems.failed, []);
});
