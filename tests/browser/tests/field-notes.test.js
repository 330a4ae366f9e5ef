'use strict';
// The example app (examples/field-notes) used as a person would, in Chromium: offline edits and
// an offline reload (the service worker), a conflict between two browsers resolved in the app,
// and a report sent through the gateway while the backend is down.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startStack } = require('../../../examples/field-notes/lib/stack');
const { launch, artifact, waitFor } = require('../lib/browser');

/** Far above the normal running time, so only a hang trips it. */
const PATIENCE_MS = 60_000;
const PASSWORD = 'fieldnotes';

let browser = null;
let stack = null;

before(async (t) => {
  browser = await launch(t);
  if (!browser) return;
  stack = await startStack({
    users: ['carol', 'dave', 'erin'].map((name) => ({ name, password: PASSWORD })),
  });
});

after(async () => {
  if (browser) await browser.close();
  if (stack) await stack.stop();
});

/** A new browser context (its own IndexedDB, cookies and service worker) signed in as `name`. */
async function signedIn(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (err) => console.error(`[${name}] page error: ${err.message}`));
  await page.goto(stack.url);
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText(`Signed in as ${name}`).waitFor();
  // The service worker controls the page once it is active (it claims its clients).
  await page.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: PATIENCE_MS });
  return { context, page };
}

async function addNote(page, text) {
  await page.getByLabel('New note').fill(text);
  await page.getByRole('button', { name: 'Add', exact: true }).click();
  await page.locator('#notes li .text', { hasText: text }).waitFor();
}

async function editNote(page, from, to) {
  await page.getByRole('button', { name: `Edit "${from}"` }).click();
  await page.getByLabel('Note text').fill(to);
  await page.getByRole('button', { name: 'Save' }).click();
  await page.locator('#notes li .text', { hasText: to }).waitFor();
}

/** The notes of `name`'s database on the server, by text. */
async function serverNotes(name) {
  const res = await fetch(`${stack.couchUrl}/${stack.userDb(name)}/_all_docs?include_docs=true`, {
    headers: { authorization: stack.authorization },
  });
  assert.ok(res.ok, `reading ${name}'s database: ${res.status}`);
  const body = await res.json();
  return body.rows.map((r) => r.doc).filter((d) => d.type === 'note').map((d) => d.text).sort();
}

async function noteTexts(page) {
  return (await page.locator('#notes li .text').allTextContents()).sort();
}

test('notes made offline survive an offline reload and reach the server', async (t) => {
  if (!browser) return t.skip('no Chromium: see tests/browser/lib/browser.js');
  const { context, page } = await signedIn('carol');
  t.after(() => context.close());
  await addNote(page, 'online note');
  await waitFor(async () => (await serverNotes('carol')).includes('online note'), PATIENCE_MS, 'the online note on the server');

  await context.setOffline(true);
  await page.locator('#status', { hasText: 'offline' }).waitFor();
  await addNote(page, 'spring at the north fence');
  await addNote(page, 'heron nest');
  await editNote(page, 'heron nest', 'heron nest, two eggs');
  await page.screenshot({ path: artifact('field-notes-offline.png'), fullPage: true });

  // Reloaded without a network: the service worker serves the app, IndexedDB the notes.
  await page.reload();
  await page.getByText('Signed in as carol').waitFor();
  const expected = ['heron nest, two eggs', 'online note', 'spring at the north fence'];
  await waitFor(async () => JSON.stringify(await noteTexts(page)) === JSON.stringify(expected), PATIENCE_MS, 'the notes after an offline reload');
  assert.deepEqual(await serverNotes('carol'), ['online note'], 'nothing reached the server while offline');
  await page.screenshot({ path: artifact('field-notes-offline-reload.png'), fullPage: true });

  await context.setOffline(false);
  await waitFor(async () => JSON.stringify(await serverNotes('carol')) === JSON.stringify(expected), PATIENCE_MS, 'the offline notes on the server');
  await page.locator('#status', { hasText: 'synced' }).waitFor();
});

test('an item edited in two browsers, one offline, ends the same in both', async (t) => {
  if (!browser) return t.skip('no Chromium: see tests/browser/lib/browser.js');
  const a = await signedIn('dave');
  const b = await signedIn('dave');
  t.after(async () => {
    await a.context.close();
    await b.context.close();
  });
  await addNote(a.page, 'water level: 40 cm');
  await b.page.locator('#notes li .text', { hasText: 'water level: 40 cm' }).waitFor({ timeout: PATIENCE_MS });
  await waitFor(async () => (await serverNotes('dave')).includes('water level: 40 cm'), PATIENCE_MS, 'the note on the server');

  await a.context.setOffline(true);
  await a.page.locator('#status', { hasText: 'offline' }).waitFor();
  await editNote(a.page, 'water level: 40 cm', 'water level: 42 cm');
  await editNote(b.page, 'water level: 40 cm', 'water level: 45 cm');
  await waitFor(async () => (await serverNotes('dave')).includes('water level: 45 cm'), PATIENCE_MS, "b's edit on the server");
  await a.context.setOffline(false);

  // Both browsers learn of the conflict and show both versions.
  for (const { page } of [a, b]) {
    await page.locator('#notes li.conflict').waitFor({ timeout: PATIENCE_MS });
    const versions = (await page.locator('#notes li.conflict .keep').allTextContents()).sort();
    assert.deepEqual(versions, ['water level: 42 cm', 'water level: 45 cm']);
  }
  await a.page.screenshot({ path: artifact('field-notes-conflict.png'), fullPage: true });
  await a.page.locator('#notes li.conflict .keep', { hasText: 'water level: 42 cm' }).click();

  for (const { page } of [a, b]) {
    await waitFor(
      async () => (await page.locator('#notes li.conflict').count()) === 0 && JSON.stringify(await noteTexts(page)) === '["water level: 42 cm"]',
      PATIENCE_MS,
      'the resolved note in both browsers',
    );
  }
  assert.deepEqual(await serverNotes('dave'), ['water level: 42 cm']);
  const res = await fetch(`${stack.couchUrl}/${stack.userDb('dave')}/_all_docs?include_docs=true&conflicts=true`, {
    headers: { authorization: stack.authorization },
  });
  const rows = (await res.json()).rows.filter((r) => r.doc.type === 'note');
  assert.equal(rows[0].doc._conflicts, undefined, 'no conflict is left on the server');
});

test('a report sent while the backend is down shows queued, then delivered exactly once', async (t) => {
  if (!browser) return t.skip('no Chromium: see tests/browser/lib/browser.js');
  const { context, page } = await signedIn('erin');
  t.after(() => context.close());
  await stack.backend.stop();

  await page.getByLabel('Title').fill('fence broken at gate 3');
  await page.getByLabel('Report').fill('two posts down, cattle can pass');
  await page.getByRole('button', { name: 'Submit report' }).click();
  const badge = page.locator('#reports li', { hasText: 'fence broken at gate 3' }).locator('.badge');
  await waitFor(async () => (await badge.textContent()) === 'queued', PATIENCE_MS, 'the report to show queued');
  await page.screenshot({ path: artifact('field-notes-report-queued.png'), fullPage: true });
  assert.equal(stack.backend.reports().length, 0);

  await stack.backend.start();
  await waitFor(async () => (await badge.textContent()) === 'delivered', PATIENCE_MS, 'the report to show delivered');
  await page.screenshot({ path: artifact('field-notes-report-delivered.png'), fullPage: true });
  const reports = stack.backend.reports();
  assert.equal(reports.length, 1, JSON.stringify(reports));
  assert.equal(reports[0].title, 'fence broken at gate 3');
  assert.equal(reports[0].requests, 1, 'the backend got the report exactly once');
});
