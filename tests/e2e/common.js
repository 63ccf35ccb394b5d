'use strict';
// What the browser scripts under tests/e2e share: environment, progress log, polling, the
// browser, VS Code's terminal, and the run wrapper that prints exactly one JSON result line on
// stdout (progress goes to stderr).

const path = require('path');
const { chromium } = require('playwright-core');

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

const t0 = Date.now();
const secs = () => ((Date.now() - t0) / 1000).toFixed(1);
let tag = 'e2e';
const log = (msg) => process.stderr.write(`[${tag} ${secs()}s] ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function poll(what, timeoutMs, fn, intervalMs = 250) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
    await sleep(intervalMs);
  }
}

async function launch() {
  return chromium.launch({
    executablePath: need('VOD_E2E_CHROMIUM'),
    headless: true,
    timeout: 60_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

// The management API, with the admin token from the environment; `timeoutMs` bounds the call.
async function api(method, route, timeoutMs = 30_000) {
  const base = need('VOD_E2E_API').replace(/\/$/, '');
  const resp = await fetch(`${base}/api${route}`, {
    method,
    headers: { Authorization: `Bearer ${need('VOD_E2E_ADMIN_TOKEN')}` },
    signal: AbortSignal.timeout(timeoutMs),
  });
  const body = await resp.json();
  if (!resp.ok) throw new Error(`${method} ${route} answered ${resp.status}: ${JSON.stringify(body)}`);
  return body;
}

async function openTerminal(page) {
  // Keyboard focus must be inside the workbench for its keybindings to fire.
  await page.locator('.monaco-workbench .part.statusbar').click({ timeout: 10_000 }).catch(() => {});
  await page.keyboard.press('Control+Backquote');
  const xterm = page.locator('.terminal-wrapper .xterm').first();
  try {
    await xterm.waitFor({ state: 'visible', timeout: 15_000 });
    log('terminal opened with Ctrl+`');
    return;
  } catch {
    log('Ctrl+` did not open a terminal; using the command palette');
  }
  await page.keyboard.press('F1');
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ state: 'visible', timeout: 10_000 });
  await input.fill('>Terminal: Create New Terminal');
  await page.locator('.quick-input-list .monaco-list-row').first().waitFor({ timeout: 10_000 });
  await page.keyboard.press('Enter');
  await xterm.waitFor({ state: 'visible', timeout: 20_000 });
}

async function focusTerminal(page) {
  const focused = () =>
    page.evaluate(() => !!document.activeElement && document.activeElement.classList.contains('xterm-helper-textarea'));
  if (!(await focused())) {
    await page.locator('.terminal-wrapper .xterm').first().click({ timeout: 10_000 });
  }
  await poll('keyboard focus in the terminal', 10_000, focused);
}

// Shell integration marks the first prompt with a decoration once the shell reads input. Soon
// after, VS Code replaces the shell with a fresh one when extensions (git, auto-attach)
// contribute environment variables to terminals nobody has typed in yet, and keys typed into
// the replaced shell are lost; the pause usually covers that, the caller's retries the rest.
async function waitForShell(page) {
  await page
    .locator('.terminal-wrapper .terminal-command-decoration')
    .first()
    .waitFor({ state: 'attached', timeout: 20_000 })
    .catch(() => log('no shell-integration prompt mark; typing after a pause'));
  await sleep(3_000);
}

// Runs `main(out)` within `budgetMs`, then prints `out` as the result line; a failure takes a
// screenshot of `out.page` first. `out.browser` is closed on the way out.
async function run(name, budgetMs, main, out) {
  tag = name;
  const watchdog = setTimeout(() => {
    log(`overall budget of ${budgetMs / 1000}s exceeded`);
    // playwright-core kills the browsers it launched when the process exits.
    process.exit(1);
  }, budgetMs);
  let code = 0;
  try {
    await main(out);
    out.ok = true;
  } catch (e) {
    code = 1;
    out.error = String((e && e.stack) || e);
    log(`FAILED: ${out.error}`);
    if (out.page) {
      // Where the page stood and what it said: the screenshot stays on the machine that ran it.
      out.failed_at = out.page.url();
      await out.page
        .evaluate(() => (document.body ? document.body.innerText : '').slice(0, 2000))
        .then((text) => {
          out.failed_page_text = text;
          log(`the page at ${out.failed_at} said: ${JSON.stringify(text)}`);
        })
        .catch((err) => log(`the page at ${out.failed_at} could not be read: ${err.message}`));
      const p = path.join(process.env.VOD_E2E_SCREENSHOTS || '.', 'failure.png');
      await out.page
        .screenshot({ path: p, timeout: 10_000 })
        .then(() => {
          out.screenshots.push(p);
          log(`failure screenshot ${p}`);
        })
        .catch((err) => log(`no failure screenshot: ${err.message}`));
    }
  } finally {
    const browser = out.browser;
    delete out.browser;
    delete out.page;
    if (browser) {
      let timer;
      const giveUp = new Promise((r) => (timer = setTimeout(r, 15_000)));
      await Promise.race([browser.close().catch(() => {}), giveUp]);
      clearTimeout(timer);
    }
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
  clearTimeout(watchdog);
  process.exitCode = code;
}

module.exports = { need, log, secs, sleep, poll, launch, api, openTerminal, focusTerminal, waitForShell, run };
