// The sign-in page: the identity provider (when the server names one and
// a console client), the dev-mode hint, and pasting a token, which always
// works. A pasted token is tried against the API before it is kept.

import {h, field, setFieldError} from '../dom.js';
import {api, ApiError} from '../api.js';
import * as session from '../session.js';
import {beginSignIn} from '../oidc.js';

export function signInPage(view, {config, message, onSignedIn}) {
  const status = h('div', {class: 'signin-status', role: 'alert'},
    message ? h('p', {class: message.kind === 'ok' ? 'notice ok' : 'problem'}, message.text) : null);
  view.append(h('h1', {tabindex: '-1'}, 'Sign in'), status);

  if (config.oidc) {
    let host = config.oidc.issuer;
    try {
      host = new URL(config.oidc.issuer).host;
    } catch {
      // shown as configured
    }
    const button = h('button', {type: 'button', class: 'primary', id: 'oidc-signin'}, `Sign in with ${host}`);
    button.addEventListener('click', async () => {
      button.disabled = true;
      try {
        await beginSignIn(config.oidc, location.hash);
      } catch (e) {
        button.disabled = false;
        status.replaceChildren(h('p', {class: 'problem'}, e.message));
      }
    });
    view.append(h('section', {class: 'card'}, h('h2', {}, 'Identity provider'), button));
  }
  if (config.dev) {
    view.append(h('section', {class: 'card'}, h('h2', {}, 'Dev mode'),
      h('p', {}, 'This server runs with --dev: open the console link it printed at start (it signs in as dev-admin), or paste its ARCA_TOKEN below. More tokens: ',
        h('code', {}, 'arca token --sub NAME --role ROLE'), '.')));
  }

  const input = h('textarea', {rows: 4, spellcheck: 'false', autocomplete: 'off', class: 'code', id: 'token-input',
    placeholder: 'eyJ…'});
  const f = field('Access token (JWT)', input, 'Used for this tab only: kept in session storage, sent only to this server.');
  const submit = h('button', {type: 'submit', class: config.oidc ? 'secondary' : 'primary'}, 'Use this token');
  const form = h('form', {class: 'card', id: 'token-form', 'aria-labelledby': 'token-heading'},
    h('h2', {id: 'token-heading'}, 'Paste a token'), f.wrap, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setFieldError(f, null);
    const raw = input.value.trim();
    if (!raw) {
      setFieldError(f, 'Paste a token first.');
      input.focus();
      return;
    }
    const token = raw.replace(/^Bearer\s+/i, '');
    try {
      session.signOut();
      // Decoding only tells the expiry; the server decides whether the token is good.
      const claims = session.decodeJwt(token);
      if (!claims) throw new Error('This is not a JWT (three base64url parts separated by dots).');
      submit.disabled = true;
      try {
        await api('GET', '/v1/collections', {token});
      } catch (err) {
        // 403: a valid token without the schema admin role; still a caller.
        if (!(err instanceof ApiError) || err.status !== 403) throw err;
      }
      session.signIn(token, 'pasted token');
      onSignedIn();
    } catch (err) {
      submit.disabled = false;
      setFieldError(f, err instanceof ApiError ? `The server refused it: ${err.detail || err.message}` : err.message);
      input.focus();
    }
  });
  view.append(form);
}
