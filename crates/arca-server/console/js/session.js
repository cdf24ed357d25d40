// The signed-in caller: one bearer token, kept in memory and in this
// tab's sessionStorage (so a reload keeps it; closing the tab forgets it).
// Never in a cookie, never in a URL: a token that arrives in the address
// bar (the dev link's #token=...) is taken out of it before anything else
// runs. The console only reads the token's claims to show who is signed
// in and when the token expires; the server alone decides what it allows.

const KEY = 'arca.console.token';

let current = null;

/**
 * Takes a token from the URL fragment (`#token=...`, the `--dev` link) and
 * removes it from the address bar and history at once. Returns it, or null.
 */
export function takeFragmentToken() {
  const hash = location.hash;
  if (!hash.startsWith('#token=')) return null;
  const raw = hash.slice('#token='.length).split('&')[0];
  history.replaceState(null, '', `${location.pathname}${location.search}#/collections`);
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

/** The claims of a JWT (its payload, not verified: display only), or null. */
export function decodeJwt(token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return null;
  try {
    let b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    b64 += '='.repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

/** Seconds since the epoch. */
export function now() {
  return Date.now() / 1000;
}

/**
 * Signs in with `token` (throws an Error saying why it cannot be used).
 * `how` is shown in the session area ("dev link", "identity provider", "pasted").
 */
export function signIn(token, how) {
  const t = String(token).trim().replace(/^Bearer\s+/i, '');
  const claims = decodeJwt(t);
  if (!claims) throw new Error('This is not a JWT (three base64url parts separated by dots).');
  if (typeof claims.exp !== 'number') throw new Error('The token has no expiry (exp); Arca refuses such tokens.');
  if (claims.exp <= now()) {
    throw new Error(`The token expired at ${new Date(claims.exp * 1000).toLocaleString()}.`);
  }
  current = {token: t, claims, how};
  sessionStorage.setItem(KEY, JSON.stringify({token: t, how}));
  return current;
}

/** Restores the session of this tab, if its token is still valid. */
export function restore() {
  const saved = sessionStorage.getItem(KEY);
  if (!saved) return null;
  try {
    const {token, how} = JSON.parse(saved);
    return signIn(token, how);
  } catch {
    sessionStorage.removeItem(KEY);
    return null;
  }
}

/** Forgets the token (memory and sessionStorage). */
export function signOut() {
  current = null;
  sessionStorage.removeItem(KEY);
}

/** The session: {token, claims, how}, or null. */
export function session() {
  return current;
}

/** Seconds until the token expires (negative once it has). */
export function secondsLeft() {
  return current ? current.claims.exp - now() : -1;
}

/** A claim by name: the literal name first, then a dotted path (as the server reads it). */
export function claim(claims, name) {
  if (!claims) return undefined;
  if (Object.prototype.hasOwnProperty.call(claims, name)) return claims[name];
  let cur = claims;
  for (const part of name.split('.')) {
    if (!cur || typeof cur !== 'object' || !Object.prototype.hasOwnProperty.call(cur, part)) return undefined;
    cur = cur[part];
  }
  return cur;
}

/** Roles from a claim value, as the server reads them. */
export function rolesOf(value) {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.filter((r) => typeof r === 'string');
  return [];
}
