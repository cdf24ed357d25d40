// One document: view and edit it as JSON, create one, delete one. Saving
// sends the editor's text as written (numbers stay as typed) with
// `If-Match` on the revision that was loaded. A 422 shows each of the
// server's errors beside the line its JSON pointer names; a 412 (someone
// saved in between) shows both versions and offers to reload the current
// one or to save this edit over it.

import {h, route} from '../dom.js';
import {api, ApiError, problemView} from '../api.js';
import {jsonEditor, stringify, JsonNumber} from '../jsonedit.js';

const SYSTEM = new Set(['_id', '_rev', '_created_at', '_updated_at', '_owner']);

/** A document without its system fields: what a client sends back. */
function userFields(doc) {
  const out = {};
  for (const [k, v] of Object.entries(doc)) {
    if (!SYSTEM.has(k)) Object.defineProperty(out, k, {value: v, enumerable: true, writable: true, configurable: true});
  }
  return out;
}

/** A starting document for a schema: its required properties with empty values of their type. */
function skeleton(schema) {
  const out = {};
  const props = schema?.properties ?? {};
  for (const key of Array.isArray(schema?.required) ? schema.required : []) {
    const t = Array.isArray(props[key]?.type) ? props[key].type[0] : props[key]?.type;
    const empty = {string: '', integer: new JsonNumber('0'), number: new JsonNumber('0'), boolean: false, array: [], object: {}, null: null};
    Object.defineProperty(out, key, {value: t in empty ? empty[t] : '', enumerable: true, writable: true, configurable: true});
  }
  return out;
}

function systemList(doc) {
  const row = (k, v) => [h('dt', {}, k), h('dd', {}, v === undefined || v === null ? '—' : String(v))];
  return h('dl', {class: 'meta', id: 'document-meta'},
    row('_id', doc._id), row('_rev', doc._rev), row('_owner', doc._owner),
    row('_created_at', doc._created_at), row('_updated_at', doc._updated_at));
}

/** Top-level keys whose values differ between two documents. */
function changedKeys(a, b) {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...keys].filter((k) => stringify(a[k] ?? null, 0) !== stringify(b[k] ?? null, 0) || (k in a) !== (k in b));
}

export async function documentPage(view, ctx, name, id) {
  const isNew = id === null;
  const listHref = route('collections', name, 'documents');
  view.append(
    h('p', {class: 'crumbs'}, h('a', {href: listHref}, `← Documents of ${name}`)),
    h('h1', {tabindex: '-1'}, isNew ? `New document in ${name}` : `Document ${id}`));
  const meta = h('div', {});
  const editor = jsonEditor({label: isNew ? 'Document (JSON; add "_id" to choose the id)' : 'Document (JSON, without system fields)', rows: 18});
  const status = h('div', {class: 'status', role: 'status'});
  const conflict = h('div', {class: 'conflict', hidden: true});
  const save = h('button', {type: 'submit', class: 'primary', id: 'save-document'}, isNew ? 'Create document' : 'Save');
  const buttons = h('p', {class: 'actions'}, save);
  const form = h('form', {'aria-label': 'Document'}, editor.el, buttons);
  // The page appears once loaded and wired: nothing typed before then
  // could be overwritten, and no form can be sent without its handler.
  const loading = h('p', {class: 'muted'}, 'Loading…');
  view.append(loading);

  let etag = null;
  let rev = null;

  const show = (res) => {
    etag = res.etag;
    rev = res.data._rev;
    meta.replaceChildren(systemList(res.data));
    editor.setText(stringify(userFields(res.data)));
  };

  if (isNew) {
    let schema = null;
    try {
      ({data: {schema}} = await api('GET', `/v1/collections/${name}`));
    } catch {
      // Not a schema admin: start from an empty object.
    }
    editor.setText(stringify(skeleton(schema)));
  } else {
    try {
      show(await api('GET', `/v1/collections/${name}/documents/${encodeURIComponent(id)}`));
    } catch (e) {
      loading.replaceWith(problemView(e));
      return;
    }
    buttons.append(' ', deleteControl());
  }

  const put = async (ifMatch) => api('PUT', `/v1/collections/${name}/documents/${encodeURIComponent(id)}`,
    {body: editor.text(), headers: {'If-Match': ifMatch}});

  const failed = async (err) => {
    if (err instanceof ApiError && err.status === 422) {
      const errors = err.errors.length ? err.errors : [{path: null, message: err.detail}];
      editor.showErrors(errors.map((e) => ({pointer: e.path === null ? null : String(e.path), message: String(e.message)})));
      status.replaceChildren(h('p', {class: 'problem'}, `Not saved: ${err.detail || 'the document does not fit the collection'}.`));
      editor.textarea.focus();
    } else if (err instanceof ApiError && err.status === 412) {
      await showConflict();
    } else {
      status.replaceChildren(problemView(err, 'Not saved:'));
    }
  };

  /** Both versions side by side, with what to do about it. */
  const showConflict = async () => {
    let current;
    try {
      current = await api('GET', `/v1/collections/${name}/documents/${encodeURIComponent(id)}`);
    } catch (e) {
      conflict.replaceChildren(problemView(e, 'This document changed since it was loaded, and it cannot be read now (deleted?):'));
      conflict.hidden = false;
      return;
    }
    let mine = null;
    try {
      mine = editor.value();
    } catch {
      mine = null;
    }
    const theirs = userFields(current.data);
    const changed = mine && typeof mine === 'object' ? changedKeys(mine, theirs) : [];
    const reload = h('button', {type: 'button', class: 'primary', id: 'conflict-reload'}, 'Reload the current version (discard my edit)');
    const overwrite = h('button', {type: 'button', class: 'danger', id: 'conflict-overwrite'}, 'Save my version over it');
    reload.addEventListener('click', () => {
      conflict.hidden = true;
      conflict.replaceChildren();
      show(current);
      status.replaceChildren(h('p', {class: 'notice ok'}, `Reloaded revision ${current.data._rev}.`));
      editor.textarea.focus();
    });
    overwrite.addEventListener('click', async () => {
      conflict.hidden = true;
      conflict.replaceChildren();
      try {
        show(await put(current.etag));
        ctx.notify(`Saved over revision ${current.data._rev}.`);
      } catch (err) {
        await failed(err);
      }
    });
    conflict.replaceChildren(
      h('h2', {id: 'conflict-heading', tabindex: '-1'}, 'Changed since you opened it'),
      h('p', {}, `You edited revision ${rev}; the document is now at revision ${current.data._rev}`,
        changed.length ? ` (fields that differ: ${changed.join(', ')})` : '', '. Nothing was saved.'),
      h('div', {class: 'versions'},
        h('section', {}, h('h3', {}, 'Your version'), h('pre', {class: 'code', id: 'conflict-mine'}, editor.text())),
        h('section', {}, h('h3', {}, `Current version (revision ${current.data._rev})`), h('pre', {class: 'code', id: 'conflict-theirs'}, stringify(theirs)))),
      h('p', {class: 'actions'}, reload, ' ', overwrite));
    conflict.hidden = false;
    conflict.querySelector('h2').focus();
  };

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    status.replaceChildren();
    editor.clear();
    if (editor.value() === undefined) return;
    save.disabled = true;
    try {
      if (isNew) {
        const res = await api('POST', `/v1/collections/${name}/documents`, {body: editor.text()});
        ctx.notify(`Document ${res.data._id} created.`);
        ctx.go(route('collections', name, 'documents', String(res.data._id)));
      } else {
        show(await put(etag));
        status.replaceChildren(h('p', {class: 'notice ok'}, `Saved: revision ${rev}.`));
      }
    } catch (err) {
      await failed(err);
    } finally {
      save.disabled = false;
    }
  });

  loading.replaceWith(meta, conflict, form, status);

  function deleteControl() {
    const ask = h('button', {type: 'button', class: 'danger', id: 'delete-document'}, 'Delete');
    const confirm = h('span', {class: 'confirm', hidden: true},
      `Delete document ${id}? `,
      h('button', {type: 'button', class: 'danger', id: 'confirm-delete', onclick: async () => {
        try {
          await api('DELETE', `/v1/collections/${name}/documents/${encodeURIComponent(id)}`, {headers: {'If-Match': etag}});
          ctx.notify(`Document ${id} deleted.`);
          ctx.go(listHref);
        } catch (err) {
          confirm.hidden = true;
          ask.hidden = false;
          await failed(err);
        }
      }}, 'Yes, delete'), ' ',
      h('button', {type: 'button', class: 'secondary', onclick: () => { confirm.hidden = true; ask.hidden = false; ask.focus(); }}, 'Cancel'));
    ask.addEventListener('click', () => {
      ask.hidden = true;
      confirm.hidden = false;
      confirm.querySelector('button').focus();
    });
    return h('span', {}, ask, confirm);
  }
}
