// The collections list (schema admins): each collection with its fields,
// indexes and rules at a glance, and links to its documents, definition
// and access explanation. A caller without the schema admin role cannot
// list collections; it can still open one by name.

import {h, field, route, cellText} from '../dom.js';
import {api, ApiError, problemView} from '../api.js';

function rulesSummary(access) {
  const parts = [];
  for (const action of ['read', 'create', 'update', 'delete']) {
    const rule = access?.[action];
    if (!rule) continue;
    const roles = Array.isArray(rule.roles) ? rule.roles.join(' ') : '';
    parts.push(`${action}: ${roles}${rule.filter ? ' (filtered)' : ''}`);
  }
  return parts.length ? parts.join('; ') : 'admins only';
}

/** A form to open a collection by name (for callers who cannot list them). */
export function openByName(ctx) {
  const input = h('input', {type: 'text', pattern: '[a-z][a-z0-9_]{0,62}', required: true, autocomplete: 'off', spellcheck: 'false'});
  const f = field('Collection name', input);
  const form = h('form', {class: 'inline'}, f.wrap, h('button', {type: 'submit'}, 'Open documents'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (/^[a-z][a-z0-9_]{0,62}$/.test(input.value)) ctx.go(route('collections', input.value, 'documents'));
  });
  return form;
}

export async function collectionsPage(view, ctx) {
  view.append(
    h('h1', {tabindex: '-1'}, 'Collections'),
    h('p', {class: 'actions'}, h('a', {href: '#/collections/new', class: 'button'}, 'New collection')));
  const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  view.append(body);
  let items;
  try {
    ({data: {items}} = await api('GET', '/v1/collections'));
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) {
      body.replaceChildren(
        h('p', {}, `Listing collections needs the schema admin role (${ctx.config.roles.schema_admin}), which this token lacks. You can still open a collection's documents by name:`),
        openByName(ctx));
      return;
    }
    body.replaceChildren(problemView(e));
    return;
  }
  if (!items.length) {
    body.replaceChildren(h('p', {}, 'No collections yet. ', h('a', {href: '#/collections/new'}, 'Define the first one'), '.'));
    return;
  }
  const rows = items.map((c) => {
    const props = c.schema && typeof c.schema === 'object' && c.schema.properties ? Object.keys(c.schema.properties) : [];
    return h('tr', {},
      h('th', {scope: 'row'}, h('a', {href: route('collections', c.name, 'documents')}, c.name)),
      h('td', {}, cellText(props.join(', ') || '(any)', 60)),
      h('td', {class: 'num'}, String(Array.isArray(c.indexes) ? c.indexes.length : 0)),
      h('td', {}, cellText(rulesSummary(c.access), 90)),
      h('td', {}, cellText(c.updated_at)),
      h('td', {class: 'row-actions'},
        h('a', {href: route('collections', c.name), 'aria-label': `Definition of ${c.name}`}, 'Definition'),
        ' ',
        h('a', {href: `#/access?collection=${encodeURIComponent(c.name)}`, 'aria-label': `Access to ${c.name}`}, 'Access')));
  });
  body.replaceChildren(h('table', {class: 'grid'},
    h('caption', {class: 'visually-hidden'}, 'Collections'),
    h('thead', {}, h('tr', {}, ['Name', 'Fields', 'Indexes', 'Rules', 'Updated', ''].map((t) => h('th', {scope: 'col'}, t)))),
    h('tbody', {}, rows)));
}
