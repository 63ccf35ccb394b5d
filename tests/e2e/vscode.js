'use strict';
// Drives a real VS Code (code-server) through the vscode-on-demand proxy in headless Chromium.
// Run by tests/vscode_e2e.rs, which passes everything through the environment:
//   VOD_E2E_URL          the documented instance URL with ?tkn=, on the public host
//   VOD_E2E_ORIGIN       the instance's own origin, which that URL hands the browser over to
//   VOD_E2E_API          server base URL, for the management API
//   VOD_E2E_ADMIN_TOKEN  API bearer token (kept out of argv, which any local user can read)
//   VOD_E2E_INSTANCE     instance id
//   VOD_E2E_WORKSPACE    the instance's workspace directory on disk
//   VOD_E2E_CHROMIUM     chromium executable
//   VOD_E2E_SCREENSHOTS  directory for screenshots
// Progress goes to stderr; stdout carries exactly one JSON line, the result.

const fs = require('fs');
const path = require('path');
const { need, log, secs, sleep, poll, launch, api, openTerminal, focusTerminal, waitForShell, run } = require('./common');

const BUDGET_MS = 250_000;
const WORKBENCH_TIMEOUT_MS = 120_000;
const FILE_NAME = 'persisted.txt';
const FILE_TEXT = 'e2e-persist';
const STARTING_TITLE = 'Starting VS Code…';

function fileText(p) {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return null;
  }
}

async function main(out) {
  const url = need('VOD_E2E_URL');
  const id = need('VOD_E2E_INSTANCE');
  const workspace = need('VOD_E2E_WORKSPACE');
  const shots = need('VOD_E2E_SCREENSHOTS');
  fs.mkdirSync(shots, { recursive: true });
  const instancePath = `/instances/${id}/`;
  const target = path.join(workspace, FILE_NAME);

  out.browser = await launch();
  const context = await out.browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 800 },
  });
  const page = await context.newPage();
  out.page = page;
  page.setDefaultTimeout(30_000);

  // Everything observed is tagged with the phase it happened in: the first start or the wake.
  let phase = 'first';
  const titles = [];
  out.titles = titles;
  page.on('domcontentloaded', async () => {
    const title = await page.title().catch(() => null);
    titles.push({ phase, title, url: page.url().split('?')[0] });
  });
  page.on('websocket', (ws) => {
    const rec = { phase, url: ws.url().split('?')[0], sent: 0, received: 0, closed: false };
    out.websockets.push(rec);
    ws.on('framesent', () => rec.sent++);
    ws.on('framereceived', () => rec.received++);
    ws.on('close', () => (rec.closed = true));
    ws.on('socketerror', (e) => (rec.error = String(e)));
  });
  page.on('response', (r) => {
    if (r.status() >= 400) {
      out.bad_responses.push({ phase, status: r.status(), method: r.request().method(), url: r.url() });
    }
  });
  page.on('requestfailed', (r) => {
    out.failed_requests.push({ phase, url: r.url(), error: r.failure() && r.failure().errorText });
  });
  page.on('console', (m) => {
    if (m.type() === 'error') out.console_errors.push({ phase, text: m.text().slice(0, 300) });
  });
  page.on('pageerror', (e) => out.console_errors.push({ phase, text: `pageerror: ${e.message}`.slice(0, 300) }));

  const shot = async (name) => {
    const p = path.join(shots, `${name}.png`);
    await page.screenshot({ path: p, timeout: 15_000 });
    out.screenshots.push(p);
    log(`screenshot ${p}`);
  };
  const sawStarting = (ph) => titles.some((t) => t.phase === ph && t.title === STARTING_TITLE);
  const liveSockets = (ph) =>
    out.websockets.filter((w) => w.phase === ph && w.url.includes(instancePath) && w.received > 0 && !w.closed);

  // a. The token is traded for a cookie and disappears from the URL.
  log(`opening ${url.replace(/tkn=[^&]*/, 'tkn=…')}`);
  const firstStart = Date.now();
  const first = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: WORKBENCH_TIMEOUT_MS });
  const redirect = first && first.request().redirectedFrom();
  const redirectResponse = redirect && (await redirect.response());
  if (!redirectResponse || redirectResponse.status() !== 303) {
    throw new Error(`expected a 303 token exchange, got ${redirectResponse ? redirectResponse.status() : 'no redirect'}`);
  }
  if (page.url().includes('tkn=')) throw new Error(`token still in the URL: ${page.url()}`);
  const origin = need('VOD_E2E_ORIGIN');
  if (new URL(page.url()).origin !== origin) throw new Error(`expected the instance's origin ${origin}, at ${page.url()}`);
  const host = new URL(origin).hostname;
  const cookies = await context.cookies();
  if (!cookies.some((c) => c.name === '__Host-vod_tkn' && c.domain === host && c.path === '/' && c.httpOnly && c.secure)) {
    throw new Error(`no host-only HttpOnly Secure __Host-vod_tkn cookie for ${host}: ${JSON.stringify(cookies.map((c) => [c.name, c.domain, c.path]))}`);
  }

  // b. The starting page reloads itself into the workbench, which talks to the instance over a
  // WebSocket through the proxy.
  await waitForWorkbench(page, out, 'first');
  out.timings.first_workbench_s = (Date.now() - firstStart) / 1000;
  log(`workbench rendered in ${out.timings.first_workbench_s}s (starting page seen: ${sawStarting('first')})`);
  if (page.url().includes('tkn=')) throw new Error(`token in the workbench URL: ${page.url()}`);
  await poll('a WebSocket to the instance that receives frames', 60_000, () => liveSockets('first').length > 0);
  out.starting_page_seen = sawStarting('first');
  const workbenchUrl = page.url();
  out.workbench_url = workbenchUrl;
  // The explorer lists the (empty) workspace once the remote file system answers.
  await page.waitForSelector('.explorer-folders-view, .explorer-viewlet', { state: 'attached', timeout: 60_000 });
  await sleep(2_000);
  await shot('1-workbench');

  // c. A file written by a shell in VS Code's own terminal.
  await openTerminal(page);
  await shot('2-terminal');
  await waitForShell(page);
  let written = false;
  for (let attempt = 1; attempt <= 5 && !written; attempt++) {
    await focusTerminal(page);
    // Whatever a failed attempt left on the command line goes first.
    if (attempt > 1) await page.keyboard.press('Control+C');
    log(`typing into the terminal (attempt ${attempt})`);
    await page.keyboard.type(`echo ${FILE_TEXT} > ${FILE_NAME}`, { delay: 20 });
    await page.keyboard.press('Enter');
    written = await poll(`${target}`, 5_000, () => (fileText(target) || '').trim() === FILE_TEXT).catch(() => false);
    if (!written) await shot(`terminal-attempt-${attempt}`);
  }
  if (!written) throw new Error(`${target} never appeared with ${FILE_TEXT}: ${JSON.stringify(fileText(target))}`);
  out.timings.file_written_s = Number(secs());
  log(`${target} written through the terminal`);
  await shot('3-file-written');

  // d. Stop through the API. The page leaves first, so that what wakes the instance below is
  // this test's navigation (the workbench's own reconnects are refused after an API stop; that
  // is tests/idle_e2e.rs's business).
  await page.goto('about:blank');
  // A stop answers once the pod is gone, which the server waits up to 60 s for: a real
  // kubelet's teardown of a pod (its sandbox, its network, the pod object) took over 30 s on a
  // loaded machine.
  const stopped = await api('POST', `/instances/${id}/stop`, 90_000);
  if (stopped.status !== 'Stopped') throw new Error(`stop answered ${JSON.stringify(stopped)}`);
  out.timings.stopped_s = Number(secs());
  log('instance stopped through the API');

  // e. Coming back wakes it; the workspace file is still there.
  phase = 'wake';
  const wakeStart = Date.now();
  await page.goto(workbenchUrl, { waitUntil: 'domcontentloaded', timeout: WORKBENCH_TIMEOUT_MS });
  await waitForWorkbench(page, out, 'wake');
  out.timings.wake_workbench_s = (Date.now() - wakeStart) / 1000;
  out.wake_starting_page_seen = sawStarting('wake');
  log(`workbench rendered after wake in ${out.timings.wake_workbench_s}s (starting page seen: ${out.wake_starting_page_seen})`);
  await poll('a WebSocket to the woken instance that receives frames', 60_000, () => liveSockets('wake').length > 0);
  await findInExplorer(page, FILE_NAME);
  log(`explorer shows ${FILE_NAME}`);
  await sleep(1_000);
  await shot('4-after-wake');
}

// Waits for the workbench. Chromium aborts the loads in flight with ERR_NETWORK_CHANGED when
// this machine's interfaces change, which a pod's start does on a real node here (its veth
// joins a bridge on the same machine as the browser); the workbench does not retry its own
// scripts, so after such an abort the page is reloaded, as a person would, at most 3 times.
async function waitForWorkbench(page, out, phase) {
  const deadline = Date.now() + WORKBENCH_TIMEOUT_MS;
  const aborted = () =>
    out.failed_requests.filter((r) => r.phase === phase && r.error === 'net::ERR_NETWORK_CHANGED').length;
  let seen = aborted();
  out.reloads = out.reloads || [];
  for (;;) {
    if (await page.locator('.monaco-workbench').isVisible().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`no workbench within ${WORKBENCH_TIMEOUT_MS / 1000}s`);
    if (aborted() > seen && out.reloads.filter((r) => r.phase === phase).length < 3) {
      // Loads still in flight settle first, then the page starts over.
      await sleep(1_000);
      out.reloads.push({ phase, at_s: Number(secs()) });
      log(`loads aborted by a network change (${phase}); reloading`);
      await page.reload({ waitUntil: 'domcontentloaded', timeout: WORKBENCH_TIMEOUT_MS }).catch((e) => log(`reload: ${e.message}`));
      seen = aborted();
    }
    await sleep(250);
  }
}

async function findInExplorer(page, name) {
  const row = page.locator('.explorer-folders-view .monaco-list-row', { hasText: name }).first();
  try {
    await row.waitFor({ state: 'visible', timeout: 20_000 });
    return;
  } catch {
    log('explorer not showing the file yet; focusing the explorer');
  }
  await page.keyboard.press('Control+Shift+E');
  await row.waitFor({ state: 'visible', timeout: 30_000 });
}

run('vscode.js', BUDGET_MS, main, {
  ok: false,
  starting_page_seen: false,
  wake_starting_page_seen: false,
  workbench_url: '',
  timings: {},
  websockets: [],
  screenshots: [],
  bad_responses: [],
  failed_requests: [],
  console_errors: [],
});
