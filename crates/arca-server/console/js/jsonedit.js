// JSON as the console edits it. `parse` is a small JSON parser that keeps
// every number as the text the server sent (a JsonNumber), so a 64-bit id
// or a float written 1.0 survives a round trip through the editor, and
// records where each JSON pointer sits in the text, so the server's 422
// `errors[].path` and 400 details can be shown next to the line they name.
// `jsonEditor` is a <textarea> with line numbers and a column of messages
// beside the offending lines, plus the same messages as a list.

import {h, uid} from './dom.js';

/** A JSON number, kept as its source text. */
export class JsonNumber {
  constructor(raw) {
    this.raw = raw;
  }

  valueOf() {
    return Number(this.raw);
  }

  toString() {
    return this.raw;
  }
}

/** A syntax error at `offset` in the text. */
export class JsonSyntaxError extends Error {
  constructor(message, offset) {
    super(message);
    this.offset = offset;
  }
}

/** `a/b~c` -> `a~1b~0c` (RFC 6901). */
export function escapePointer(key) {
  return String(key).replace(/~/g, '~0').replace(/\//g, '~1');
}

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

/**
 * Parses JSON text. Returns {value, spans}: `spans` maps each JSON pointer
 * ('' for the root) to {start, end} offsets of its value and, for object
 * members, {keyStart}. Throws JsonSyntaxError.
 */
export function parse(text) {
  let i = 0;
  const spans = new Map();
  const fail = (msg) => {
    throw new JsonSyntaxError(msg, i);
  };
  const ws = () => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i += 1;
  };
  const string = () => {
    const start = i;
    i += 1;
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\') i += 1;
      i += 1;
    }
    if (i >= text.length) fail('unterminated string');
    i += 1;
    try {
      return JSON.parse(text.slice(start, i));
    } catch {
      i = start;
      return fail('invalid string (control character or bad escape)');
    }
  };
  const value = (ptr, depth) => {
    if (depth > 200) fail('nested too deeply');
    ws();
    const start = i;
    const c = text[i];
    let v;
    if (c === '{') {
      i += 1;
      v = {};
      ws();
      if (text[i] === '}') {
        i += 1;
      } else {
        for (;;) {
          ws();
          if (text[i] !== '"') fail('expected a property name in double quotes');
          const keyStart = i;
          const key = string();
          ws();
          if (text[i] !== ':') fail("expected ':' after the property name");
          i += 1;
          const p = `${ptr}/${escapePointer(key)}`;
          // defineProperty: a key named __proto__ stays a plain property.
          Object.defineProperty(v, key, {value: value(p, depth + 1), enumerable: true, writable: true, configurable: true});
          spans.get(p).keyStart = keyStart;
          ws();
          if (text[i] === ',') {
            i += 1;
          } else if (text[i] === '}') {
            i += 1;
            break;
          } else {
            fail("expected ',' or '}'");
          }
        }
      }
    } else if (c === '[') {
      i += 1;
      v = [];
      ws();
      if (text[i] === ']') {
        i += 1;
      } else {
        for (;;) {
          v.push(value(`${ptr}/${v.length}`, depth + 1));
          ws();
          if (text[i] === ',') {
            i += 1;
          } else if (text[i] === ']') {
            i += 1;
            break;
          } else {
            fail("expected ',' or ']'");
          }
        }
      }
    } else if (c === '"') {
      v = string();
    } else if (c === 't' && text.startsWith('true', i)) {
      i += 4;
      v = true;
    } else if (c === 'f' && text.startsWith('false', i)) {
      i += 5;
      v = false;
    } else if (c === 'n' && text.startsWith('null', i)) {
      i += 4;
      v = null;
    } else {
      NUMBER.lastIndex = i;
      const m = NUMBER.exec(text);
      if (!m) fail(i >= text.length ? 'unexpected end of the text' : 'expected a JSON value');
      i += m[0].length;
      v = new JsonNumber(m[0]);
    }
    spans.set(ptr, {start, end: i});
    return v;
  };
  const v = value('', 0);
  ws();
  if (i < text.length) fail('unexpected text after the JSON value');
  return {value: v, spans};
}

/** JSON text of a value (JsonNumbers as their source text), indented. */
export function stringify(value, indent = 2, level = 0) {
  const pad = (n) => ' '.repeat(indent * n);
  if (value instanceof JsonNumber) return value.raw;
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : 'null';
  if (typeof value === 'string' || typeof value === 'boolean') return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    if (!indent) return `[${value.map((x) => stringify(x, 0)).join(',')}]`;
    return `[\n${value.map((x) => pad(level + 1) + stringify(x, indent, level + 1)).join(',\n')}\n${pad(level)}]`;
  }
  const entries = Object.entries(value);
  if (entries.length === 0) return '{}';
  if (!indent) return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${stringify(x, 0)}`).join(',')}}`;
  return `{\n${entries.map(([k, x]) => `${pad(level + 1)}${JSON.stringify(k)}: ${stringify(x, indent, level + 1)}`).join(',\n')}\n${pad(level)}}`;
}

/** 1-based line of `offset` in `text`. */
export function lineOf(text, offset) {
  let line = 1;
  for (let k = 0; k < offset && k < text.length; k += 1) if (text[k] === '\n') line += 1;
  return line;
}

/**
 * Where a pointer points in parsed text: its own span, or the nearest
 * ancestor's (a missing required property points at its object).
 */
export function spanOf(spans, pointer) {
  let p = pointer;
  for (;;) {
    const s = spans.get(p);
    if (s) return {...s, exact: p === pointer};
    if (p === '') return null;
    p = p.slice(0, p.lastIndexOf('/'));
  }
}

/**
 * A JSON editor: {el, textarea, text(), setText(t), value(), showErrors(list), clear()}.
 * `value()` parses the text, shows a syntax error in place and returns
 * undefined when it does not parse. `showErrors` takes [{pointer, message}]
 * (pointer null for a message about the whole value).
 */
export function jsonEditor({label, text = '', rows = 12, help}) {
  const id = uid('json');
  const textarea = h('textarea', {id, rows, wrap: 'off', spellcheck: 'false', autocomplete: 'off', class: 'code',
    'aria-describedby': `${id}-errors${help ? ` ${id}-help` : ''}`});
  textarea.value = text;
  const gutter = h('div', {class: 'gutter', 'aria-hidden': 'true'});
  const notes = h('div', {class: 'notes', 'aria-hidden': 'true'});
  const list = h('ul', {class: 'error-list', id: `${id}-errors`, role: 'alert'});
  const frame = h('div', {class: 'editor-frame'}, gutter, textarea, notes);
  const el = h('div', {class: 'jsonedit'},
    h('label', {for: id}, label),
    help ? h('p', {class: 'help', id: `${id}-help`}, help) : null,
    frame, list);
  let marks = new Map();

  const paint = () => {
    const lines = textarea.value.split('\n').length;
    const nums = [];
    const msgs = [];
    for (let n = 1; n <= lines; n += 1) {
      const m = marks.get(n);
      nums.push(h('div', {class: m ? 'line err' : 'line'}, String(n)));
      msgs.push(h('div', {class: 'line'}, m ? m.join('; ') : ''));
    }
    gutter.replaceChildren(h('div', {class: 'lines'}, nums));
    notes.replaceChildren(h('div', {class: 'lines'}, msgs));
    sync();
  };
  const sync = () => {
    const y = `translateY(${-textarea.scrollTop}px)`;
    if (gutter.firstChild) gutter.firstChild.style.transform = y;
    if (notes.firstChild) notes.firstChild.style.transform = y;
  };
  textarea.addEventListener('scroll', sync);
  textarea.addEventListener('input', () => {
    if (marks.size) {
      marks = new Map();
      frame.classList.remove('has-errors');
    }
    paint();
  });

  const select = (span) => {
    textarea.focus();
    textarea.setSelectionRange(span.keyStart ?? span.start, span.end);
  };

  const editor = {
    el,
    textarea,
    text: () => textarea.value,
    setText(t) {
      textarea.value = t;
      editor.clear();
    },
    clear() {
      marks = new Map();
      frame.classList.remove('has-errors');
      textarea.removeAttribute('aria-invalid');
      list.replaceChildren();
      paint();
    },
    showErrors(errors) {
      editor.clear();
      let spans = null;
      try {
        spans = parse(textarea.value).spans;
      } catch {
        spans = null;
      }
      const items = [];
      for (const e of errors) {
        const span = e.pointer !== null && e.pointer !== undefined && spans ? spanOf(spans, e.pointer) : null;
        const line = span ? lineOf(textarea.value, span.keyStart ?? span.start) : (e.offset !== undefined ? lineOf(textarea.value, e.offset) : null);
        if (line) marks.set(line, [...(marks.get(line) || []), e.message]);
        const where = e.pointer ? h('button', {type: 'button', class: 'link', onclick: () => span && select(span)}, e.pointer) : null;
        items.push(h('li', {}, where, where ? ' ' : null, line ? h('span', {class: 'muted'}, `(line ${line}) `) : null, e.message));
      }
      list.replaceChildren(...items);
      if (errors.length) {
        frame.classList.add('has-errors');
        textarea.setAttribute('aria-invalid', 'true');
      }
      paint();
    },
    value() {
      try {
        const parsed = parse(textarea.value);
        return parsed.value;
      } catch (e) {
        if (!(e instanceof JsonSyntaxError)) throw e;
        editor.showErrors([{pointer: null, offset: e.offset, message: `JSON syntax: ${e.message} (line ${lineOf(textarea.value, e.offset)})`}]);
        textarea.focus();
        textarea.setSelectionRange(e.offset, Math.min(e.offset + 1, textarea.value.length));
        return undefined;
      }
    },
  };
  paint();
  return editor;
}
