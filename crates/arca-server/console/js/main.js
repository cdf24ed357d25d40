// The console's entry point: takes a dev-link token out of the address bar
// before anything else, reads /console/config.json, finishes an OIDC
// sign-in when the identity provider sends the browser back, then routes
// `#/...` addresses to pages. Each page renders into a fresh element that
// replaces the previous one, so a slow answer for a page already left
// lands nowhere.

import {h, replace, duration} from './dom.js';
import {api, setUnauthorizedHandler, problemView} from './api.js';
import * as session from './session.js';
import {completeSignIn, isCallback} from './oidc.js';
import {signInPage} from './pages/signin.js';
import {collectionsPage} from './pages/collections.js';
import {definitionPage} from './pages/definition.js';
import {documentsPage} from './pages/documents.js';
import {documentPage} from './pages/document.js';
import {accessPage} from './pages/access.js';
import {eventsPage} from './pages/events.js';
import {filesPage} from './pages/files.js';

// First: a token in the fragment (the --dev link) leaves the URL at once.
const fragmentToken = session.takeFragmentToken();

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const sessionBox = document.getElementById('session');
const notice = document.getElementById('notice');

const NAME = '([a-z][a-z0-9_]{0,62})';

/**
 * Pages by route (the path part of `#/...`). A page is `(view, ctx, match)`:
 * it appends to `view`, reads `ctx.config`, `ctx.params` (the address's
 * query), and uses `ctx.notify` and `ctx.go`. NAV shows a feature's link
 * once config.json's `features` says the server has it.
 */
const ROUTES = [
  [new RegExp('^/collections$'), (view, ctx) => collectionsPage(view, ctx)],
  [new RegExp('^/collections/new$'), (view, ctx) => definitionPage(view, ctx, null)],
  [new RegExp(`^/collections/${NAME}$`), (view, ctx, m) => definitionPage(view, ctx, m[1])],
  [new RegExp(`^/collections/${NAME}/documents$`), (view, ctx, m) => documentsPage(view, ctx, m[1])],
  [new RegExp(`^/collections/${NAME}/documents/new$`), (view, ctx, m) => documentPage(view, ctx, m[1], null)],
  [new RegExp(`^/collections/${NAME}/documents/([^/]+)$`), (view, ctx, m) => documentPage(view, ctx, m[1], decodeURIComponent(m[2]))],
  [new RegExp('^/access$'), (view, ctx) => accessPage(view, ctx)],
  [new RegExp('^/events$'), (view, ctx) => eventsPage(view, ctx)],
  [new RegExp('^/files$'), (view, ctx) => filesPage(view, ctx)],
];

/** Main navigation: [label, route, feature (config.features key) or null]. */
const NAV = [
  ['Collections', '#/collections', null],
  ['Access', '#/access', null],
  ['Files', '#/files', 'files'],
  ['Events', '#/events', 'events'],
];

let config = null;
/** What the sign-in page says: {text, kind} ('problem' or 'ok'), or null. */
let signInMessage = null;
let firstRender = true;
let noticeTimer = null;

/** Shows a short message in the status line for a few seconds. */
function notify(message, kind = 'ok') {
  replace(notice, h('p', {class: `notice ${kind}`}, message));
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => notice.replaceChildren(), 6000);
}

function signOut(text, kind = 'problem') {
  session.signOut();
  signInMessage = text ? {text, kind} : null;
  render();
}

function renderSession() {
  const s = session.session();
  const roles = session.rolesOf(session.claim(s.claims, config.claims.roles));
  const tenant = session.claim(s.claims, config.claims.tenant);
  const left = session.secondsLeft();
  replace(sessionBox,
    h('span', {class: 'who', title: `signed in by ${s.how}`}, String(s.claims.sub ?? '(no sub)')),
    h('span', {class: 'roles'}, roles.length ? roles.join(', ') : 'no roles'),
    tenant !== undefined && tenant !== null ? h('span', {class: 'tenant'}, `tenant ${tenant}`) : null,
    h('span', {class: left < 300 ? 'expiry warn' : 'expiry', id: 'expiry',
      title: new Date(s.claims.exp * 1000).toLocaleString()}, `expires in ${duration(left)}`),
    h('button', {type: 'button', class: 'secondary', onclick: () => signOut('Signed out.', 'ok')}, 'Sign out'));
  sessionBox.hidden = false;
}

function renderNav(path) {
  const items = NAV.filter(([, , feature]) => !feature || config.features?.[feature]);
  replace(nav, h('ul', {}, items.map(([label, href]) => {
    const current = path === href.slice(1) || path.startsWith(`${href.slice(1)}/`)
      || (href === '#/collections' && path.startsWith('/collections'));
    return h('li', {}, h('a', {href, 'aria-current': current ? 'page' : null}, label));
  })));
  nav.hidden = false;
}

/** Renders the page for the current address. */
function render() {
  const view = h('div', {class: 'view'});
  replace(main, view);
  if (!session.session()) {
    nav.hidden = true;
    sessionBox.hidden = true;
    signInPage(view, {config, message: signInMessage, onSignedIn: () => {
      signInMessage = null;
      if (!location.hash.startsWith('#/')) history.replaceState(null, '', '#/collections');
      render();
    }});
    return;
  }
  const hash = location.hash.startsWith('#/') ? location.hash.slice(1) : '/collections';
  const [path, query = ''] = hash.split('?');
  renderNav(path);
  renderSession();
  const ctx = {config, params: new URLSearchParams(query), notify, go: (to) => { location.hash = to; }};
  const found = ROUTES.map(([re, page]) => [re.exec(path), page]).find(([m]) => m);
  if (!found) {
    view.append(h('h1', {tabindex: '-1'}, 'Not found'), h('p', {}, 'No page at this address. ', h('a', {href: '#/collections'}, 'Collections')));
  } else {
    const [m, page] = found;
    const failed = (e) => view.append(problemView(e, 'This page failed:'));
    try {
      Promise.resolve(page(view, ctx, m)).catch(failed);
    } catch (e) {
      failed(e); // a malformed address (bad percent-encoding) throws before the page starts
    }
  }
  // After a navigation, keyboard and screen-reader users land on the new
  // page's heading; a fresh load starts at the top (skip link, menu).
  const heading = view.querySelector('h1');
  if (heading && !firstRender) heading.focus();
  firstRender = false;
}

/** Once a token expires, the console says so and asks to sign in again. */
function tick() {
  const s = session.session();
  if (!s) return;
  const left = session.secondsLeft();
  if (left <= 0) {
    signOut(`Your token expired at ${new Date(s.claims.exp * 1000).toLocaleTimeString()}. Sign in again.`);
    return;
  }
  const el = document.getElementById('expiry');
  if (el) {
    el.textContent = `expires in ${duration(left)}`;
    el.classList.toggle('warn', left < 300);
  }
}

/** Signs in with the token of a dev link. */
function signInWith(token) {
  try {
    session.signIn(token, 'dev link');
    signInMessage = null;
  } catch (e) {
    session.signOut();
    signInMessage = {text: `The token in the link cannot be used: ${e.message}`, kind: 'problem'};
  }
}

async function boot() {
  document.getElementById('skip').addEventListener('click', (e) => {
    e.preventDefault();
    main.focus();
  });
  try {
    const res = await api('GET', '/console/config.json', {token: ''});
    config = JSON.parse(res.text);
  } catch (e) {
    replace(main, h('div', {class: 'view'}, h('h1', {}, 'Arca console'), problemView(e, 'The console could not read its configuration:')));
    return;
  }
  if (fragmentToken) {
    signInWith(fragmentToken);
  } else if (isCallback()) {
    try {
      const {token, returnTo} = await completeSignIn(config.oidc);
      session.signIn(token, 'identity provider');
      history.replaceState(null, '', `${location.pathname}${returnTo}`);
    } catch (e) {
      signInMessage = {text: e.message, kind: 'problem'};
    }
  } else {
    session.restore();
  }
  setUnauthorizedHandler((err) => signOut(`The server refused the token: ${err.detail || err.message}. Sign in again.`));
  window.addEventListener('hashchange', () => {
    // The dev link opened in a tab that already shows the console.
    const token = session.takeFragmentToken();
    if (token) signInWith(token);
    render();
  });
  setInterval(tick, 5000);
  render();
}

boot();
