// Field notes: notes kept in the browser (PouchDB on IndexedDB) and synced live with the
// signed-in user's own Outpost database (`couch_peruser`), so the app works the same offline;
// conflicting edits are shown and resolved by the user; reports go to a REST backend through
// `outpost gateway`, which queues them while the backend is down.
(function () {
  'use strict';

  const USER_KEY = 'field-notes-user';
  const $ = (id) => document.getElementById(id);
  const state = { user: null, db: null, sync: null, changes: null, syncState: 'starting', timer: null };

  /** The database `couch_peruser` gives a user: userdb- and the name's UTF-8 bytes in hex. */
  function userDb(name) {
    return 'userdb-' + Array.from(new TextEncoder().encode(name), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function setStatus() {
    const status = $('status');
    const online = navigator.onLine;
    const text = !online ? 'offline' : state.syncState;
    status.textContent = text;
    status.className = text;
  }

  // ---- sign-in --------------------------------------------------------------------------

  function showSignIn() {
    $('app').hidden = true;
    $('signin').hidden = false;
    state.syncState = 'signed out';
    setStatus();
  }

  $('signin-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    $('signin-error').textContent = '';
    const name = $('signin-name').value.trim();
    try {
      const res = await fetch('/couch/_session', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name, password: $('signin-password').value }),
      });
      if (!res.ok) {
        const body = await res.json().catch(() => ({}));
        $('signin-error').textContent = body.reason || `sign-in failed (${res.status})`;
        return;
      }
    } catch {
      $('signin-error').textContent = 'no network: sign in once online';
      return;
    }
    localStorage.setItem(USER_KEY, name);
    start(name);
  });

  $('signout').addEventListener('click', async () => {
    stop();
    localStorage.removeItem(USER_KEY);
    await fetch('/couch/_session', { method: 'DELETE', credentials: 'same-origin' }).catch(() => {});
    showSignIn();
  });

  // ---- sync -----------------------------------------------------------------------------

  function startSync() {
    const remote = new PouchDB(`${location.origin}/couch/${userDb(state.user)}`, {
      skip_setup: true,
      fetch: (url, opts) => PouchDB.fetch(url, { ...opts, credentials: 'same-origin' }),
    });
    state.sync = state.db
      .sync(remote, {
        live: true,
        retry: true,
        // Come back quickly after a network change; never wait more than two seconds.
        back_off_function: (delay) => Math.min(2000, delay ? delay * 2 : 250),
      })
      .on('active', () => {
        state.syncState = 'syncing';
        setStatus();
      })
      .on('paused', (err) => {
        state.syncState = err ? 'waiting for network' : 'synced';
        setStatus();
      })
      .on('denied', () => {
        state.syncState = 'denied';
        setStatus();
      })
      .on('error', () => {
        state.syncState = 'sync error';
        setStatus();
      });
  }

  function start(name) {
    state.user = name;
    $('user').textContent = name;
    $('signin').hidden = true;
    $('app').hidden = false;
    state.db = new PouchDB(`field-notes-${name}`);
    state.changes = state.db.changes({ since: 'now', live: true }).on('change', () => render());
    startSync();
    state.timer = setInterval(() => followReports(), 1000);
    setStatus();
    render();
  }

  function stop() {
    if (state.sync) state.sync.cancel();
    if (state.changes) state.changes.cancel();
    clearInterval(state.timer);
    state.sync = state.changes = state.db = null;
  }

  window.addEventListener('online', () => {
    // Restart at once instead of waiting for the retry's back-off.
    if (state.sync) {
      state.sync.cancel();
      startSync();
    }
    setStatus();
    followReports();
  });
  window.addEventListener('offline', setStatus);

  // ---- notes ----------------------------------------------------------------------------

  $('note-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = $('note-text').value.trim();
    if (!text) return;
    const now = new Date().toISOString();
    await state.db.put({ _id: `note:${now}:${Math.random().toString(16).slice(2, 8)}`, type: 'note', text, created_at: now });
    $('note-text').value = '';
    render();
  });

  async function saveEdit(id, text) {
    const doc = await state.db.get(id);
    doc.text = text;
    doc.updated_at = new Date().toISOString();
    await state.db.put(doc);
    render();
  }

  /** Keeps the version `keepRev` of a conflicted note: it is written over the winning revision
   * and every other branch is deleted, so every replica ends with the same one. */
  async function resolve(id, keepRev) {
    const doc = await state.db.get(id, { conflicts: true });
    const kept = await state.db.get(id, { rev: keepRev });
    const losers = doc._conflicts || [];
    delete doc._conflicts;
    const updates = [{ ...doc, text: kept.text, updated_at: new Date().toISOString() }];
    for (const rev of losers) updates.push({ _id: id, _rev: rev, _deleted: true });
    await state.db.bulkDocs(updates);
    render();
  }

  function noteItem(doc, versions) {
    const li = document.createElement('li');
    li.className = 'note';
    li.dataset.id = doc._id;
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = doc.text;
    const edit = document.createElement('button');
    edit.type = 'button';
    edit.className = 'edit';
    edit.textContent = 'Edit';
    edit.setAttribute('aria-label', `Edit "${doc.text}"`);
    edit.addEventListener('click', () => {
      const form = document.createElement('form');
      form.className = 'edit-form';
      const input = document.createElement('input');
      input.value = doc.text;
      input.setAttribute('aria-label', 'Note text');
      const save = document.createElement('button');
      save.type = 'submit';
      save.textContent = 'Save';
      form.append(input, save);
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        // No longer being edited: the next render replaces the item.
        form.remove();
        saveEdit(doc._id, input.value.trim());
      });
      li.replaceChildren(form);
      input.focus();
    });
    li.append(text, edit);
    if (versions.length > 1) {
      li.classList.add('conflict');
      const box = document.createElement('div');
      box.className = 'conflict-box';
      box.setAttribute('role', 'group');
      box.setAttribute('aria-label', 'Conflicting versions');
      box.append('Edited in two places. Keep: ');
      for (const version of versions) {
        const keep = document.createElement('button');
        keep.type = 'button';
        keep.className = 'keep';
        keep.dataset.text = version.text;
        keep.textContent = version.text;
        keep.addEventListener('click', () => resolve(doc._id, version._rev));
        box.append(keep);
      }
      li.append(box);
    }
    return li;
  }

  // ---- reports --------------------------------------------------------------------------

  $('report-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const now = new Date().toISOString();
    const report = {
      _id: `report:${now}:${Math.random().toString(16).slice(2, 8)}`,
      type: 'report',
      title: $('report-title').value.trim(),
      body: $('report-body').value,
      created_at: now,
      state: 'sending',
    };
    await state.db.put(report);
    $('report-title').value = '';
    $('report-body').value = '';
    render();
    await send(report._id);
  });

  async function update(id, changes) {
    const doc = await state.db.get(id);
    await state.db.put({ ...doc, ...changes });
    render();
  }

  /** Sends a report through the gateway. Its id is the `Idempotency-Key`, so sending it again
   * (after a lost answer, from another device) never makes the backend apply it twice. */
  async function send(id) {
    const report = await state.db.get(id);
    let res;
    try {
      res = await fetch('/api/reports', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': report._id },
        body: JSON.stringify({ title: report.title, body: report.body }),
      });
    } catch {
      return update(id, { state: 'waiting' });
    }
    if (res.status === 202) {
      const queued = await res.json();
      return update(id, { state: 'queued', status_url: queued.status_url });
    }
    if (res.ok) return update(id, { state: 'delivered' });
    return update(id, { state: 'failed', error: `HTTP ${res.status}` });
  }

  /** Sends reports that could not leave, and asks the gateway about the queued ones. */
  let following = false;
  async function followReports() {
    if (!state.db || following || !navigator.onLine) return;
    following = true;
    try {
      const all = await state.db.allDocs({ include_docs: true, startkey: 'report:', endkey: 'report:\uffff' });
      for (const { doc } of all.rows) {
        if (doc.state === 'waiting' || doc.state === 'sending') {
          await send(doc._id);
        } else if (doc.state === 'queued' && doc.status_url) {
          const res = await fetch(`/api${doc.status_url}`).catch(() => null);
          if (!res || !res.ok) continue;
          const entry = await res.json();
          if (entry.state === 'done') await update(doc._id, { state: 'delivered' });
          else if (entry.state === 'dead') await update(doc._id, { state: 'failed', error: entry.last_error || 'dead-lettered' });
        }
      }
    } finally {
      following = false;
    }
  }

  const REPORT_LABELS = {
    sending: 'sending',
    waiting: 'waiting for network',
    queued: 'queued',
    delivered: 'delivered',
    failed: 'failed',
  };

  function reportItem(doc) {
    const li = document.createElement('li');
    li.className = 'report';
    li.dataset.id = doc._id;
    const title = document.createElement('span');
    title.className = 'title';
    title.textContent = doc.title;
    const badge = document.createElement('span');
    badge.className = `badge ${doc.state}`;
    badge.textContent = REPORT_LABELS[doc.state] || doc.state;
    li.append(title, badge);
    if (doc.error) li.append(` (${doc.error})`);
    return li;
  }

  // ---- rendering ------------------------------------------------------------------------

  let rendering = null;
  function render() {
    // One render at a time; a request during one runs once after it.
    if (rendering) {
      rendering.again = true;
      return;
    }
    rendering = { again: false };
    draw()
      .catch((err) => console.error('render failed', err))
      .finally(() => {
        const again = rendering.again;
        rendering = null;
        if (again) render();
      });
  }

  async function draw() {
    if (!state.db) return;
    const db = state.db;
    const all = await db.allDocs({ include_docs: true, conflicts: true });
    const notes = [];
    const reports = [];
    for (const { doc } of all.rows) {
      if (doc.type === 'note') {
        const versions = [doc];
        for (const rev of doc._conflicts || []) versions.push(await db.get(doc._id, { rev }));
        notes.push(noteItem(doc, versions));
      } else if (doc.type === 'report') {
        reports.push(reportItem(doc));
      }
    }
    // Keep a note that is being edited as it is.
    const editing = new Set([...document.querySelectorAll('#notes li .edit-form')].map((f) => f.closest('li').dataset.id));
    const current = new Map([...document.querySelectorAll('#notes li')].map((li) => [li.dataset.id, li]));
    $('notes').replaceChildren(...notes.map((li) => (editing.has(li.dataset.id) ? current.get(li.dataset.id) : li)));
    $('reports').replaceChildren(...reports);
  }

  // ---- start ----------------------------------------------------------------------------

  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.register('/sw.js').catch((err) => console.error('service worker', err));
  }
  setStatus();
  const user = localStorage.getItem(USER_KEY);
  if (user) start(user);
  else showSignIn();
})();
