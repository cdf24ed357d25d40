// Creating and editing a collection's definition: its JSON Schema, indexes
// and access rules, each in its own JSON editor. The server's 400 names
// the part it refuses ("schema: ... (at /pointer)", "indexes[2]: ...",
// "access.read: ..."): the message is shown in that editor, beside the
// line it names. Deleting a collection asks for its name first.

import {h, field, setFieldError, route} from '../dom.js';
import {api, ApiError, problemView} from '../api.js';
import {jsonEditor, stringify, escapePointer} from '../jsonedit.js';

const NAME = /^[a-z][a-z0-9_]{0,62}$/;

const NEW_SCHEMA = '{\n  "type": "object",\n  "properties": {\n    "title": {"type": "string"}\n  },\n  "required": ["title"]\n}';
const NEW_ACCESS = '{\n  "read": {"roles": ["*"]},\n  "create": {"roles": ["*"]},\n  "update": {"roles": ["*"], "filter": {"_owner": {"$claim": "sub"}}},\n  "delete": {"roles": ["*"], "filter": {"_owner": {"$claim": "sub"}}}\n}';

/**
 * Where a 400 detail belongs: {part: 'name'|'schema'|'indexes'|'access'|null,
 * pointer, message}. The forms are those of arca-core's definition errors.
 */
export function placeDefinitionError(detail) {
  let m;
  if (detail.startsWith('schema: ')) {
    const rest = detail.slice('schema: '.length);
    const at = rest.lastIndexOf(' (at ');
    if (at >= 0 && rest.endsWith(')')) {
      return {part: 'schema', pointer: rest.slice(at + 5, -1), message: rest.slice(0, at)};
    }
    return {part: 'schema', pointer: null, message: rest};
  }
  if ((m = /^indexes\[(\d+)\]:? (.*)$/s.exec(detail))) return {part: 'indexes', pointer: `/${m[1]}`, message: m[2]};
  if (/^(at most \d+ indexes|"indexes" is an array)/.test(detail)) return {part: 'indexes', pointer: null, message: detail};
  if ((m = /^access\.(read|create|update|delete): (.*)$/s.exec(detail))) return {part: 'access', pointer: `/${m[1]}`, message: m[2]};
  if ((m = /^access: unknown action "(.*)"/s.exec(detail))) return {part: 'access', pointer: `/${escapePointer(m[1])}`, message: detail};
  if (/^"access" is/.test(detail)) return {part: 'access', pointer: null, message: detail};
  if (/^collection names/.test(detail)) return {part: 'name', pointer: null, message: detail};
  return {part: null, pointer: null, message: detail};
}

export async function definitionPage(view, ctx, name) {
  const isNew = name === null;
  view.append(h('h1', {tabindex: '-1'}, isNew ? 'New collection' : `Collection ${name}`));
  if (!isNew) {
    view.append(h('p', {class: 'actions'},
      h('a', {href: route('collections', name, 'documents'), class: 'button'}, 'Documents'), ' ',
      h('a', {href: `#/access?collection=${encodeURIComponent(name)}`, class: 'button secondary'}, 'Explain access')));
  }
  const nameInput = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false', required: true, maxlength: 63,
    value: name ?? '', readOnly: !isNew, id: 'collection-name'});
  const nameField = field('Name', nameInput, isNew ? 'Lowercase letters, digits and _, starting with a letter (at most 63).' : null);
  const schema = jsonEditor({label: 'Schema (JSON Schema 2020-12)', rows: 14,
    help: 'The documents\' shape; every write is validated against it.'});
  const indexes = jsonEditor({label: 'Indexes', rows: 5,
    help: 'A list of {"fields": {"path": 1 or -1}, "unique": true|false, "sparse": true|false}.'});
  const access = jsonEditor({label: 'Access rules', rows: 10,
    help: 'Per action (read, create, update, delete): {"roles": [...], "filter": {...}}. An absent action is for admins only.'});
  const status = h('div', {role: 'status'});
  const save = h('button', {type: 'submit', class: 'primary'}, isNew ? 'Create collection' : 'Save definition');
  const form = h('form', {class: 'definition', 'aria-label': 'Collection definition'},
    nameField.wrap, schema.el, indexes.el, access.el, h('p', {class: 'actions'}, save), status);
  // The form appears once loaded and wired (see document.js).
  const loading = h('p', {class: 'muted'}, 'Loading…');
  view.append(loading);

  if (isNew) {
    schema.setText(NEW_SCHEMA);
    indexes.setText('[]');
    access.setText(NEW_ACCESS);
  } else {
    try {
      const {data} = await api('GET', `/v1/collections/${name}`);
      schema.setText(stringify(data.schema));
      indexes.setText(stringify(data.indexes ?? []));
      access.setText(stringify(data.access ?? {}));
    } catch (e) {
      loading.replaceWith(problemView(e));
      return;
    }
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    status.replaceChildren();
    setFieldError(nameField, null);
    for (const ed of [schema, indexes, access]) ed.clear();
    const target = nameInput.value.trim();
    if (!NAME.test(target)) {
      setFieldError(nameField, 'Use lowercase letters, digits and _, starting with a letter (at most 63).');
      nameInput.focus();
      return;
    }
    // Each part must parse here first (the error is shown in its editor);
    // the body is assembled from the texts, so numbers go as written.
    for (const ed of [schema, indexes, access]) if (ed.value() === undefined) return;
    const body = `{"schema": ${schema.text()},\n"indexes": ${indexes.text()},\n"access": ${access.text()}}`;
    save.disabled = true;
    try {
      const res = await api('PUT', `/v1/collections/${target}`, {body});
      ctx.notify(res.status === 201 ? `Collection ${target} created.` : `Collection ${target} saved.`);
      if (isNew) ctx.go(route('collections', target));
      else status.replaceChildren(h('p', {class: 'notice ok'}, `Saved at ${new Date().toLocaleTimeString()}.`));
    } catch (err) {
      if (err instanceof ApiError && err.status === 400 && err.problem.type === 'urn:arca:problem:invalid-definition') {
        const place = placeDefinitionError(err.detail);
        const editor = {schema, indexes, access}[place.part];
        if (editor) {
          editor.showErrors([{pointer: place.pointer, message: place.message}]);
          editor.textarea.focus();
        } else if (place.part === 'name') {
          setFieldError(nameField, place.message);
          nameInput.focus();
        } else {
          status.replaceChildren(problemView(err));
        }
      } else if (err instanceof ApiError && err.status === 409) {
        indexes.showErrors([{pointer: null, message: err.detail}]);
        status.replaceChildren(problemView(err, 'Nothing changed:'));
      } else {
        status.replaceChildren(problemView(err));
      }
    } finally {
      save.disabled = false;
    }
  });

  loading.replaceWith(form);
  if (!isNew) view.append(deleteSection(ctx, name));
}

/** Deleting the collection and its documents, after typing its name. */
function deleteSection(ctx, name) {
  const input = h('input', {type: 'text', autocomplete: 'off', spellcheck: 'false'});
  const f = field(`Type ${name} to delete this collection and all its documents`, input);
  const button = h('button', {type: 'submit', class: 'danger'}, 'Delete collection');
  const out = h('div', {role: 'status'});
  const form = h('form', {class: 'card danger-zone', 'aria-label': 'Delete the collection'}, h('h2', {}, 'Delete'), f.wrap, button, out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setFieldError(f, null);
    if (input.value !== name) {
      setFieldError(f, `Type ${name} exactly.`);
      input.focus();
      return;
    }
    try {
      await api('DELETE', `/v1/collections/${name}`);
      ctx.notify(`Collection ${name} deleted.`);
      ctx.go('#/collections');
    } catch (err) {
      out.replaceChildren(problemView(err));
    }
  });
  return form;
}
