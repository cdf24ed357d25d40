// Signing in at the OIDC issuer: the authorization code flow with PKCE
// (S256) for a public client (`console.client_id`, no secret). The code
// verifier, `state` and `nonce` live in this tab's sessionStorage for the
// round trip to the identity provider only, and are removed when it
// returns. `state` must come back unchanged, the ID token must carry our
// `nonce`, name the issuer and have our client among its audiences; the
// access token then signs the console in (the server verifies it on every
// call). The ID token comes straight from the token endpoint over the
// page's own connection, so its signature is not checked here (OIDC Core
// 3.1.3.7 allows TLS to stand for it); the console never uses it for
// anything but these checks.

import {decodeJwt, now} from './session.js';

const KEY = 'arca.console.oidc';

function base64url(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function random(n) {
  return base64url(crypto.getRandomValues(new Uint8Array(n)));
}

/** The S256 code challenge of a verifier: base64url(SHA-256(verifier)). */
export async function codeChallenge(verifier) {
  if (!crypto.subtle) {
    throw new Error('Signing in at the identity provider needs a secure page (https://, or http://localhost).');
  }
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

const trim = (s) => String(s).replace(/\/+$/, '');

/** The issuer's discovery document (its issuer must be the configured one). */
export async function discover(issuer) {
  let res;
  try {
    res = await fetch(`${trim(issuer)}/.well-known/openid-configuration`, {credentials: 'omit', cache: 'no-store'});
  } catch (e) {
    throw new Error(`The identity provider at ${issuer} could not be reached (${e.message}). Its discovery document must allow this origin (CORS).`);
  }
  if (!res.ok) throw new Error(`The identity provider's discovery document answered ${res.status}.`);
  const doc = await res.json();
  if (trim(doc.issuer) !== trim(issuer)) throw new Error(`The discovery document names another issuer (${doc.issuer}).`);
  if (!doc.authorization_endpoint || !doc.token_endpoint) throw new Error('The discovery document lacks the authorization or token endpoint.');
  return doc;
}

/** The redirect URI registered for the console: its folder (`https://HOST/console/`). */
export function redirectUri() {
  return new URL('./', location.href).href;
}

/** Starts signing in: remembers the round trip's secrets and goes to the IdP. */
export async function beginSignIn(oidc, returnTo) {
  const doc = await discover(oidc.issuer);
  const verifier = random(32);
  const flight = {
    state: random(16),
    nonce: random(16),
    verifier,
    issuer: oidc.issuer,
    redirect_uri: redirectUri(),
    return_to: returnTo && returnTo.startsWith('#/') ? returnTo : '#/collections',
  };
  const url = new URL(doc.authorization_endpoint);
  url.searchParams.set('response_type', 'code');
  url.searchParams.set('client_id', oidc.client_id);
  url.searchParams.set('redirect_uri', flight.redirect_uri);
  url.searchParams.set('scope', oidc.scope);
  url.searchParams.set('state', flight.state);
  url.searchParams.set('nonce', flight.nonce);
  url.searchParams.set('code_challenge', await codeChallenge(verifier));
  url.searchParams.set('code_challenge_method', 'S256');
  sessionStorage.setItem(KEY, JSON.stringify(flight));
  location.assign(url.toString());
}

/** Whether this page load is the IdP sending the browser back. */
export function isCallback() {
  const q = new URLSearchParams(location.search);
  return (q.has('code') || q.has('error')) && q.has('state');
}

/**
 * Finishes signing in from the callback's query: checks state, exchanges
 * the code (with the verifier), checks the ID token. Always clears the
 * query from the address bar and the round trip's secrets from storage.
 * Resolves to {token, returnTo}; rejects with an Error saying what failed.
 */
export async function completeSignIn(oidc) {
  const q = new URLSearchParams(location.search);
  const saved = sessionStorage.getItem(KEY);
  sessionStorage.removeItem(KEY);
  let flight = null;
  try {
    flight = saved ? JSON.parse(saved) : null;
  } catch {
    flight = null;
  }
  history.replaceState(null, '', `${location.pathname}${flight?.return_to ?? '#/collections'}`);
  if (!flight) throw new Error('No sign-in was in progress in this tab; start again.');
  if (q.get('state') !== flight.state) throw new Error('The identity provider answered with another state than the one sent; sign-in refused.');
  if (q.has('error')) {
    throw new Error(`The identity provider refused the sign-in: ${q.get('error')}${q.has('error_description') ? ` (${q.get('error_description')})` : ''}`);
  }
  // RFC 9207: when the IdP names itself, it must be the one we went to.
  if (q.has('iss') && trim(q.get('iss')) !== trim(flight.issuer)) throw new Error('The answer names another issuer; sign-in refused.');
  if (!oidc || trim(oidc.issuer) !== trim(flight.issuer)) throw new Error('The server now names another issuer; start again.');
  const doc = await discover(flight.issuer);
  const form = new URLSearchParams({
    grant_type: 'authorization_code',
    code: q.get('code') || '',
    redirect_uri: flight.redirect_uri,
    client_id: oidc.client_id,
    code_verifier: flight.verifier,
  });
  let res;
  try {
    res = await fetch(doc.token_endpoint, {
      method: 'POST',
      headers: {'Content-Type': 'application/x-www-form-urlencoded'},
      body: form.toString(),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch (e) {
    throw new Error(`The token endpoint could not be reached (${e.message}); it must allow this origin (CORS) and be on the issuer's origin.`);
  }
  let body = {};
  try {
    body = await res.json();
  } catch {
    body = {};
  }
  if (!res.ok) {
    throw new Error(`The token endpoint refused the code: ${body.error ?? res.status}${body.error_description ? ` (${body.error_description})` : ''}`);
  }
  if (typeof body.access_token !== 'string') throw new Error('The token endpoint sent no access token.');
  const id = body.id_token ? decodeJwt(body.id_token) : null;
  if (!id) throw new Error('The token endpoint sent no ID token (is "openid" among console.scope?).');
  if (id.nonce !== flight.nonce) throw new Error('The ID token does not carry this sign-in\'s nonce; sign-in refused.');
  if (trim(id.iss) !== trim(flight.issuer)) throw new Error('The ID token names another issuer; sign-in refused.');
  const aud = Array.isArray(id.aud) ? id.aud : [id.aud];
  if (!aud.includes(oidc.client_id)) throw new Error('The ID token is not for this client; sign-in refused.');
  if (typeof id.exp !== 'number' || id.exp < now() - 60) throw new Error('The ID token has expired.');
  return {token: body.access_token, returnTo: flight.return_to};
}
