#!/usr/bin/env python3
"""End-to-end test of the Arca console in headless Chromium (Playwright).

Run by crates/arca/tests/console.rs against a real `arca serve`:

    e2e.py dev  --base URL --token ADMIN_JWT --arca BIN [--screenshots DIR]
    e2e.py oidc --base URL --issuer URL

`dev` signs in by pasting a token and by the --dev link, defines a
collection (400s shown in the editor they name), adds, filters, pages,
edits (a 412 conflict included) and deletes documents (422s shown per
field), shows documents holding markup and javascript: links as text,
tails a collection's change events live (values as text), uploads files
with progress (a thumbnail, a signed link, a retried upload stored once,
a hostile name shown as text, a delete), explains
access, walks the main pages with the keyboard, and sees a token expire. `oidc` signs in through the identity provider fixture with the
authorization code flow and PKCE, and checks that a wrong state or nonce is
refused. Every run fails on any console error or warning, page error,
Content-Security-Policy violation, or request to another origin than the
server's (and, for `oidc`, the issuer's). Uses Debian's Chromium
(the CHROMIUM command, default chromium): no browser is downloaded.
"""

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright, expect

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
# Playwright's own waits (each step should take well under a second).
TIMEOUT_MS = 15_000
expect.set_options(timeout=TIMEOUT_MS)


def report_page(page):
    """On a failure, prints what the page showed (the browser closes after)."""
    try:
        print(f"--- the page at {page.url} showed:\n{page.locator('body').inner_text(timeout=2000)}", file=sys.stderr)
    except Exception:  # noqa: BLE001
        pass


class Watch:
    """What the page must never do: console errors, page errors, CSP
    violations, requests elsewhere. Failed API calls that a step provokes
    on purpose (a 412, a 422...) make Chromium log "Failed to load
    resource"; each step declares them (`expect_status`), any other one
    fails the run."""

    def __init__(self, page, origins, judged=None):
        self.problems = []
        self.expected = []
        self.origins = origins
        # Whose console output and requests count: the console's origin
        # (the identity provider's own pages are not the console's).
        self.judged = judged or origins[0]
        page.on("console", self.on_console)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("request", self.on_request)
        page.expose_binding("__arcaCspViolation", lambda _src, v: self.problems.append(f"CSP violation: {v}"))
        # Injected by the DevTools protocol, which the page's CSP does not
        # govern; reports every violation of every document in the tab.
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', (e) => window.__arcaCspViolation("
            "`${e.violatedDirective} blocked ${e.blockedURI} (${e.sourceFile}:${e.lineNumber}) ${e.sample}`));")

    def on_console(self, msg):
        if msg.type not in ("error", "warning"):
            return
        m = re.match(r"Failed to load resource: the server responded with a status of (\d+)", msg.text)
        if m and int(m.group(1)) in self.expected:
            self.expected.remove(int(m.group(1)))
            return
        where = msg.location.get("url", "") if msg.location else ""
        if where and not where.startswith(self.judged):
            return
        self.problems.append(f"console {msg.type}: {msg.text} ({where})")

    def on_request(self, req):
        if not req.frame.url.startswith(self.judged):
            return
        # A blob: URL the page made is of the origin it names.
        url = req.url[len("blob:"):] if req.url.startswith("blob:") else req.url
        if not any(url.startswith(o) for o in self.origins):
            self.problems.append(f"request to another origin: {req.method} {req.url}")

    def expect_status(self, *statuses):
        self.expected.extend(statuses)

    def check(self, step):
        if self.problems:
            raise AssertionError(f"after {step}: " + "; ".join(self.problems))
        print(f"ok - {step}", flush=True)


def api(base, token, method, path, body=None, headers=None):
    """A direct API call (another client than the console)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None), r.headers
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None), e.headers


def launch(p):
    return p.chromium.launch(
        executable_path=shutil.which(os.environ.get("CHROMIUM", "chromium")) or "/usr/bin/chromium",
        args=CHROMIUM_ARGS, headless=True)


def tab_to(page, predicate_js, limit=80):
    """Presses Tab until `predicate_js(document.activeElement)` holds."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return !!el && ({predicate_js})(el); }})()"):
            return
    raise AssertionError(f"Tab never reached an element where {predicate_js}")


def focus_is_visible(page):
    return page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement); return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0; })()")


def shoot(page, folder, name):
    """A screenshot for the README (without the passing status message)."""
    if folder:
        page.evaluate("document.getElementById('notice').replaceChildren()")
        page.screenshot(path=os.path.join(folder, name))


def editor(page, label):
    """The textarea of the JSON editor labelled `label`."""
    return page.get_by_label(label, exact=True)


NOTES_SCHEMA_BAD = """{
  "type": "object",
  "properties": {
    "title": {"type": "string", "minLength": 1},
    "n": {"type": "integer", "minimum": 0, "frobnicate": true}
  }
}"""

NOTES_SCHEMA = """{
  "type": "object",
  "properties": {
    "title": {"type": "string", "minLength": 1},
    "n": {"type": "integer", "minimum": 0},
    "tags": {"type": "array", "items": {"type": "string"}}
  },
  "required": ["title"],
  "additionalProperties": false
}"""

NOTES_ACCESS = """{
  "read": {"roles": ["*"]},
  "create": {"roles": ["editor"]},
  "update": {"roles": ["editor"], "filter": {"_owner": {"$claim": "sub"}}},
  "delete": {"roles": ["editor"]}
}"""


def run_dev(args):
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        try:
            dev_steps(args, page)
        except Exception:
            report_page(page)
            raise
        context.close()
        browser.close()


class DevRun:
    """What every step of the dev-mode walk shares."""

    def __init__(self, args, page):
        self.args = args
        self.page = page
        self.base = args.base.rstrip("/")
        self.token = args.token
        self.shots = args.screenshots
        self.watch = Watch(page, [self.base + "/"])


def dev_steps(args, page):
    """The walk, in order: each step starts where the previous one left the data."""
    r = DevRun(args, page)
    for step in (step_sign_in, step_define_collection, step_documents, step_filter_and_sort,
                 step_edit_and_conflict, step_delete, step_markup_is_text, step_events, step_files,
                 step_access_explain,
                 step_keyboard, step_expiry):
        step(r)


def step_sign_in(r):
    """Sign in by pasting a token (a bad and a refused one first), then by the --dev link."""
    page, watch, base, token = r.page, r.watch, r.base, r.token
    page.goto(f"{base}/console/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Access token (JWT)").fill("not-a-token")
    page.get_by_role("button", name="Use this token").click()
    expect(page.locator(".field-error")).to_contain_text("not a JWT")
    tampered = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    watch.expect_status(401)
    page.get_by_label("Access token (JWT)").fill(tampered)
    page.get_by_role("button", name="Use this token").click()
    expect(page.locator(".field-error")).to_contain_text("refused")
    page.get_by_label("Access token (JWT)").fill(token)
    page.get_by_role("button", name="Use this token").click()
    expect(page.get_by_role("heading", name="Collections")).to_be_visible()
    expect(page.locator("#session .who")).to_have_text("dev-admin")
    expect(page.locator("#expiry")).to_contain_text("expires in 11 h")
    assert "token" not in page.url, page.url
    assert page.evaluate("document.cookie") == "", "no cookie"
    watch.check("sign in by pasting a token (a bad one and a refused one first)")

    # Sign out, then the --dev link: the token leaves the URL at once.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.goto(f"{base}/console/#token={token}")
    expect(page.get_by_role("heading", name="Collections")).to_be_visible()
    assert token not in page.url and "token=" not in page.url, page.url
    assert page.evaluate("history.length") >= 1
    stored = page.evaluate("sessionStorage.getItem('arca.console.token')")
    assert stored and token in stored, "the token moved to sessionStorage"
    assert page.evaluate("document.cookie") == ""
    watch.check("sign in with the --dev link; the token leaves the address bar")


def step_define_collection(r):
    """Define a collection through refused attempts, each 400 shown at the part it names."""
    page, watch, base, token = r.page, r.watch, r.base, r.token
    page.get_by_role("link", name="New collection").click()
    expect(page.get_by_role("heading", name="New collection")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("Notes!")
    page.get_by_role("button", name="Create collection").click()
    expect(page.locator(".field-error").first).to_contain_text("lowercase")
    page.get_by_label("Name", exact=True).fill("notes")
    editor(page, "Schema (JSON Schema 2020-12)").fill(NOTES_SCHEMA_BAD)
    editor(page, "Access rules").fill(NOTES_ACCESS)
    watch.expect_status(400)
    page.get_by_role("button", name="Create collection").click()
    schema_box = page.locator(".jsonedit").nth(0)
    expect(schema_box.locator(".error-list")).to_contain_text("frobnicate")
    # Line 5 holds "frobnicate": the gutter marks it, the note beside it says why.
    expect(schema_box.locator(".gutter .line.err")).to_have_text("5")
    expect(schema_box.locator(".notes .line").nth(4)).to_contain_text("frobnicate")
    watch.check("a 400 for the schema is shown beside the line it names")

    editor(page, "Schema (JSON Schema 2020-12)").fill(NOTES_SCHEMA)
    editor(page, "Access rules").fill(NOTES_ACCESS.replace('"delete"', '"remove"'))
    watch.expect_status(400)
    page.get_by_role("button", name="Create collection").click()
    access_box = page.locator(".jsonedit").nth(2)
    expect(access_box.locator(".error-list")).to_contain_text("unknown action")
    expect(access_box.locator(".gutter .line.err")).to_have_text("5")
    expect(schema_box.locator(".error-list")).to_be_empty()
    editor(page, "Indexes").fill('[{"fields": {"n": 2}}]')
    editor(page, "Access rules").fill(NOTES_ACCESS)
    watch.expect_status(400)
    page.get_by_role("button", name="Create collection").click()
    index_box = page.locator(".jsonedit").nth(1)
    expect(index_box.locator(".error-list")).to_contain_text("must be 1 or -1")
    editor(page, "Indexes").fill('[{"fields": {"n": -1}}]')
    editor(page, "Schema (JSON Schema 2020-12)").fill('{"type": "object",\n  "properties": {}\n')
    page.get_by_role("button", name="Create collection").click()
    expect(schema_box.locator(".error-list")).to_contain_text("JSON syntax")
    editor(page, "Schema (JSON Schema 2020-12)").fill(NOTES_SCHEMA)
    page.get_by_role("button", name="Create collection").click()
    expect(page.get_by_role("heading", name="Collection notes")).to_be_visible()
    status, body, _ = api(base, token, "GET", "/v1/collections/notes")
    assert status == 200 and body["indexes"][0]["fields"] == {"n": -1}, body
    watch.check("create a collection (400s for access and indexes, a syntax error, then 201)")


def step_documents(r):
    """Add documents (a 422 per field first), then page through them."""
    page, watch, base, token, shots = r.page, r.watch, r.base, r.token, r.shots
    page.get_by_role("link", name="Documents", exact=True).click()
    expect(page.get_by_role("heading", name="Documents of notes")).to_be_visible()
    expect(page.get_by_text("No documents yet.")).to_be_visible()
    page.get_by_role("link", name="New document").click()
    expect(page.get_by_role("heading", name="New document in notes")).to_be_visible()
    doc_editor = page.get_by_label('Document (JSON; add "_id" to choose the id)')
    doc_editor.fill('{\n  "_id": "first",\n  "n": -1,\n  "colour": "red"\n}')
    watch.expect_status(422)
    page.get_by_role("button", name="Create document").click()
    errs = page.locator(".error-list")
    expect(errs).to_contain_text("/n")
    expect(errs).to_contain_text("/title")
    expect(errs).to_contain_text("/colour")
    # /n is on line 3, /colour on line 4, /title (missing) at its object on line 1.
    expect(page.locator(".gutter .line.err")).to_have_text(["1", "3", "4"])
    expect(page.locator(".notes .line").nth(2)).to_contain_text("minimum")
    shoot(page, shots, "console-document-errors.png")
    doc_editor.fill('{\n  "_id": "first",\n  "title": "First note",\n  "n": 1,\n  "tags": ["a"]\n}')
    page.get_by_role("button", name="Create document").click()
    expect(page.get_by_role("heading", name="Document first")).to_be_visible()
    expect(page.locator("#document-meta")).to_contain_text("_rev1")
    watch.check("add a document (a 422 shown per field first)")

    # More documents through the API: 24 in all, for paging.
    for i in range(2, 25):
        s, b, _ = api(base, token, "POST", "/v1/collections/notes/documents",
                      {"_id": f"note{i:02d}", "title": f"Note {i}", "n": i})
        assert s == 201, (s, b)
    page.get_by_role("link", name="← Documents of notes").click()
    expect(page.locator("#documents tbody tr")).to_have_count(20)
    expect(page.locator(".summary")).to_have_text("20 shown of 24 matching")
    page.get_by_role("button", name="Next").click()
    expect(page.locator("#documents tbody tr")).to_have_count(4)
    expect(page.get_by_role("button", name="Next")).to_be_disabled()
    page.get_by_role("button", name="Previous").click()
    expect(page.locator("#documents tbody tr")).to_have_count(20)
    expect(page.locator("#documents tbody tr").first.locator("th")).to_have_text("first")
    watch.check("cursor paging: 20, then 4, then back")


def step_filter_and_sort(r):
    """Filter and sort."""
    page, watch, shots = r.page, r.watch, r.shots
    page.get_by_label("Filter (JSON)").fill('{"n": {"$gte": 20}}')
    page.get_by_label("Sort").fill("-n")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#documents tbody tr")).to_have_count(5)
    expect(page.locator("#documents tbody tr").first.locator("th")).to_have_text("note24")
    expect(page.locator(".summary")).to_have_text("5 shown of 5 matching")
    assert "filter=" in page.url and "sort=-n" in page.url, page.url
    watch.expect_status(400)
    page.get_by_label("Filter (JSON)").fill('{"$where": "sleep(1)"}')
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#filter-error, .field-error").first).to_contain_text("$where")
    page.get_by_label("Filter (JSON)").fill('{"n": ')
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(".field-error").first).to_contain_text("JSON syntax")
    watch.expect_status(400)
    page.get_by_label("Filter (JSON)").fill('{"title": {"$regex": "^Note 1"}}')
    page.get_by_label("Sort").fill("n,,")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(".field-error").nth(1)).to_contain_text("sort")
    page.get_by_label("Sort").fill("n")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#documents tbody tr")).to_have_count(10)
    shoot(page, shots, "console-documents.png")
    watch.check("filter and sort (bad filter and sort shown beside their fields)")


def step_edit_and_conflict(r):
    """Edit; a 412 conflict."""
    page, watch, base, token = r.page, r.watch, r.base, r.token
    page.goto(f"{base}/console/#/collections/notes/documents/note12")
    expect(page.get_by_role("heading", name="Document note12")).to_be_visible()
    edit = page.get_by_label("Document (JSON, without system fields)")
    edit.fill('{"title": "Note 12, edited", "n": 12}')
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".status")).to_contain_text("Saved: revision 2")
    watch.expect_status(422)
    edit.fill('{\n  "title": "",\n  "n": 12\n}')
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".gutter .line.err")).to_have_text("2")
    # Another client saves meanwhile.
    s, b, _ = api(base, token, "PATCH", "/v1/collections/notes/documents/note12", {"n": 1200})
    assert s == 200 and b["_rev"] == 3, (s, b)
    edit.fill('{"title": "My edit", "n": 12}')
    watch.expect_status(412)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Changed since you opened it")).to_be_visible()
    expect(page.locator("#conflict-mine")).to_contain_text("My edit")
    expect(page.locator("#conflict-theirs")).to_contain_text("1200")
    expect(page.locator(".conflict")).to_contain_text("You edited revision 2; the document is now at revision 3")
    expect(page.locator(".conflict")).to_contain_text("fields that differ: title, n")
    page.get_by_role("button", name="Reload the current version (discard my edit)").click()
    expect(page.locator(".conflict")).to_be_hidden()
    assert "1200" in edit.input_value()
    edit.fill('{"title": "After reload", "n": 13}')
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".status")).to_contain_text("Saved: revision 4")
    # And once more, keeping the local edit this time.
    api(base, token, "PATCH", "/v1/collections/notes/documents/note12", {"n": 14})
    edit.fill('{"title": "Mine wins", "n": 15}')
    watch.expect_status(412)
    page.get_by_role("button", name="Save").click()
    page.get_by_role("button", name="Save my version over it").click()
    expect(page.locator("#document-meta")).to_contain_text("_rev6")
    s, b, _ = api(base, token, "GET", "/v1/collections/notes/documents/note12")
    assert b["title"] == "Mine wins" and b["n"] == 15, b
    watch.check("edit, a 422, then a 412 conflict: reload, and save over")

    # Big integers and floats survive the editor unchanged.
    s, b, _ = api(base, token, "POST", "/v1/collections/notes/documents",
                  {"_id": "big", "title": "big", "n": 9007199254740993})
    assert s == 201, b
    page.goto(f"{base}/console/#/collections/notes/documents/big")
    expect(page.get_by_label("Document (JSON, without system fields)")).to_have_value(re.compile("9007199254740993"))
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".status")).to_contain_text("Saved: revision 2")
    req = urllib.request.Request(base + "/v1/collections/notes/documents/big", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as r:
        assert b'"n":9007199254740993' in r.read().replace(b" ", b"")
    watch.check("a 64-bit integer round-trips through the editor")


def step_delete(r):
    """Delete."""
    page, watch, base, token = r.page, r.watch, r.base, r.token
    page.goto(f"{base}/console/#/collections/notes/documents/note05")
    page.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Yes, delete").click()
    expect(page.get_by_role("heading", name="Documents of notes")).to_be_visible()
    s, _, _ = api(base, token, "GET", "/v1/collections/notes/documents/note05")
    assert s == 404, s
    # An address that is not valid percent-encoding fails on the page, not in the console.
    page.goto(f"{base}/console/#/collections/notes/documents/%E0%A4%A")
    expect(page.get_by_text("This page failed:")).to_be_visible()
    watch.check("delete a document")


def step_markup_is_text(r):
    """Documents holding markup are shown, never run."""
    page, watch, base, token = r.page, r.watch, r.base, r.token
    api(base, token, "PUT", "/v1/collections/loose", {"schema": {"type": "object"}, "access": {"read": {"roles": ["*"]}}})
    evil = {
        "_id": "xss",
        "html": "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\">",
        "link": "javascript:window.__xss = 3",
        "<img src=x onerror=__xss=4>": "<b>bold?</b>",  # a field name may not hold a dot
    }
    s, b, _ = api(base, token, "POST", "/v1/collections/loose/documents", evil)
    assert s == 201, b
    page.goto(f"{base}/console/#/collections/loose/documents")
    expect(page.locator("#documents tbody tr")).to_have_count(1)
    expect(page.locator("#documents")).to_contain_text("<script>window.__xss = 1</script>")
    expect(page.locator("#documents thead")).to_contain_text("<img src=x onerror=__xss=4>")
    page.get_by_role("link", name="xss").click()
    expect(page.get_by_label("Document (JSON, without system fields)")).to_have_value(re.compile("javascript:window.__xss = 3"))
    time.sleep(0.5)
    assert page.evaluate("window.__xss") is None, "markup in a document ran"
    assert page.locator("main script, main img, main b").count() == 0
    assert page.locator("a[href^='javascript']").count() == 0
    watch.check("a document with <script>, onerror and javascript: is shown as text")


def step_events(r):
    """The Events page tails a collection live (EventSource with a ticket), values as text."""
    page, watch, base, token = r.page, r.watch, r.base, r.token
    page.goto(f"{base}/console/#/collections")
    page.get_by_role("link", name="Events").click()
    expect(page.get_by_role("heading", name="Events")).to_be_visible()
    page.get_by_label("Collection", exact=True).fill("loose")
    page.get_by_role("button", name="Follow").click()
    expect(page.locator("#events-status")).to_contain_text("waiting for changes")
    s, b, _ = api(base, token, "POST", "/v1/collections/loose/documents",
                  {"_id": "live", "html": "<script>window.__xss = 5</script>"})
    assert s == 201, b
    rows = page.locator("#events-rows tr")
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_contain_text("created")
    expect(rows.nth(0)).to_contain_text("<script>window.__xss = 5</script>")
    s, b, _ = api(base, token, "PATCH", "/v1/collections/loose/documents/live", {"html": "plain"})
    assert s == 200, b
    s, _, _ = api(base, token, "DELETE", "/v1/collections/loose/documents/live")
    assert s == 204, s
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("deleted")
    expect(rows.nth(1)).to_contain_text("updated")
    assert page.evaluate("window.__xss") is None, "markup in an event ran"
    assert page.locator("#events-rows script").count() == 0
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#events-status")).to_contain_text("Stopped after event")
    # Stopped: a later change does not appear.
    api(base, token, "POST", "/v1/collections/loose/documents", {"_id": "after-stop"})
    page.get_by_role("link", name="Documents of loose").click()
    expect(page.get_by_role("heading", name="Documents of loose")).to_be_visible()
    page.go_back()
    expect(page.locator("#events-status")).to_contain_text("waiting for changes")
    api(base, token, "POST", "/v1/collections/loose/documents", {"_id": "fresh"})
    expect(page.locator("#events-rows tr")).to_have_count(1)
    expect(page.locator("#events-rows tr").nth(0)).to_contain_text("fresh")
    watch.check("the Events page tails a collection live; event data shown as text")


def png(width, height):
    """A small RGB PNG (a gradient), encoded here: zlib and CRC-32."""
    import struct
    import zlib
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 128))
        for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def step_files(r):
    """The Files page: upload with progress, thumbnail, signed link, a retry stored once, delete, listing."""
    page, watch, base, token = r.page, r.watch, r.base, r.token
    page.goto(f"{base}/console/#/collections")
    page.get_by_role("link", name="Files").click()
    expect(page.get_by_role("heading", name="Files", exact=True)).to_be_visible()
    expect(page.locator("#files-empty")).to_be_visible()
    picture = png(320, 200)
    page.get_by_label("File", exact=True).set_input_files(
        {"name": "beach.png", "mimeType": "image/png", "buffer": picture})
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-status")).to_have_text(re.compile(r"^Stored beach\.png \(\d"))
    assert page.evaluate("document.getElementById('upload-progress').value === document.getElementById('upload-progress').max")
    card = page.locator("section.file").first
    expect(card).to_contain_text("beach.png")
    expect(card).to_contain_text("320 × 200 png")
    file_id = card.get_attribute("data-file")
    # The thumbnail: the API's bytes, decoded by the browser from a blob: URL.
    # (Polled from here: wait_for_function would need eval, which the
    # console's policy forbids.)
    expect(card.locator("img.thumbnail")).to_have_attribute("src", re.compile(r"^blob:"))
    deadline = time.time() + TIMEOUT_MS / 1000
    while page.evaluate("(() => { const i = document.querySelector('section.file img.thumbnail');"
                        " return i.complete ? i.naturalWidth : -1; })()") != 160:
        assert time.time() < deadline, "the thumbnail did not load at 160 px wide"
        time.sleep(0.05)
    # A signed link serves the file to a client without the token.
    card.get_by_role("button", name="Signed link").click()
    link = card.locator(f"#link-{file_id}")
    expect(link).to_have_value(re.compile(r"sig="))
    url = link.input_value()
    assert url.startswith(base + "/v1/files/"), url
    with urllib.request.urlopen(url, timeout=10) as res:
        assert res.status == 200 and res.read() == picture
    page.evaluate("window.scrollTo(0, document.querySelector('section.file').offsetTop - 8)")
    shoot(page, r.shots, "console-files.png")
    # A retry under the same key after a lost answer: the page's own upload
    # function, called twice with one key, stores one file.
    replay = page.evaluate("""async () => {
        const key = 'console-retry-key-1';
        const send = () => fetch(new URL('../v1/files?filename=twice.txt', location.href), {method: 'POST',
          headers: {Authorization: `Bearer ${JSON.parse(sessionStorage.getItem('arca.console.token')).token}`,
                    'Idempotency-Key': key, 'Content-Type': 'text/plain'}, body: 'sent twice'});
        const a = await send(); const b = await send();
        return [a.status, b.status, b.headers.get('Idempotent-Replayed'), (await a.json()).id, (await b.json()).id];
    }""")
    assert replay[:3] == [201, 201, "true"] and replay[3] == replay[4], replay
    # A hostile name is shown as text; the file opens by id.
    hostile = '<img src=x onerror="window.__xss=6">.txt'
    req = urllib.request.Request(f"{base}/v1/files?filename={urllib.parse.quote(hostile)}", data=b"plain text",
                                 method="POST", headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as res:
        other = json.loads(res.read())
    page.get_by_label("File id").fill(other["id"])
    page.get_by_role("button", name="Open").click()
    other_card = page.locator(f'section.file[data-file="{other["id"]}"]')
    expect(other_card).to_contain_text("text/plain")
    expect(other_card.locator("h2")).to_have_text(other["filename"])
    assert page.evaluate("window.__xss") is None, "markup in a file name ran"
    assert page.locator("section.file img").count() == 1, "only the image has a thumbnail"
    # Delete, with a confirmation.
    other_card.get_by_role("button", name="Delete").click()
    other_card.get_by_role("button", name="Yes, delete").click()
    expect(other_card).to_have_count(0)
    s, _, _ = api(base, token, "GET", f"/v1/files/{other['id']}/metadata")
    assert s == 404, s
    watch.expect_status(404)
    # A file that is gone says so where it is shown.
    page.get_by_label("File id").fill(other["id"])
    page.get_by_role("button", name="Open").click()
    expect(page.locator(f'section.file[data-file="{other["id"]}"] .problem')).to_contain_text("404")
    # Back on the page, the caller's files come from the API's listing,
    # newest first (the deleted one gone), a page of 20 at a time.
    page.get_by_role("link", name="Access", exact=True).click()
    page.get_by_role("link", name="Files").click()
    cards = page.locator("#files-list section.file")
    expect(cards).to_have_count(2)
    assert cards.locator("h2").all_text_contents() == ["twice.txt", "beach.png"], \
        cards.locator("h2").all_text_contents()
    expect(page.locator("#files-more")).to_be_hidden()
    for n in range(20):
        req = urllib.request.Request(f"{base}/v1/files?filename=bulk-{n:02}.txt", data=b"bulk", method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as res:
            assert res.status == 201
    someone = subprocess.run([r.args.arca, "token", "--sub", "someone-else"],
                             check=True, capture_output=True, text=True).stdout.strip()
    req = urllib.request.Request(f"{base}/v1/files?filename=theirs.txt", data=b"not mine", method="POST",
                                 headers={"Authorization": f"Bearer {someone}", "Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as res:
        assert res.status == 201
    page.get_by_role("link", name="Access", exact=True).click()
    page.get_by_role("link", name="Files").click()
    expect(cards).to_have_count(20)
    expect(cards.first.locator("h2")).to_have_text("bulk-19.txt")
    page.get_by_role("button", name="Load more").click()
    expect(cards).to_have_count(22)
    expect(cards.last.locator("h2")).to_have_text("beach.png")
    expect(page.locator("#files-more")).to_be_hidden()
    assert page.locator("#files-list").get_by_text("theirs.txt").count() == 0, "another caller's file in one's own list"
    # An admin may list every file of the tenant: someone else's too.
    page.get_by_label("Every file of the tenant (admins only)").check()
    expect(page.get_by_role("heading", name="Every file of the tenant")).to_be_visible()
    expect(cards.first.locator("h2")).to_have_text("theirs.txt")
    expect(cards).to_have_count(20)
    page.get_by_role("button", name="Load more").click()
    expect(cards).to_have_count(23)
    watch.check("the Files page: upload with progress, thumbnail, signed link, retry stored once, delete, listing")


def step_access_explain(r):
    """Access explain."""
    page, watch = r.page, r.watch
    page.get_by_role("link", name="Access", exact=True).click()
    expect(page.get_by_role("heading", name="Access", exact=True)).to_be_visible()
    page.get_by_label("Collection", exact=True).fill("notes")
    page.get_by_label("Action").select_option("update")
    page.get_by_role("button", name="Explain").click()
    expect(page.locator("#verdict")).to_have_text("Allowed: update on notes (200)")
    page.get_by_label("another identity").check()
    page.get_by_label("Subject (sub)").fill("ana")
    page.get_by_label("Roles (claim roles), comma-separated").fill("viewer")
    page.get_by_role("button", name="Explain").click()
    expect(page.locator("#verdict")).to_have_text("Denied: update on notes (403)")
    page.get_by_label("Roles (claim roles), comma-separated").fill("editor, viewer")
    page.get_by_role("button", name="Explain").click()
    expect(page.locator("#verdict")).to_have_text("Allowed: update on notes (200)")
    expect(page.locator("#explain-result")).to_contain_text('"$literal": "ana"')
    watch.check("explain access for the caller and for another identity")


def step_keyboard(r):
    """Keyboard."""
    page, watch, base = r.page, r.watch, r.base
    page.goto(f"{base}/console/#/collections")
    page.reload()
    expect(page.get_by_role("heading", name="Collections")).to_be_visible()
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content", f"first Tab stop: {focused!r}"
    assert focus_is_visible(page), "focus is visible on the skip link"
    page.keyboard.press("Enter")
    focused = page.evaluate("document.activeElement.id")
    assert focused == "main", f"the skip link moved focus to {focused!r}"
    tab_to(page, "(el) => el.textContent === 'notes' && el.tagName === 'A'")
    assert focus_is_visible(page), "focus is visible on a table link"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Documents of notes")).to_be_visible()
    assert page.evaluate("document.activeElement.tagName") == "H1", "focus moves to the new page's heading"
    tab_to(page, "(el) => el.id === 'filter'")
    page.keyboard.type('{"n": 3}')
    page.keyboard.press("Enter")
    expect(page.locator("#documents tbody tr")).to_have_count(1)
    tab_to(page, "(el) => el.closest('#documents') && el.tagName === 'A'")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Document note03")).to_be_visible()
    tab_to(page, "(el) => el.tagName === 'TEXTAREA'")
    page.keyboard.press("Control+End")
    tab_to(page, "(el) => el.id === 'save-document'")
    page.keyboard.press("Enter")
    expect(page.locator(".status")).to_contain_text("Saved: revision 2")
    page.evaluate("document.activeElement.blur()")
    tab_to(page, "(el) => el.getAttribute('href') === '#/access'")
    assert focus_is_visible(page), "focus is visible in the navigation"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Access", exact=True)).to_be_visible()
    tab_to(page, "(el) => el.id === 'access-collection'")
    page.keyboard.type("notes")
    tab_to(page, "(el) => el.tagName === 'BUTTON' && el.textContent === 'Explain'")
    page.keyboard.press("Enter")
    expect(page.locator("#verdict")).to_contain_text("Allowed")
    page.goto(f"{base}/console/#/collections/notes")
    expect(page.get_by_role("heading", name="Collection notes")).to_be_visible()
    tab_to(page, "(el) => el.tagName === 'TEXTAREA'")
    tab_to(page, "(el) => el.textContent === 'Save definition'")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").filter(has_text="Saved at")).to_be_visible()
    watch.check("keyboard: skip link, collections, documents (filter, open, save), access, definition")


def step_expiry(r):
    """An expiring token."""
    page, watch = r.page, r.watch
    page.get_by_role("button", name="Sign out").click()
    # Minted now, with the server's dev key: it expires within seconds.
    short = subprocess.run([r.args.arca, "token", "--sub", "short-lived", "--role", "admin", "--ttl", "12s"],
                           check=True, capture_output=True, text=True).stdout.strip()
    page.get_by_label("Access token (JWT)").fill(short)
    page.get_by_role("button", name="Use this token").click()
    # Signed in (back on the page that was open), with the expiry shown...
    expect(page.locator("#session .who")).to_have_text("short-lived")
    expect(page.locator("#expiry")).to_contain_text(re.compile(r"expires in \d+ s"))
    # ...then signed out when it passes. ("Your token expired" is only said
    # to a signed-in session; a token already expired at paste is refused
    # with "The token expired".)
    expect(page.get_by_text(re.compile("Your token expired at"))).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('arca.console.token')") is None
    watch.check("an expired token signs the console out, saying so")

def b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def run_oidc(args):
    with sync_playwright() as p:
        browser = launch(p)
        pages = []
        try:
            oidc_steps(args, browser, pages)
        except Exception:
            if pages:
                report_page(pages[-1])
            raise
        browser.close()


def oidc_steps(args, browser, pages):
    base, issuer = args.base.rstrip("/"), args.issuer.rstrip("/")

    def fresh_page():
        """A new browser profile: no session at the identity provider yet."""
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        pages.append(page)
        # The IdP's own pages are not the console's: only the console's
        # output and requests are judged, and it may reach only its own
        # origin and the issuer.
        return page, Watch(page, [base + "/", issuer + "/"], judged=base + "/")

    def sign_in_at_idp(page):
        page.goto(f"{base}/console/#/collections")
        page.get_by_role("button", name=re.compile("^Sign in with 127.0.0.1:")).click()
        page.wait_for_url(re.compile(r"/interaction/"))
        page.fill("input[name=login]", "alice")
        page.fill("input[name=password]", "any")
        page.click("button[type=submit]")
        # The consent page.
        page.wait_for_url(re.compile(r"/interaction/"))
        page.click("button[type=submit]")

    page, watch = fresh_page()
    authorize = []
    page.on("request", lambda r: authorize.append(r.url) if "/oauth2/authorize" in r.url else None)
    sign_in_at_idp(page)
    expect(page.get_by_role("heading", name="Collections")).to_be_visible()
    expect(page.locator("#session .who")).to_have_text("alice")
    expect(page.locator("#session .roles")).to_have_text("admin")
    assert "code=" not in page.url and "state=" not in page.url, page.url
    assert page.evaluate("sessionStorage.getItem('arca.console.oidc')") is None, "the round trip's secrets are gone"
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize[0]).query))
    assert q["code_challenge_method"] == "S256", q
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["code_challenge"]), q
    assert q["client_id"] == "arca-console" and q["redirect_uri"] == f"{base}/console/", q
    assert len(q["state"]) >= 16 and len(q["nonce"]) >= 16 and q["state"] != q["nonce"], q
    assert "openid" in q["scope"].split(), q
    # The access token works against the API: the console listed collections.
    expect(page.get_by_text("No collections yet.")).to_be_visible()
    watch.check("sign in through the identity provider (code flow, PKCE S256)")

    # A callback whose state is not the one sent is refused.
    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{base}/console/?code=forged&state=forged")
    expect(page.get_by_text(re.compile("No sign-in was in progress|another state"))).to_be_visible()
    assert "code=" not in page.url
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    watch.check("a callback with an unknown state is refused")

    # An ID token without this sign-in's nonce is refused: the real token
    # response, its ID token's nonce changed on the way.
    page, watch = fresh_page()

    def tamper(route):
        res = route.fetch()
        body = res.json()
        head, payload, sig = body["id_token"].split(".")
        claims = b64url_json(payload)
        claims["nonce"] = "not-the-nonce"
        body["id_token"] = ".".join([head, base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("="), sig])
        route.fulfill(response=res, body=json.dumps(body))
    page.route(re.compile(r".*/oauth2/token$"), tamper)
    sign_in_at_idp(page)
    expect(page.get_by_text(re.compile("nonce"))).to_be_visible()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('arca.console.token')") is None
    watch.check("an ID token with another nonce is refused")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["dev", "oidc"])
    ap.add_argument("--base", required=True)
    ap.add_argument("--token")
    ap.add_argument("--arca", help="the arca binary, to mint a short-lived token (its environment names the data)")
    ap.add_argument("--issuer")
    ap.add_argument("--screenshots")
    args = ap.parse_args()
    if args.mode == "dev":
        run_dev(args)
    else:
        run_oidc(args)
    print("console e2e: all steps passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 (any failure fails the run, with its message)
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
