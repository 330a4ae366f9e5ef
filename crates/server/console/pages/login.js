// Sign in with a CouchDB session (`POST /_session`, an `AuthSession` cookie).

import * as api from '../api.js';
import { adminParty } from '../api.js';
import { h, mount, field, title, errorBox } from '../ui.js';

export async function render(ctx) {
  const next = ctx.query.get('next') || '#/';
  const s = await ctx.reloadSession();
  const name = h('input', { name: 'name', autocomplete: 'username', required: true });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const status = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'card narrow', onsubmit: submit },
    field('Name', name),
    field('Password', password),
    h('button', { type: 'submit' }, 'Sign in'),
    status);

  async function submit(e) {
    e.preventDefault();
    mount(status);
    try {
      await api.post('/_session', { name: name.value, password: password.value });
      await ctx.reloadSession();
      ctx.navigate(next.startsWith('#/login') ? '#/' : next);
    } catch (err) {
      mount(status, errorBox(err));
      password.select();
    }
  }

  const who = s && s.userCtx;
  mount(ctx.main,
    title('Sign in'),
    adminParty(s)
      ? h('p', { class: 'notice' },
        'This server has no admin configured: it is open to every client, and listens only on loopback. ',
        'You can use the console without signing in. ', h('a', { href: '#/' }, 'Go to the databases'), '.')
      : null,
    who && who.name ? h('p', {}, 'You are signed in as ', h('strong', {}, who.name), '.') : null,
    form);
  name.focus();
}
