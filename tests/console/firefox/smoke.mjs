// The Arca console in Firefox: Debian's Firefox ESR driven over WebDriver
// BiDi by puppeteer-core (which downloads no browser). Run by
// crates/arca/tests/console.rs against a real `arca serve --dev`:
//
//   node smoke.mjs --base URL --token ADMIN_JWT
//
// A shorter walk than the Chromium run (tests/console/e2e.py), over what
// differs between engines: ES modules and the page's policy, the dev link
// (the token leaves the address bar), the JSON editor's per-line errors
// (422), the documents table with a filter, a document holding markup shown
// as text, the access page. Fails on any page error, Content-Security-Policy
// violation, console error that no step provoked, or request to another
// origin. FIREFOX names the browser (default firefox-esr, then firefox).

import {execFileSync} from 'node:child_process';
import puppeteer from 'puppeteer-core';

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || !process.argv[i + 1]) throw new Error(`--${name} is required`);
  return process.argv[i + 1];
}

function firefox() {
  for (const name of [process.env.FIREFOX, 'firefox-esr', 'firefox'].filter(Boolean)) {
    try {
      return execFileSync('sh', ['-c', `command -v ${name}`], {encoding: 'utf8'}).trim();
    } catch {
      // try the next one
    }
  }
  throw new Error('Firefox is needed (scripts/test installs Debian\'s firefox-esr)');
}

const base = arg('base').replace(/\/$/, '');
const token = arg('token');
const problems = [];
const check = (step) => {
  if (problems.length) throw new Error(`after ${step}: ${problems.join('; ')}`);
  console.log(`ok - firefox: ${step}`);
};
async function api(method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: {Authorization: `Bearer ${token}`, 'Content-Type': 'application/json'},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
}
const text = (page, sel) => page.$eval(sel, (el) => el.textContent);
const waitText = (page, sel, want) => page.waitForFunction(
  (s, w) => [...document.querySelectorAll(s)].some((el) => el.textContent.includes(w)), {timeout: 15000}, sel, want);

const browser = await puppeteer.launch({browser: 'firefox', executablePath: firefox(), headless: true});
let page;
try {
  page = await browser.newPage();
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  page.on('request', (r) => {
    // data: URLs are not requests to anyone (Firefox loads a font of its own that way).
    if (!r.url().startsWith(`${base}/`) && !r.url().startsWith('data:')) problems.push(`request to another origin: ${r.url()}`);
  });
  // Violations are collected in the page (the app never reloads below).
  await page.evaluateOnNewDocument(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const violations = async () => {
    for (const v of await page.evaluate(() => window.__violations ?? [])) problems.push(`CSP violation: ${v}`);
  };

  await api('PUT', '/v1/collections/ff', {
    schema: {type: 'object', properties: {title: {type: 'string'}, n: {type: 'integer', minimum: 0}}, required: ['title']},
    access: {read: {roles: ['*']}, create: {roles: ['*']}},
  });
  await api('POST', '/v1/collections/ff/documents', {_id: 'xss', title: '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>', n: 1});

  await page.goto(`${base}/console/#token=${token}`);
  await waitText(page, 'h1', 'Collections');
  if (page.url().includes('token')) throw new Error(`the token stayed in the address bar: ${page.url()}`);
  if (!(await page.evaluate(() => sessionStorage.getItem('arca.console.token')))) throw new Error('no token in sessionStorage');
  await waitText(page, 'table', 'ff');
  await violations();
  check('the dev link signs in, the token leaves the address bar, collections are listed');

  await page.goto(`${base}/console/#/collections/ff/documents/new`);
  await waitText(page, 'h1', 'New document in ff');
  const editor = 'textarea.code';
  await page.waitForSelector(editor);
  await page.$eval(editor, (t) => { t.value = ''; });
  await page.type(editor, '{\n"n": -1\n}');
  await page.click('#save-document');
  await waitText(page, '.error-list', '/n');
  const marked = await page.$$eval('.gutter .line.err', (els) => els.map((e) => e.textContent));
  if (marked.join(',') !== '1,2') throw new Error(`422 lines marked: ${marked}`);
  await page.$eval(editor, (t) => { t.value = ''; });
  await page.type(editor, '{"_id": "one", "title": "From Firefox", "n": 7}');
  await page.click('#save-document');
  await waitText(page, 'h1', 'Document one');
  await violations();
  check('a 422 is shown beside its lines; the corrected document is created');

  await page.goto(`${base}/console/#/collections/ff/documents`);
  await waitText(page, '#documents', 'xss');
  await page.type('#filter', '{"n": {"$gte": 5}}');
  await page.click('form.query button[type=submit]');
  await page.waitForFunction(() => document.querySelectorAll('#documents tbody tr').length === 1);
  if ((await text(page, '#documents tbody')).indexOf('From Firefox') < 0) throw new Error('filter result');
  check('the documents table filters');

  await page.goto(`${base}/console/#/collections/ff/documents/xss`);
  await page.waitForFunction(() => document.querySelector('textarea.code')?.value.includes('<script>'));
  if (await page.evaluate(() => window.__xss !== undefined)) throw new Error('markup in a document ran');
  if (await page.evaluate(() => document.querySelectorAll('main img, main script').length)) throw new Error('markup became elements');
  await violations();
  check('a document holding markup is shown as text');

  await page.goto(`${base}/console/#/access?collection=ff`);
  await waitText(page, 'h1', 'Access');
  await page.click('form button[type=submit]');
  await waitText(page, '#verdict', 'Allowed: read on ff (200)');
  await violations();
  check('access explained');
} catch (e) {
  if (page) {
    try {
      console.error(`--- the page at ${page.url()} showed:\n${await page.$eval('body', (b) => b.innerText)}`);
    } catch {
      // the page is gone
    }
  }
  console.error(`FAILED: ${e.message}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
console.log('console firefox: all steps passed');
