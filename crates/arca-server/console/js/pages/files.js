// Files: uploads with progress (XMLHttpRequest, since fetch reports no
// upload progress), each under an Idempotency-Key, so retrying an upload
// whose answer was lost stores nothing twice; then the caller's files
// (GET /v1/files, newest first, a page at a time; an admin may list every
// file of the tenant) and any file opened by id: metadata, a thumbnail
// for images (fetched with the caller's token and shown from a blob:
// URL), a signed link to copy, download and delete. Names and types are
// shown as text; a file is only ever downloaded, never opened in the
// console's origin.

import {h, field, setFieldError} from '../dom.js';
import {api, API_BASE, ApiError, problemView} from '../api.js';
import {session} from '../session.js';

const ID = /^[0-9a-f]{32}$/;

/** A byte count as text. */
function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** A fresh Idempotency-Key. */
function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** An API URL (the console may sit behind a path prefix). */
function apiUrl(path) {
  return new URL(API_BASE + path.replace(/^\//, ''), location.origin);
}

/**
 * Uploads `file` under `key`, reporting progress; resolves to the stored
 * metadata, rejects with an ApiError.
 */
function upload(file, key, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const url = apiUrl('/v1/files');
    if (file.name) url.searchParams.set('filename', file.name);
    xhr.open('POST', url);
    xhr.setRequestHeader('Authorization', `Bearer ${session()?.token ?? ''}`);
    xhr.setRequestHeader('Idempotency-Key', key);
    xhr.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    };
    xhr.onload = () => {
      let data = null;
      try {
        data = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300 && data) {
        resolve({meta: data, replayed: xhr.getResponseHeader('Idempotent-Replayed') === 'true'});
      } else {
        const problem = data && typeof data === 'object' && !Array.isArray(data) ? data : {title: `HTTP ${xhr.status}`};
        reject(new ApiError(xhr.status, problem, xhr.getResponseHeader('x-request-id')));
      }
    };
    const cut = () => reject(new ApiError(0, {title: 'The upload was cut', detail: 'the server could not be reached or the connection dropped; retry to send it again under the same key'}, null));
    xhr.onerror = cut;
    xhr.onabort = cut;
    xhr.send(file);
  });
}

/** GET `path` with the caller's token, as a Blob; rejects with an ApiError. */
async function blobOf(path) {
  let res;
  try {
    res = await fetch(apiUrl(path), {headers: {Authorization: `Bearer ${session()?.token ?? ''}`}, cache: 'no-store', credentials: 'omit'});
  } catch (e) {
    throw new ApiError(0, {title: 'The server could not be reached', detail: String(e.message || e)}, null);
  }
  if (!res.ok) {
    let problem = {title: `HTTP ${res.status}`};
    try {
      problem = await res.json();
    } catch {
      // keep the status line
    }
    throw new ApiError(res.status, problem, res.headers.get('x-request-id'));
  }
  return res.blob();
}

/**
 * One file: metadata, thumbnail, link, download, delete. `known` is its
 * metadata when the listing gave it; otherwise it is read by id.
 */
async function fileCard(id, ctx, onGone, known = null) {
  const card = h('section', {class: 'card file', 'aria-label': `File ${id}`, 'data-file': id});
  let meta = known;
  if (!meta) {
    try {
      ({data: meta} = await api('GET', `/v1/files/${id}/metadata`));
    } catch (e) {
      card.append(h('p', {}, h('code', {}, id)), problemView(e, 'This file could not be read:'),
        h('button', {type: 'button', class: 'secondary', onclick: () => card.remove()}, 'Remove from the list'));
      return card;
    }
  }
  const thumb = h('div', {class: 'thumb'});
  if (meta.image) {
    thumb.append(h('span', {class: 'loading'}, 'Loading the thumbnail…'));
    blobOf(`/v1/files/${id}/thumbnail?size=160`).then((blob) => {
      const img = h('img', {alt: `Thumbnail of ${meta.filename}`, class: 'thumbnail'});
      // Only ever a blob: URL made here from the API's bytes.
      img.src = URL.createObjectURL(blob);
      thumb.replaceChildren(img);
    }, (e) => thumb.replaceChildren(problemView(e, 'No thumbnail:')));
  }
  const rows = [
    ['Name', meta.filename],
    ['Type', meta.content_type],
    ['Size', `${bytes(meta.size)} (${meta.size} bytes)`],
    meta.image ? ['Image', `${meta.image.width} × ${meta.image.height} ${meta.image.format}`] : null,
    ['Uploaded', meta.created_at],
    ['Id', meta.id],
    ['SHA-256', meta.sha256],
  ].filter(Boolean);
  const linkOut = h('div', {class: 'link-out'});
  const problem = h('div', {});
  const download = h('button', {type: 'button', class: 'secondary', onclick: async () => {
    problem.replaceChildren();
    try {
      const blob = await blobOf(`/v1/files/${id}`);
      const url = URL.createObjectURL(blob);
      // An anchor made here, never put in the page: the file is saved,
      // not opened in the console's origin.
      const a = document.createElement('a');
      a.href = url;
      a.download = meta.filename || id;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (e) {
      problem.replaceChildren(problemView(e, 'The download failed:'));
    }
  }}, 'Download');
  const link = h('button', {type: 'button', class: 'secondary', onclick: async () => {
    problem.replaceChildren();
    try {
      const {data} = await api('POST', `/v1/files/${id}/links`);
      const url = new URL(String(data.url), location.origin).href;
      const out = h('input', {type: 'text', class: 'code', id: `link-${id}`, value: url, readOnly: true, spellcheck: 'false'});
      const f = field(`Signed link (valid ${Math.round(Number(data.expires_in) / 60)} min, no token needed)`, out);
      const copy = h('button', {type: 'button', class: 'secondary', onclick: async () => {
        out.select();
        try {
          await navigator.clipboard.writeText(url);
          ctx.notify('Link copied.');
        } catch {
          ctx.notify('Select the link and copy it (the browser refused the clipboard).', 'problem');
        }
      }}, 'Copy');
      linkOut.replaceChildren(f.wrap, copy);
    } catch (e) {
      problem.replaceChildren(problemView(e, 'No link:'));
    }
  }}, 'Signed link');
  const ask = h('button', {type: 'button', class: 'danger'}, 'Delete');
  const confirm = h('span', {class: 'confirm', hidden: true},
    h('span', {}, 'Delete this file for everyone?'),
    h('button', {type: 'button', class: 'danger', onclick: async () => {
      try {
        await api('DELETE', `/v1/files/${id}`);
        ctx.notify(`Deleted ${meta.filename || id}.`);
        onGone(card);
      } catch (e) {
        confirm.hidden = true;
        ask.hidden = false;
        problem.replaceChildren(problemView(e, 'The file was not deleted:'));
      }
    }}, 'Yes, delete'),
    h('button', {type: 'button', class: 'secondary', onclick: () => { confirm.hidden = true; ask.hidden = false; ask.focus(); }}, 'Cancel'));
  ask.addEventListener('click', () => {
    ask.hidden = true;
    confirm.hidden = false;
    confirm.querySelector('button').focus();
  });
  card.append(
    h('h2', {}, meta.filename || id),
    h('div', {class: 'file-body'}, thumb,
      h('dl', {class: 'meta'}, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v ?? ''))]))),
    h('p', {class: 'actions'}, download, link, ask, confirm),
    linkOut, problem);
  return card;
}

export function filesPage(view, ctx) {
  const list = h('div', {id: 'files-list'});
  const empty = () => h('p', {class: 'muted', id: 'files-empty'}, 'None yet: upload one, or open one by id.');
  const addCard = async (id, first, known = null) => {
    const card = await fileCard(id, ctx, (c) => {
      c.remove();
      if (!list.querySelector('section.file')) list.append(empty());
    }, known);
    if (!view.isConnected) return;
    list.querySelector('#files-empty')?.remove();
    // A card of the same file already shown goes.
    list.querySelectorAll(`[data-file="${id}"]`).forEach((old) => old.remove());
    if (first) list.prepend(card);
    else list.append(card);
  };

  // Upload.
  const input = h('input', {type: 'file', id: 'upload-file'});
  const f = field('File', input, 'Images (PNG, JPEG, GIF, WebP) get a thumbnail; any other file is kept as it is.');
  const progress = h('progress', {id: 'upload-progress', max: 1, value: 0, hidden: true});
  const status = h('p', {class: 'summary', role: 'status', id: 'upload-status'});
  const problem = h('div', {});
  const send = h('button', {type: 'submit', class: 'primary'}, 'Upload');
  const retry = h('button', {type: 'button', class: 'secondary', hidden: true}, 'Retry');
  let pending = null; // {file, key}: what Retry sends again, under the same key
  const run = async () => {
    if (!pending) return;
    const {file, key} = pending;
    problem.replaceChildren();
    retry.hidden = true;
    send.disabled = true;
    progress.hidden = false;
    progress.max = Math.max(file.size, 1);
    progress.value = 0;
    status.textContent = `Uploading ${file.name}…`;
    try {
      const {meta, replayed} = await upload(file, key, (loaded, total) => {
        progress.max = Math.max(total, 1);
        progress.value = loaded;
        status.textContent = `Uploading ${file.name}: ${Math.floor((loaded * 100) / Math.max(total, 1))} %`;
      });
      progress.value = progress.max;
      pending = null;
      status.textContent = replayed
        ? `Stored ${meta.filename} (${bytes(meta.size)}) by an earlier attempt; nothing was stored twice.`
        : `Stored ${meta.filename} (${bytes(meta.size)}).`;
      input.value = '';
      await addCard(meta.id, true, meta);
    } catch (e) {
      status.textContent = `${file.name} was not stored.`;
      problem.replaceChildren(problemView(e));
      // Worth sending again (same key): the connection, a 5xx, a 408 or a
      // 409 while the first attempt still runs. Anything else is final.
      retry.hidden = !(e instanceof ApiError && (e.status === 0 || e.status >= 500 || e.status === 408 || e.status === 409));
    } finally {
      send.disabled = false;
    }
  };
  retry.addEventListener('click', run);
  const form = h('form', {'aria-label': 'Upload a file'}, f.wrap,
    h('p', {class: 'actions'}, send, retry, progress), status, problem);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const file = input.files?.[0];
    setFieldError(f, file ? '' : 'Choose a file first.');
    if (!file) return;
    pending = {file, key: newKey()};
    run();
  });

  // Open by id.
  const idInput = h('input', {type: 'text', id: 'open-file', class: 'code', pattern: '[0-9a-f]{32}', autocomplete: 'off', spellcheck: 'false'});
  const idField = field('File id', idInput, 'Any file of your tenant, by its id (32 hex digits).');
  const open = h('form', {class: 'inline', 'aria-label': 'Open a file by id'}, idField.wrap,
    h('button', {type: 'submit', class: 'secondary'}, 'Open'));
  open.addEventListener('submit', async (e) => {
    e.preventDefault();
    const id = idInput.value.trim().toLowerCase();
    if (!ID.test(id)) {
      setFieldError(idField, 'A file id is 32 hex digits.');
      return;
    }
    setFieldError(idField, '');
    await addCard(id, true);
  });

  // The listing: the caller's files, or (admins) every file of the tenant,
  // newest first, a page at a time.
  const everyone = h('input', {type: 'checkbox', id: 'files-all'});
  const scope = h('label', {class: 'inline'}, everyone, ' Every file of the tenant (admins only)');
  const more = h('button', {type: 'button', class: 'secondary', id: 'files-more', hidden: true}, 'Load more');
  const listProblem = h('div', {});
  const heading = h('h2', {}, 'Your files');
  let next = null;
  let generation = 0;
  const load = async (fresh) => {
    const mine = ++generation;
    more.disabled = true;
    listProblem.replaceChildren();
    if (fresh) {
      next = null;
      list.replaceChildren();
    }
    try {
      const {data} = await api('GET', '/v1/files', {query: {limit: 20, all: everyone.checked ? 'true' : undefined, after: next ?? undefined}});
      if (mine !== generation || !view.isConnected) return;
      const items = Array.isArray(data?.items) ? data.items : [];
      next = typeof data?.next === 'string' ? data.next : null;
      for (const meta of items) {
        if (meta && typeof meta.id === 'string' && ID.test(meta.id)) await addCard(meta.id, false, meta);
      }
      if (!list.querySelector('section.file') && !list.querySelector('#files-empty')) list.append(empty());
    } catch (e) {
      if (mine !== generation) return;
      listProblem.replaceChildren(problemView(e, 'The files could not be listed:'));
    } finally {
      if (mine === generation) {
        more.hidden = next === null;
        more.disabled = false;
      }
    }
  };
  more.addEventListener('click', () => load(false));
  everyone.addEventListener('change', () => {
    heading.textContent = everyone.checked ? 'Every file of the tenant' : 'Your files';
    load(true);
  });

  view.append(h('h1', {tabindex: '-1'}, 'Files'),
    h('section', {class: 'card'}, h('h2', {}, 'Upload'), form),
    open,
    heading,
    h('p', {}, scope),
    listProblem,
    list,
    h('p', {class: 'actions'}, more));
  load(true);
}
