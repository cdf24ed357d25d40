// A live tail of a collection's change events: the browser's EventSource
// on `/v1/collections/{name}/events` with a stream ticket (EventSource
// cannot send the token; the ticket is minted with it, for this caller),
// newest first, as the signed-in caller may read them. When the stream
// ends (token expiry, a server restart, a `reset` for a slow tab), it is
// opened again with a new ticket and the last id, so nothing is missed
// while the server keeps the events. Event data is shown as text.

import {h, field, route, cellText} from '../dom.js';
import {api, API_BASE, problemView} from '../api.js';

/** Rows kept on the page (the oldest go first). */
const MAX_ROWS = 200;

export function eventsPage(view, ctx) {
  const name = ctx.params.get('collection') ?? '';
  const input = h('input', {type: 'text', id: 'events-collection', pattern: '[a-z][a-z0-9_]{0,62}', required: true,
    autocomplete: 'off', spellcheck: 'false', value: name});
  const f = field('Collection', input, 'Changes appear here as they are committed, through any replica.');
  const form = h('form', {class: 'inline', 'aria-label': 'Follow a collection'}, f.wrap,
    h('button', {type: 'submit', class: 'primary'}, 'Follow'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (/^[a-z][a-z0-9_]{0,62}$/.test(input.value)) ctx.go(`#/events?collection=${encodeURIComponent(input.value)}`);
  });
  view.append(h('h1', {tabindex: '-1'}, 'Events'), form);
  if (!name) {
    view.append(h('p', {class: 'muted'}, 'Name a collection to follow its changes.'));
    return;
  }
  if (!/^[a-z][a-z0-9_]{0,62}$/.test(name)) {
    view.append(h('p', {class: 'problem', role: 'alert'}, 'That is not a collection name.'));
    return;
  }

  const status = h('p', {class: 'summary', role: 'status', id: 'events-status'}, 'Connecting…');
  const problem = h('div', {});
  const stop = h('button', {type: 'button', class: 'secondary', id: 'events-stop'}, 'Stop');
  const tbody = h('tbody', {id: 'events-rows'});
  view.append(
    h('p', {class: 'actions'},
      h('a', {href: route('collections', name, 'documents'), class: 'button secondary'}, `Documents of ${name}`), ' ', stop),
    status, problem,
    h('table', {class: 'grid'},
      h('caption', {class: 'visually-hidden'}, `Change events of ${name}, newest first`),
      h('thead', {}, h('tr', {}, ['Received', 'Event', 'Id', 'Document', 'Data'].map((t) => h('th', {scope: 'col'}, t)))),
      tbody));

  let es = null;
  let lastId = null;
  let stopped = false;
  let retry = null;

  const close = () => {
    if (es) es.close();
    es = null;
    clearTimeout(retry);
  };
  // Leaving the page (the view is replaced) ends the stream.
  const watch = setInterval(() => {
    if (!view.isConnected) {
      stopped = true;
      close();
      clearInterval(watch);
    }
  }, 1000);
  stop.addEventListener('click', () => {
    stopped = true;
    close();
    status.textContent = `Stopped${lastId ? ` after event ${lastId}` : ''}.`;
  });

  const row = (kind, e) => {
    lastId = e.lastEventId || lastId;
    let docId = '';
    try {
      const data = JSON.parse(e.data);
      docId = data && typeof data === 'object' && typeof data._id === 'string' ? data._id : '';
    } catch {
      docId = '';
    }
    tbody.prepend(h('tr', {class: `event-${kind}`},
      h('td', {}, new Date().toLocaleTimeString()),
      h('td', {}, kind),
      h('td', {class: 'num'}, e.lastEventId || ''),
      h('th', {scope: 'row'}, cellText(docId, 40)),
      h('td', {class: 'code', title: cellText(e.data, 4000)}, cellText(e.data, 400))));
    while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
    status.textContent = `Following ${name}; last event ${lastId}.`;
  };

  const open = async () => {
    if (stopped || !view.isConnected) return;
    let ticket;
    try {
      ({data: {ticket}} = await api('POST', `/v1/collections/${name}/events/tickets`));
    } catch (e) {
      status.textContent = 'Not following.';
      problem.replaceChildren(problemView(e, 'The stream could not be opened:'));
      return;
    }
    problem.replaceChildren();
    const url = new URL(`${API_BASE}v1/collections/${name}/events`, location.origin);
    url.searchParams.set('ticket', ticket);
    if (lastId) url.searchParams.set('last_event_id', lastId);
    es = new EventSource(url);
    es.onopen = () => {
      status.textContent = lastId ? `Following ${name}; last event ${lastId}.` : `Following ${name}; waiting for changes.`;
    };
    for (const kind of ['created', 'updated', 'deleted', 'reset']) {
      es.addEventListener(kind, (e) => row(kind, e));
    }
    // A ticket is single use, so the browser's own reconnection (same
    // URL) would be refused: reconnect here with a new one.
    es.onerror = () => {
      close();
      if (stopped) return;
      status.textContent = `The stream of ${name} ended; reconnecting…`;
      retry = setTimeout(open, 2000);
    };
  };
  open();
}
