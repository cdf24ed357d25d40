// Why a caller may or may not do something: runs the explain endpoint
// (`POST /v1/collections/{name}/access/explain`) for the signed-in caller
// or, for admins, for an identity given as a subject, roles, a tenant and
// any further claims, and shows the decision, the rule and the effective
// filters with claims substituted.

import {h, field, setFieldError} from '../dom.js';
import {api, ApiError, problemView} from '../api.js';
import {jsonEditor, stringify} from '../jsonedit.js';

export async function accessPage(view, ctx) {
  view.append(h('h1', {tabindex: '-1'}, 'Access'),
    h('p', {class: 'muted'}, 'Ask the server whether an identity may read, create, update or delete in a collection, and which documents its rules let it reach.'));

  const collection = h('input', {type: 'text', id: 'access-collection', autocomplete: 'off', spellcheck: 'false',
    value: ctx.params.get('collection') ?? '', required: true});
  const options = h('datalist', {id: 'collection-names'});
  collection.setAttribute('list', 'collection-names');
  const collField = field('Collection', collection);
  const action = h('select', {id: 'access-action'}, ['read', 'create', 'update', 'delete'].map((a) => h('option', {value: a}, a)));
  const actionField = field('Action', action);

  const me = h('input', {type: 'radio', name: 'who', value: 'me', id: 'who-me', checked: true});
  const other = h('input', {type: 'radio', name: 'who', value: 'other', id: 'who-other'});
  const sub = h('input', {type: 'text', id: 'claims-sub', autocomplete: 'off', spellcheck: 'false'});
  const roles = h('input', {type: 'text', id: 'claims-roles', autocomplete: 'off', spellcheck: 'false', placeholder: 'editor, viewer'});
  const tenant = h('input', {type: 'text', id: 'claims-tenant', autocomplete: 'off', spellcheck: 'false'});
  const subField = field('Subject (sub)', sub);
  const rolesField = field(`Roles (claim ${ctx.config.claims.roles}), comma-separated`, roles);
  const tenantField = field(`Tenant (claim ${ctx.config.claims.tenant}); empty for none`, tenant);
  const extra = jsonEditor({label: 'Further claims (JSON object), e.g. {"teams": ["red"]}', rows: 3, text: '{}'});
  const identity = h('fieldset', {class: 'identity', disabled: true},
    h('legend', {}, 'Identity to explain for (admins only)'), subField.wrap, rolesField.wrap, tenantField.wrap, extra.el);
  const who = h('fieldset', {class: 'who'}, h('legend', {}, 'Explain for'),
    h('label', {class: 'choice'}, me, ' the signed-in caller'),
    h('label', {class: 'choice'}, other, ' another identity'));
  const toggle = () => { identity.disabled = !other.checked; };
  me.addEventListener('change', toggle);
  other.addEventListener('change', toggle);

  const result = h('div', {class: 'explain-result', role: 'status', id: 'explain-result'});
  const form = h('form', {'aria-label': 'Explain access'}, collField.wrap, options, actionField.wrap, who, identity,
    h('p', {class: 'actions'}, h('button', {type: 'submit', class: 'primary'}, 'Explain')));
  view.append(form, result);

  // Collection names to pick from, when this caller may list them.
  api('GET', '/v1/collections').then(({data}) => {
    options.replaceChildren(...data.items.map((c) => h('option', {value: c.name})));
  }, () => {});

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setFieldError(collField, null);
    result.replaceChildren();
    const name = collection.value.trim();
    if (!/^[a-z][a-z0-9_]{0,62}$/.test(name)) {
      setFieldError(collField, 'A collection name: lowercase letters, digits and _, starting with a letter.');
      collection.focus();
      return;
    }
    const body = {action: action.value};
    if (other.checked) {
      const more = extra.value();
      if (more === undefined) return;
      if (!more || typeof more !== 'object' || Array.isArray(more)) {
        extra.showErrors([{pointer: '', message: 'A JSON object of claims.'}]);
        return;
      }
      // Literal claim names: the server reads a claim by its full name
      // before it tries a dotted path.
      const claims = {...more};
      if (sub.value.trim()) claims.sub = sub.value.trim();
      claims[ctx.config.claims.roles] = roles.value.split(',').map((r) => r.trim()).filter(Boolean);
      if (tenant.value.trim()) claims[ctx.config.claims.tenant] = tenant.value.trim();
      body.claims = claims;
    }
    let res;
    try {
      res = await api('POST', `/v1/collections/${name}/access/explain`, {body: `{"action": ${JSON.stringify(body.action)}${body.claims ? `, "claims": ${stringify(body.claims, 0)}` : ''}}`});
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) setFieldError(collField, err.detail || 'No such collection.');
      else result.replaceChildren(problemView(err));
      return;
    }
    const d = res.data;
    const block = (title, value) => h('section', {}, h('h3', {}, title), h('pre', {class: 'code'}, stringify(value)));
    result.replaceChildren(
      h('h2', {}, 'Decision'),
      h('p', {class: d.allowed ? 'verdict allowed' : 'verdict denied', id: 'verdict'},
        `${d.allowed ? 'Allowed' : 'Denied'}: ${d.action} on ${d.collection} (${d.status})`),
      h('p', {}, String(d.reason ?? '')),
      block('Identity', d.identity),
      block('Rule', d.rule),
      block(`Documents this ${d.action} may touch (scope)`, d.scope),
      block('Documents it may read (read scope)', d.read_scope),
      d.note ? h('p', {class: 'muted'}, String(d.note)) : null);
  });
}
