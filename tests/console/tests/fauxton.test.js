'use strict';
// CouchDB's own Fauxton (the npm package, proxying to Outpost) used as a person uses it against
// CouchDB 3.5: sign in, the database list, create and delete a database, create and edit a
// document, All Documents, Changes, Permissions, Configuration, Mango Query and indexes, and the
// Replication page. Each flow is checked on the server too, and no request Fauxton makes may be
// refused unexpectedly. Screenshots go to target/browser-artifacts/fauxton.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { startServer } = require('../../interop/lib/server.js');
const { launch, artifacts, watch } = require('../lib/browser.js');
const { startFauxton } = require('../lib/fauxton.js');

const ADMIN = { name: 'admin', password: 'fauxton-secret' };
const AUTH = { Authorization: `Basic ${Buffer.from(`${ADMIN.name}:${ADMIN.password}`).toString('base64')}` };
const DB = 'fx-notes';

/** Replaces the text of the Ace editor that has focus: Fauxton edits JSON in Ace. */
async function replaceEditor(page, locator, text) {
  await locator.locator('.ace_text-input').focus();
  await page.keyboard.press('Control+A');
  await page.keyboard.press('Delete');
  // Inserted as one input event, so Ace does not auto-close brackets and quotes.
  await page.keyboard.insertText(text);
}

test('Fauxton against Outpost', async (t) => {
  const server = await startServer({
    env: { OUTPOST_ADMIN_USER: ADMIN.name, OUTPOST_ADMIN_PASSWORD: ADMIN.password, OUTPOST_PASSWORD_ITERATIONS: '1000' },
  });
  const fauxton = await startFauxton(server.url);
  const browser = await launch();
  const shots = artifacts('fauxton');
  t.after(async () => {
    await browser.close();
    await fauxton.stop();
    await server.destroy();
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(15_000);
  const problems = watch(page);
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  /** Opens a page of Fauxton afresh (a page already open is loaded again, not kept). */
  const open = async (hash) => {
    const url = `${fauxton.url}/#${hash}`;
    if (page.url().replace('#/', '#') === url.replace('#/', '#')) await page.reload();
    else await page.goto(url);
    await page.waitForLoadState('networkidle');
  };
  async function admin(method, urlPath, body) {
    const res = await fetch(server.url + urlPath, {
      method,
      headers: { ...AUTH, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  }

  await t.test('signs in', async () => {
    await page.goto(`${fauxton.url}/`);
    await page.locator('#username').fill(ADMIN.name);
    await page.locator('#password').fill(ADMIN.password);
    await shot('01-sign-in');
    await page.locator('#submit').click();
    await page.getByText('You have been logged in.').first().waitFor();
    await page.getByText('Log Out').waitFor();
    const session = await page.evaluate(() => fetch('/_session').then((r) => r.json()));
    assert.equal(session.userCtx.name, ADMIN.name);
    assert.ok(session.userCtx.roles.includes('_admin'));
  });

  await t.test('lists the databases and creates one', async () => {
    await open('/_all_dbs');
    await page.getByRole('link', { name: '_replicator', exact: true }).waitFor();
    await page.getByText('Create Database').click();
    await page.locator('#js-new-database-name').fill(DB);
    await page.locator('#js-create-database').click();
    await page.waitForURL(new RegExp(`database/${DB}/_all_docs`));
    assert.equal((await admin('GET', `/${DB}`)).body.db_name, DB);
    await open('/_all_dbs');
    await page.getByRole('link', { name: DB, exact: true }).waitFor();
    await shot('02-databases');
  });

  await t.test('creates a document', async () => {
    await open(`/database/${DB}/_new`);
    await replaceEditor(page, page.locator('.ace_editor').first(), JSON.stringify({ _id: 'doc-a', title: 'first', n: 1 }));
    await page.getByRole('button', { name: 'Create Document' }).click();
    await page.getByText('Document saved successfully.').first().waitFor();
    const { body } = await admin('GET', `/${DB}/doc-a`);
    assert.equal(body.title, 'first');
  });

  await t.test('edits a document', async () => {
    await open(`/database/${DB}/doc-a`);
    const current = (await admin('GET', `/${DB}/doc-a`)).body;
    await replaceEditor(page, page.locator('.ace_editor').first(), JSON.stringify({ ...current, title: 'edited', n: 2 }));
    await shot('03-document');
    await page.getByRole('button', { name: 'Save Changes' }).click();
    await page.waitForURL(new RegExp(`database/${DB}/_all_docs`));
    const { body } = await admin('GET', `/${DB}/doc-a`);
    assert.equal(body.title, 'edited');
    assert.match(body._rev, /^2-/);
  });

  await t.test('shows All Documents', async () => {
    await admin('PUT', `/${DB}/doc-b`, { title: 'second' });
    await open(`/database/${DB}/_all_docs`);
    await page.getByText('doc-b').first().waitFor();
    await page.getByText('Showing document 1 - 2.').waitFor();
    await shot('04-all-docs');
  });

  await t.test('shows the Changes', async () => {
    await open(`/database/${DB}/_changes`);
    await page.locator('.change-box').first().waitFor();
    const text = await page.locator('#dashboard-content').innerText();
    assert.match(text, /doc-a/);
    assert.match(text, /doc-b/);
    await shot('05-changes');
  });

  await t.test('sets Permissions', async () => {
    await open(`/database/${DB}/permissions`);
    await page.getByRole('heading', { name: 'Members' }).waitFor();
    await page.locator('input[placeholder=Username]').nth(1).fill('alice');
    await page.getByRole('button', { name: 'Add User' }).nth(1).click();
    await page.getByText('Database permissions has been updated.').first().waitFor();
    const { body } = await admin('GET', `/${DB}/_security`);
    assert.deepEqual(body.members.names, ['alice']);
    await shot('06-permissions');
  });

  await t.test('shows the Configuration and its CORS page', async () => {
    await open('/_config');
    await page.getByText('max_document_size').waitFor();
    await shot('07-config');
    await open('/_config/nonode@nohost/cors');
    await page.getByText('CORS', { exact: false }).first().waitFor();
    await shot('08-cors');
  });

  await t.test('runs a Mango query and explains it', async () => {
    await open(`/database/${DB}/_find`);
    await replaceEditor(page, page.locator('.ace_editor').first(), JSON.stringify({ selector: { title: 'edited' } }));
    await page.getByRole('button', { name: 'Run Query' }).click();
    await page.getByText(/Executed in/).waitFor();
    const results = await page.locator('#dashboard-lower-content, .right-content, #right-content').first().innerText();
    assert.match(results, /doc-a/);
    assert.doesNotMatch(results, /doc-b/);
    await shot('09-mango-query');
    await page.getByRole('button', { name: 'Explain' }).click();
    await page.getByText('"dbname": "fx-notes"').waitFor();
    await shot('10-mango-explain');
  });

  await t.test('creates a Mango index', async () => {
    await open(`/database/${DB}/_index`);
    await replaceEditor(page, page.locator('.ace_editor').first(), JSON.stringify({ index: { fields: ['title'] }, name: 'by-title', type: 'json' }));
    await page.getByRole('button', { name: 'Create index' }).click();
    await page.getByText('Index is ready for querying.').first().waitFor();
    const { body } = await admin('GET', `/${DB}/_index`);
    assert.ok(body.indexes.some((i) => i.name === 'by-title'), JSON.stringify(body));
    await open(`/database/${DB}/_index`);
    // Fauxton lists an index by its type and fields.
    await page.getByText('"json: title"').first().waitFor();
    await shot('11-mango-index');
  });

  await t.test('starts a replication on the Replication page and sees it complete', async () => {
    await open('/replication/_create');
    await page.locator('#replication-source').selectOption('REPLICATION_SOURCE_LOCAL');
    await page.locator('.replication__input-react-select input[role=combobox]').first().focus();
    await page.keyboard.type(DB);
    await page.keyboard.press('Enter');
    await page.locator('#select-replication-source-auth').selectOption('BASIC_AUTH');
    await page.locator('#replication-source-auth-username').fill(ADMIN.name);
    await page.locator('#replication-source-auth-password').fill(ADMIN.password);
    await page.locator('select#replication-target').first().selectOption('REPLICATION_TARGET_NEW_LOCAL_DATABASE');
    await page.locator('.replication__new-input').fill('fx-copy');
    await page.locator('#select-replication-target-auth').selectOption('BASIC_AUTH');
    await page.locator('#replication-target-auth-username').fill(ADMIN.name);
    await page.locator('#replication-target-auth-password').fill(ADMIN.password);
    await page.locator('.replication__doc-name-input').fill('fx-job');
    await page.locator('#replicate').click();
    await page.waitForURL(/#\/replication$/);
    let state = null;
    for (let i = 0; i < 100 && state !== 'completed'; i += 1) {
      const { body } = await admin('GET', '/_scheduler/docs');
      state = body.docs.find((d) => d.doc_id === 'fx-job')?.state;
      if (state !== 'completed') await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(state, 'completed');
    const copy = await admin('GET', '/fx-copy/doc-a');
    assert.equal(copy.body.title, 'edited');
    await open('/replication');
    const row = page.getByRole('row', { name: /fx-copy/ });
    await row.getByText('Completed').waitFor();
    await shot('12-replication');
  });

  await t.test('shows a _replicate job on its activity tab', async () => {
    const started = await admin('POST', '/_replicate', { source: `${server.url}/${DB}`, target: `${server.url}/fx-live`, create_target: true, continuous: true });
    assert.equal(started.status, 202, JSON.stringify(started.body));
    await open('/replication/_replicate');
    // Fauxton keeps the other tab's table when only the hash changes; loaded afresh it shows this one.
    await page.reload();
    await page.getByRole('row', { name: /fx-live/ }).waitFor();
    await shot('13-replicate-activity');
    await admin('POST', '/_replicate', { replication_id: started.body._local_id, cancel: true });
  });

  await t.test('deletes a database', async () => {
    await open('/_all_dbs');
    await page.getByLabel('Delete fx-copy', { exact: true }).click();
    await page.locator('.modal input[type=text]').fill('fx-copy');
    await shot('14-delete-database');
    await page.locator('.modal').getByRole('button', { name: 'Delete Database' }).click();
    await page.getByText('The database fx-copy has been deleted.').first().waitFor();
    assert.equal((await admin('GET', '/fx-copy')).status, 404);
  });

  await t.test('passes its own Verify Installation checks', async () => {
    await open('/verifyinstall');
    await page.getByRole('button', { name: /Verify/ }).click();
    const rows = page.locator('#dashboard-content tbody tr');
    // Database, documents, a view and a replication, each checked by Fauxton itself.
    for (const check of ['Create Database', 'Create Document', 'Update Document', 'Delete Document', 'Create View', 'Replication']) {
      await rows.filter({ hasText: check }).filter({ hasText: '✓' }).waitFor({ timeout: 60_000 });
    }
    await shot('15-verify-install');
  });

  await t.test('Fauxton threw nothing and Outpost refused nothing unexpected', () => {
    assert.deepEqual(problems.errors, []);
    // Fauxton asks whether a replication document id is free before it writes one, and
    // whether its installation check's databases are left from an earlier run.
    const expected = ['GET /_replicator/fx-job -> 404', 'GET /verifytestdb -> 404', 'GET /verifytestdb_replicate -> 404'];
    const unexpected = problems.failed.filter((f) => !expected.includes(f));
    assert.deepEqual(unexpected, []);
  });
});
