// Building the page from data, safely. Every string that reaches the page
// goes through a text node or an attribute value: nothing here (or
// anywhere in the console) parses HTML, so a document holding "<script>"
// or a "javascript:" link is shown as the characters it holds. Links are
// only ever in-page routes ("#/...") built from validated names.

import {stringify} from './jsonedit.js';

/** Attributes `h` sets with setAttribute (values are text). */
const ATTRIBUTES = new Set([
  'id', 'class', 'for', 'type', 'name', 'role', 'title', 'placeholder', 'href',
  'tabindex', 'rows', 'cols', 'spellcheck', 'autocomplete', 'wrap', 'lang',
  'min', 'max', 'step', 'maxlength', 'scope', 'colspan', 'inputmode', 'pattern', 'alt',
]);

/** Boolean properties `h` sets when true. */
const FLAGS = new Set(['disabled', 'readOnly', 'required', 'hidden', 'checked', 'selected', 'multiple']);

/**
 * Creates an element: `h('button', {class: 'x', onclick: fn}, 'Save')`.
 * Children are nodes, strings (as text), numbers, or arrays of those;
 * null and false are skipped.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'value') {
      el.value = String(value);
    } else if (key === 'text') {
      el.textContent = String(value);
    } else if (key === 'href') {
      if (!String(value).startsWith('#/')) throw new Error(`refusing a link that is not an in-page route: ${value}`);
      el.setAttribute('href', String(value));
    } else if (FLAGS.has(key)) {
      el[key] = Boolean(value);
    } else if (ATTRIBUTES.has(key) || key.startsWith('aria-') || key.startsWith('data-')) {
      el.setAttribute(key, String(value));
    } else {
      throw new Error(`h: unknown property ${key}`);
    }
  }
  append(el, children);
  return el;
}

/** Appends children (see `h`) to `el`. */
export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A value as one line of text for a table cell. */
export function cellText(value, max = 80) {
  let s;
  if (value === undefined) s = '';
  else if (typeof value === 'string') s = value;
  else s = stringify(value, 0);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** A route (`#/...`) from segments, each percent-encoded. */
export function route(...segments) {
  return `#/${segments.map((s) => encodeURIComponent(s)).join('/')}`;
}

/** A unique id for label/field pairs. */
let counter = 0;
export function uid(prefix = 'f') {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** A labelled form field: returns {wrap, input, error} (error shows messages next to it). */
export function field(label, input, help) {
  const id = input.id || uid('field');
  input.id = id;
  const error = h('p', {class: 'field-error', id: `${id}-error`, role: 'alert', hidden: true});
  const described = [help ? `${id}-help` : null, `${id}-error`].filter(Boolean).join(' ');
  input.setAttribute('aria-describedby', described);
  const wrap = h('div', {class: 'field'},
    h('label', {for: id}, label),
    input,
    help ? h('p', {class: 'help', id: `${id}-help`}, help) : null,
    error);
  return {wrap, input, error};
}

/** Shows (or with no message, hides) a field's error. */
export function setFieldError(f, message) {
  f.error.hidden = !message;
  f.error.textContent = message || '';
  if (message) f.input.setAttribute('aria-invalid', 'true');
  else f.input.removeAttribute('aria-invalid');
}

/** "3 min", "2 h 5 min", for durations in seconds. */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d`;
}
