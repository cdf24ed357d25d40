#!/usr/bin/env python3
"""A real browser's EventSource on Arca's change stream (Playwright driving
Debian's headless Chromium; no browser is downloaded).

Run by crates/arca/tests/events.rs against a real `arca serve`:

    eventsource.py --base URL --token JWT --other JWT --collection NAME

The page (the server's own origin) mints a stream ticket with `fetch` and
the caller's token, opens `new EventSource(url + "?ticket=...")` (which
cannot send an Authorization header), and records what arrives. Meanwhile
this script writes through the API: a document of the other identity
(never delivered: the collection's read rule shows each caller its own),
then the caller's create, patch and delete. Then the page closes the
stream, a change is written, and a new EventSource with a new ticket and
`last_event_id` gets exactly that change; the used ticket is refused (the
EventSource fails). Fails on any page error.
"""

import argparse
import json
import os
import shutil
import sys
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
TIMEOUT_MS = 15_000


def api(base, method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
        return r.status, (json.loads(text) if text else None)


OPEN_STREAM = """
async ([coll, token, lastId]) => {
  const r = await fetch(`/v1/collections/${coll}/events/tickets`,
                        {method: 'POST', headers: {Authorization: `Bearer ${token}`}});
  if (r.status !== 201) throw new Error(`ticket: ${r.status}`);
  const {ticket} = await r.json();
  window.lastTicket = ticket;
  let url = `/v1/collections/${coll}/events?ticket=${encodeURIComponent(ticket)}`;
  if (lastId) url += `&last_event_id=${encodeURIComponent(lastId)}`;
  window.got = [];
  window.opened = false;
  const es = new EventSource(url);
  window.es = es;
  es.onopen = () => { window.opened = true; };
  for (const kind of ['created', 'updated', 'deleted', 'reset']) {
    es.addEventListener(kind, (e) => window.got.push({kind, id: e.lastEventId, data: JSON.parse(e.data)}));
  }
}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--other", required=True)
    ap.add_argument("--collection", required=True)
    a = ap.parse_args()
    coll = a.collection
    docs = f"/v1/collections/{coll}/documents"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which(os.environ.get("CHROMIUM", "chromium")) or "/usr/bin/chromium",
            args=CHROMIUM_ARGS,
        )
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(a.base + "/healthz")

        print("step: EventSource opens with a ticket")
        page.evaluate(OPEN_STREAM, [coll, a.token, None])
        page.wait_for_function("window.opened === true")

        print("step: the caller's changes arrive; the other identity's do not")
        api(a.base, "POST", docs, a.other, {"_id": "not-yours", "text": "bob's"})
        api(a.base, "POST", docs, a.token, {"_id": "mine", "text": "hello"})
        api(a.base, "PATCH", f"{docs}/mine", a.token, {"text": "edited"})
        api(a.base, "DELETE", f"{docs}/mine", a.token)
        page.wait_for_function("window.got.length >= 3")
        got = page.evaluate("window.got")
        kinds = [(g["kind"], g["data"].get("_id")) for g in got]
        assert kinds == [("created", "mine"), ("updated", "mine"), ("deleted", "mine")], kinds
        assert got[1]["data"]["text"] == "edited", got[1]
        ids = [int(g["id"]) for g in got]
        assert ids == sorted(ids) and len(set(ids)) == 3, ids
        last = got[-1]["id"]

        print("step: closed, then resumed with a new ticket and last_event_id")
        used = page.evaluate("window.lastTicket")
        page.evaluate("window.es.close()")
        api(a.base, "POST", docs, a.token, {"_id": "meanwhile"})
        page.evaluate(OPEN_STREAM, [coll, a.token, last])
        page.wait_for_function("window.got.length >= 1")
        api(a.base, "POST", docs, a.token, {"_id": "live"})
        page.wait_for_function("window.got.length >= 2")
        got = page.evaluate("window.got")
        assert [(g["kind"], g["data"]["_id"]) for g in got] == [("created", "meanwhile"), ("created", "live")], got
        page.evaluate("window.es.close()")

        print("step: a used ticket is refused (the EventSource fails for good)")
        page.evaluate(
            """([coll, ticket]) => new Promise((resolve) => {
                 const es = new EventSource(`/v1/collections/${coll}/events?ticket=${ticket}`);
                 window.failed = null;
                 es.onerror = () => { window.failed = es.readyState; es.close(); resolve(); };
                 es.onopen = () => { window.failed = 'opened'; resolve(); };
               })""",
            [coll, used],
        )
        failed = page.evaluate("window.failed")
        assert failed == 2, f"readyState after a refused ticket: {failed}"

        assert not errors, errors
        browser.close()
    print("eventsource: all steps passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
