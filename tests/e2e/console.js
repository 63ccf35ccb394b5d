'use strict';
// The console at `/` in headless Chromium: a wrong token is refused with the API's message,
// the right one signs in; a create with a bad field shows the API's message next to that
// field; a good one adds a row, which moves Stopped → Starting → Running after "Open", then
// Stopped after "Stop", and goes away after "Delete"; the new tab shows the starting page
// meanwhile. Screenshots of each step.

const path = require('path');
const { need, log, poll, launch, run } = require('./common');

const shots = need('VOD_E2E_SCREENSHOTS');
const base = need('VOD_E2E_API').replace(/\/$/, '');

async function shot(out, page, name, clip) {
  const p = path.join(shots, `${name}.png`);
  await page.screenshot(clip ? { path: p, clip } : { path: p, fullPage: true });
  out.screenshots.push(p);
  log(`screenshot ${p}`);
}

run('console', 120_000, async (out) => {
  out.browser = await launch();
  const context = await out.browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1200, height: 760 } });
  const page = await context.newPage();
  out.page = page;
  const cspErrors = [];
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) cspErrors.push(m.text()); });
  await page.goto(`${base}/`);

  // A wrong token: the API's message beside the token field, and still signed out.
  await page.fill('#token', 'not-the-token');
  await page.click('#signin-form button[type=submit]');
  await poll('the wrong-token message', 10_000, async () => (await page.textContent('#token-error')).includes('wrong'));
  out.wrong_token_message = await page.textContent('#token-error');
  out.stored_after_wrong = await page.evaluate(() => sessionStorage.getItem('vod-admin-token'));
  await shot(out, page, 'console-wrong-token');

  await page.fill('#token', need('VOD_E2E_ADMIN_TOKEN'));
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#app:not([hidden])', { timeout: 10_000 });
  out.cookies = await context.cookies();
  out.url_after_signin = page.url();

  // A field the API refuses: its message next to that field.
  await page.fill('#f-user_id', 'alice');
  await page.fill('#f-memory_limit', 'lots');
  await page.click('#create-form button[type=submit]');
  await poll('the memory_limit message', 10_000, async () => (await page.textContent('#e-memory_limit')).length > 0);
  out.field_error = await page.textContent('#e-memory_limit');
  out.field_invalid = await page.getAttribute('#f-memory_limit', 'aria-invalid');
  await shot(out, page, 'console-field-error');

  await page.fill('#f-memory_limit', '');
  await page.fill('#f-user_id', 'alice');
  await page.click('#create-form button[type=submit]');
  await poll('the created message', 10_000, async () => (await page.textContent('#created')).startsWith('Created'));
  const id = (await page.textContent('#created')).match(/Created (\S+)\./)[1];
  out.instance = id;
  const status = async () => (await page.textContent(`#row-${id} td.status`).catch(() => '')).trim();
  await poll('the new row', 10_000, async () => (await status()) === 'Stopped');

  // Open: a new tab on the instance's URL (with its token) starts it.
  const seen = new Set();
  const popup = context.waitForEvent('page');
  await page.click(`#row-${id} button[data-action=open]`);
  const tab = await popup;
  // The tab shows our starting page while the instance starts (a second and a half here).
  await poll('the starting page', 30_000, async () => /Starting VS Code/.test(await tab.textContent('body').catch(() => '')), 50);
  out.starting_page = (await tab.textContent('body')).replace(/\s+/g, ' ').trim();
  await shot(out, tab, 'starting-page', { x: 0, y: 0, width: 1200, height: 260 });
  await poll('Running', 60_000, async () => {
    const s = await status();
    seen.add(s);
    return s === 'Running';
  }, 100);
  out.seen = [...seen];
  await tab.close();
  await shot(out, page, 'console-running');

  await page.click(`#row-${id} button[data-action=workspace]`);
  await poll('the workspace', 10_000, async () => (await page.textContent('#ws')).includes('alice'));

  await page.click(`#row-${id} button[data-action=stop]`);
  await poll('Stopped', 30_000, async () => (await status()) === 'Stopped');
  out.stop_reason = (await page.textContent(`#row-${id} td:nth-child(6)`)).trim();
  await shot(out, page, 'console-stopped');

  await page.click(`#row-${id} button[data-action=delete]`);
  await poll('the row to go', 30_000, async () => (await page.$(`#row-${id}`)) === null);
  out.csp_errors = cspErrors;
}, { screenshots: [] });
