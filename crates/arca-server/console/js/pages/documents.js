// A collection's documents as a table: a MongoDB-style filter, a sort and
// a page size (kept in the address, so a view can be bookmarked and Back
// works), keyset paging with the server's `next` cursor, and the count of
// matching documents. A 400 for a bad filter or sort is shown beside the
// field it is about. Values are shown as text, whatever they hold.

import {h, field, setFieldError, route, cellText} from '../dom.js';
import {api, ApiError, problemView} from '../api.js';
import {parse, JsonSyntaxError} from '../jsonedit.js';

const SYSTEM = ['_id', '_rev', '_created_at', '_updated_at', '_owner'];

/** The columns: _id, the schema's top-level properties (or the page's keys), then _rev and _updated_at. */
function columnsFor(schema, items) {
  let props = schema && typeof schema === 'object' && schema.properties ? Object.keys(schema.properties) : [];
  if (!props.length) {
    const seen = new Set();
    for (const d of items) for (const k of Object.keys(d)) if (!SYSTEM.includes(k)) seen.add(k);
    props = [...seen];
  }
  return ['_id', ...props.slice(0, 8), '_rev', '_updated_at'];
}

export async function documentsPage(view, ctx, name) {
  const params = ctx.params;
  view.append(
    h('h1', {tabindex: '-1'}, `Documents of ${name}`),
    h('p', {class: 'actions'},
      h('a', {href: route('collections', name, 'documents', 'new'), class: 'button', id: 'new-document'}, 'New document'), ' ',
      h('a', {href: route('collections', name), class: 'button secondary'}, 'Definition'), ' ',
      h('a', {href: `#/access?collection=${encodeURIComponent(name)}`, class: 'button secondary'}, 'Explain access')));

  const filterInput = h('input', {type: 'text', class: 'code', id: 'filter', autocomplete: 'off', spellcheck: 'false',
    placeholder: '{"status": "open", "total": {"$gt": 10}}', value: params.get('filter') ?? ''});
  const sortInput = h('input', {type: 'text', class: 'code', id: 'sort', autocomplete: 'off', spellcheck: 'false',
    placeholder: '-_updated_at,name', value: params.get('sort') ?? ''});
  const limitSelect = h('select', {id: 'limit'}, ['20', '50', '100', '500'].map((n) => h('option', {value: n, selected: (params.get('limit') ?? '20') === n}, n)));
  const filterField = field('Filter (JSON)', filterInput, 'MongoDB-style: $eq $ne $gt $gte $lt $lte $in $nin $exists $regex $and $or …');
  const sortField = field('Sort', sortInput, 'Comma-separated fields, - for descending.');
  const limitField = field('Per page', limitSelect);
  const form = h('form', {class: 'query', 'aria-label': 'Query'}, filterField.wrap, sortField.wrap, limitField.wrap,
    h('div', {class: 'query-buttons'}, h('button', {type: 'submit', class: 'primary'}, 'Apply'), ' ',
      h('button', {type: 'button', class: 'secondary', onclick: () => { filterInput.value = ''; sortInput.value = ''; form.requestSubmit(); }}, 'Clear')));
  const summary = h('p', {class: 'summary', role: 'status'});
  const results = h('div', {class: 'results'});
  const pager = h('nav', {class: 'pager', 'aria-label': 'Pages'});
  // The query form appears once wired (see document.js).
  const loading = h('p', {class: 'muted'}, 'Loading…');
  view.append(loading);

  // The schema gives the columns; callers who may not read definitions
  // get columns from the documents themselves.
  let schema = null;
  try {
    ({data: {schema}} = await api('GET', `/v1/collections/${name}`));
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      loading.replaceWith(problemView(e));
      return;
    }
    // 403: a caller who may read documents but not definitions.
  }

  // The cursor that loaded each earlier page (`undefined` for the
  // first), for "Previous"; the current page's is pushed on "Next".
  const previous = [];
  let query = {filter: params.get('filter') ?? '', sort: params.get('sort') ?? '', limit: params.get('limit') ?? '20'};

  const load = async (after) => {
    setFieldError(filterField, null);
    setFieldError(sortField, null);
    summary.textContent = 'Loading…';
    let page;
    try {
      page = await api('GET', `/v1/collections/${name}/documents`, {query: {...query, after}});
    } catch (e) {
      summary.textContent = '';
      if (e instanceof ApiError && e.status === 400) {
        // The server's details start with the parameter they are about.
        const d = e.detail;
        if (/^sort/.test(d)) setFieldError(sortField, d);
        else if (/^(invalid filter|filter)/.test(d)) setFieldError(filterField, d);
        else if (/^limit/.test(d)) setFieldError(limitField, d);
        else results.replaceChildren(problemView(e));
      } else {
        results.replaceChildren(problemView(e));
      }
      return;
    }
    const items = page.data.items;
    const cols = columnsFor(schema, items);
    const rows = items.map((d) => h('tr', {},
      cols.map((c) => {
        if (c === '_id') {
          return h('th', {scope: 'row'}, h('a', {href: route('collections', name, 'documents', String(d._id))}, String(d._id)));
        }
        const full = d[c] === undefined ? '' : (typeof d[c] === 'string' ? d[c] : cellText(d[c], 2000));
        return h('td', {title: full.length > 80 ? full : null}, cellText(d[c]));
      })));
    results.replaceChildren(items.length
      ? h('div', {class: 'table-wrap'}, h('table', {class: 'grid', id: 'documents'},
        h('caption', {class: 'visually-hidden'}, `Documents of ${name}`),
        h('thead', {}, h('tr', {}, cols.map((c) => h('th', {scope: 'col'}, c)))),
        h('tbody', {}, rows)))
      : h('p', {class: 'empty'}, query.filter ? 'No document matches this filter.' : 'No documents yet.'));
    const pageNo = previous.length + 1;
    pager.replaceChildren(
      h('button', {type: 'button', class: 'secondary', disabled: !previous.length, onclick: () => { previous.length = 0; load(undefined); }}, 'First'), ' ',
      h('button', {type: 'button', class: 'secondary', disabled: !previous.length, onclick: () => load(previous.pop())}, 'Previous'), ' ',
      h('span', {class: 'muted'}, `page ${pageNo}`), ' ',
      h('button', {type: 'button', class: 'secondary', id: 'next-page', disabled: !page.data.next, onclick: () => { previous.push(after); load(page.data.next); }}, 'Next'));
    summary.textContent = `${items.length} shown`;
    try {
      const {data} = await api('GET', `/v1/collections/${name}/count`, {query: {filter: query.filter}});
      summary.textContent = `${items.length} shown of ${data.count} matching`;
    } catch {
      // The count is a nicety; the table is what was asked for.
    }
  };

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    setFieldError(filterField, null);
    const filter = filterInput.value.trim();
    if (filter) {
      try {
        parse(filter);
      } catch (err) {
        if (err instanceof JsonSyntaxError) {
          setFieldError(filterField, `JSON syntax: ${err.message} (at character ${err.offset + 1})`);
          filterInput.focus();
          return;
        }
        throw err;
      }
    }
    query = {filter, sort: sortInput.value.trim(), limit: limitSelect.value};
    const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v && !(v === '20'))).toString();
    // The address records the query without re-rendering the page.
    history.replaceState(null, '', `${route('collections', name, 'documents')}${q ? `?${q}` : ''}`);
    previous.length = 0;
    load(undefined);
  });

  loading.replaceWith(form, summary, results, pager);
  load(undefined);
}
