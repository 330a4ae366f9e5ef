// One database's settings: Outpost's conflict policy and event-log retention (`/{db}/_outpost`),
// its `_security` (admins and members), and compaction.

import * as api from '../api.js';
import { h, mount, field, title, dbTabs, errorBox, toast } from '../ui.js';

const list = (text) => text.split(',').map((s) => s.trim()).filter(Boolean);
const joined = (arr) => (arr || []).join(', ');

export async function render(ctx) {
  const [db] = ctx.params;
  const [settings, security] = await Promise.all([
    api.get(`${api.dbPath(db)}/_outpost`),
    api.get(`${api.dbPath(db)}/_security`),
  ]);

  const policy = h('select', { name: 'conflict_policy' },
    ['manual', 'lww', 'merge'].map((p) => h('option', { value: p, selected: p === settings.conflict_policy }, p)));
  const lwwField = h('input', { name: 'lww_field', value: settings.lww_field || '', autocomplete: 'off' });
  const maxEvents = h('input', { name: 'max_events_per_doc', type: 'number', min: 1, inputmode: 'numeric', value: settings.retention ? settings.retention.max_events_per_doc ?? '' : '' });
  const maxAge = h('input', { name: 'max_age_seconds', type: 'number', min: 1, inputmode: 'numeric', value: settings.retention ? settings.retention.max_age_seconds ?? '' : '' });
  const policyStatus = h('div', { 'aria-live': 'polite' });

  async function savePolicy(e) {
    e.preventDefault();
    mount(policyStatus);
    const body = { conflict_policy: policy.value, lww_field: lwwField.value || null };
    const events = maxEvents.value ? Number(maxEvents.value) : null;
    const age = maxAge.value ? Number(maxAge.value) : null;
    body.retention = events || age ? { max_events_per_doc: events, max_age_seconds: age } : null;
    try {
      await api.put(`${api.dbPath(db)}/_outpost`, body);
      toast('Policy and retention saved');
    } catch (err) {
      mount(policyStatus, errorBox(err));
    }
  }

  const sec = {
    adminNames: h('input', { value: joined(security.admins && security.admins.names), autocomplete: 'off' }),
    adminRoles: h('input', { value: joined(security.admins && security.admins.roles), autocomplete: 'off' }),
    memberNames: h('input', { value: joined(security.members && security.members.names), autocomplete: 'off' }),
    memberRoles: h('input', { value: joined(security.members && security.members.roles), autocomplete: 'off' }),
  };
  const secStatus = h('div', { 'aria-live': 'polite' });
  async function saveSecurity(e) {
    e.preventDefault();
    mount(secStatus);
    const body = {
      ...security,
      admins: { names: list(sec.adminNames.value), roles: list(sec.adminRoles.value) },
      members: { names: list(sec.memberNames.value), roles: list(sec.memberRoles.value) },
    };
    try {
      await api.put(`${api.dbPath(db)}/_security`, body);
      toast('Security saved');
    } catch (err) {
      mount(secStatus, errorBox(err));
    }
  }

  async function compact() {
    try {
      await api.post(`${api.dbPath(db)}/_compact`, {});
      toast('Compaction started');
    } catch (err) {
      toast(err.message, 'bad');
    }
  }

  mount(ctx.main,
    title(db),
    dbTabs(db, 'settings'),
    h('section', { 'aria-labelledby': 'pol-h' },
      h('h2', { id: 'pol-h' }, 'Conflicts and history'),
      h('form', { onsubmit: savePolicy, class: 'card' },
        field('Conflict policy', policy, 'manual keeps conflicts for you to resolve; lww keeps the greatest value of a field; merge merges fields three-way'),
        field('Last-writer-wins field', lwwField, 'For lww and merge, e.g. updated_at'),
        h('fieldset', {},
          h('legend', {}, 'Event-log retention (empty keeps everything)'),
          field('Events kept per document', maxEvents),
          field('Oldest event kept, in seconds', maxAge)),
        h('button', { type: 'submit' }, 'Save policy'),
        policyStatus)),
    h('section', { 'aria-labelledby': 'sec-h' },
      h('h2', { id: 'sec-h' }, 'Security'),
      h('p', { class: 'meta' }, 'Names and roles, separated by commas. With no members, only server admins can read the database unless the server allows everyone.'),
      h('form', { onsubmit: saveSecurity, class: 'card' },
        h('fieldset', {}, h('legend', {}, 'Admins'), field('Names', sec.adminNames), field('Roles', sec.adminRoles)),
        h('fieldset', {}, h('legend', {}, 'Members'), field('Names', sec.memberNames), field('Roles', sec.memberRoles)),
        h('button', { type: 'submit' }, 'Save security'),
        secStatus)),
    h('section', { 'aria-labelledby': 'maint-h' },
      h('h2', { id: 'maint-h' }, 'Maintenance'),
      h('p', {}, 'Compaction drops the bodies of superseded revisions and applies retention to the event log.'),
      h('button', { type: 'button', onclick: compact }, 'Compact now')));
}
