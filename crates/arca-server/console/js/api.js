// Calls to Arca's public API with the signed-in caller's token, and its
// RFC 9457 problems as errors. Response bodies are parsed losslessly (see
// jsonedit.js): a 64-bit integer or a 1.0 comes back to the editor as the
// server sent it, so saving a document never rounds or retypes a number.

import {h} from './dom.js';
import {parse} from './jsonedit.js';
import {session} from './session.js';

/** The API's base path: the console lives at `<base>console/` (a proxy prefix included). */
export const API_BASE = new URL('../', location.href).pathname;

/** A failed call: the status and the problem document (or what stood for it). */
export class ApiError extends Error {
  constructor(status, problem, requestId) {
    super(problem?.detail ? String(problem.detail) : String(problem?.title ?? `HTTP ${status}`));
    this.status = status;
    this.problem = problem || {};
    this.requestId = requestId;
  }

  /** The 422 `errors` list: [{path, message}]. */
  get errors() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }

  get detail() {
    return this.problem.detail === undefined ? '' : String(this.problem.detail);
  }
}

let onUnauthorized = () => {};

/** What to do when the API answers 401 to the signed-in caller. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/**
 * `method path` with the caller's token. `body` is a string (sent as is)
 * or a value (sent as JSON); `query` an object of parameters (empty ones
 * dropped); `headers` extra headers. Resolves to {status, data, text,
 * etag, location, requestId}; rejects with an ApiError.
 */
export async function api(method, path, {body, query, headers, token} = {}) {
  const url = new URL(API_BASE + path.replace(/^\//, ''), location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
  }
  const hdrs = new Headers(headers || {});
  const bearer = token ?? session()?.token;
  if (bearer) hdrs.set('Authorization', `Bearer ${bearer}`);
  let payload;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    if (!hdrs.has('Content-Type')) hdrs.set('Content-Type', 'application/json');
  }
  let res;
  try {
    res = await fetch(url, {method, headers: hdrs, body: payload, cache: 'no-store', credentials: 'omit'});
  } catch (e) {
    throw new ApiError(0, {title: 'The server could not be reached', detail: String(e.message || e)}, null);
  }
  const requestId = res.headers.get('x-request-id');
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = parse(text).value;
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const problem = data && typeof data === 'object' && !Array.isArray(data) ? data : {title: res.statusText || `HTTP ${res.status}`};
    const err = new ApiError(res.status, problem, requestId);
    if (res.status === 401 && bearer && token === undefined) onUnauthorized(err);
    throw err;
  }
  return {status: res.status, data, text, etag: res.headers.get('etag'), location: res.headers.get('location'), requestId};
}

/** A problem as a block of text: title and status, detail, field errors, request id. */
export function problemView(err, lead) {
  const p = err instanceof ApiError ? err.problem : {title: String(err?.message || err)};
  const status = err instanceof ApiError && err.status ? ` (${err.status})` : '';
  return h('div', {class: 'problem', role: 'alert'},
    lead ? h('p', {}, lead) : null,
    h('p', {}, h('strong', {}, `${p.title ?? 'Error'}${status}`), p.detail !== undefined ? ` ${p.detail}` : ''),
    err instanceof ApiError && err.errors.length
      ? h('ul', {}, err.errors.map((e) => h('li', {}, h('code', {}, String(e.path ?? '')), ` ${e.message ?? ''}`)))
      : null,
    err instanceof ApiError && err.requestId ? h('p', {class: 'muted'}, `Request id: ${err.requestId}`) : null);
}
