'use strict';
// The idle policy with a real VS Code (code-server) in headless Chromium, through the proxy.
// Run by tests/idle_e2e.rs against a server with short timeouts. One tab, four phases:
//   typing    a simulated user types into VS Code's terminal every few seconds for several
//             idle periods: the instance must keep running and no notice appear;
//   untouched nobody touches the tab: the notice appears, the instance stops, the tab says so;
//   stopped   the tab stays open while VS Code tries to reconnect: nothing starts the instance;
//   resume    the Resume button: the instance starts and VS Code connects by itself.
// Environment: VOD_E2E_URL, VOD_E2E_API, VOD_E2E_ADMIN_TOKEN, VOD_E2E_INSTANCE,
// VOD_E2E_CHROMIUM, VOD_E2E_SCREENSHOTS, VOD_E2E_IDLE_TIMEOUT_S, VOD_E2E_TYPING_S,
// VOD_E2E_STOPPED_S. Progress goes to stderr; stdout carries exactly one JSON line, the result.

const fs = require('fs');
const path = require('path');
const { need, log, sleep, poll, launch, api, openTerminal, focusTerminal, waitForShell, run } = require('./common');

const BUDGET_MS = 290_000;
const WORKBENCH_TIMEOUT_MS = 120_000;
const TYPE_EVERY_MS = 4_000;

async function main(out) {
  const url = need('VOD_E2E_URL');
  const id = need('VOD_E2E_INSTANCE');
  const shots = need('VOD_E2E_SCREENSHOTS');
  const idleTimeoutMs = Number(need('VOD_E2E_IDLE_TIMEOUT_S')) * 1000;
  const typingMs = Number(need('VOD_E2E_TYPING_S')) * 1000;
  const stoppedMs = Number(need('VOD_E2E_STOPPED_S')) * 1000;
  fs.mkdirSync(shots, { recursive: true });
  const instancePath = `/instances/${id}/`;
  const instance = () => api('GET', `/instances/${id}`);

  out.browser = await launch();
  const context = await out.browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  out.page = page;
  page.setDefaultTimeout(30_000);

  let phase = 'load';
  out.phase_started = {};
  const enter = (p) => {
    phase = p;
    out.phase_started[p] = Date.now();
    log(`phase ${p}`);
  };
  page.on('websocket', (ws) => {
    const rec = { phase, at: Date.now(), url: ws.url().split('?')[0], received: 0, closed: false };
    out.websockets.push(rec);
    ws.on('framereceived', () => rec.received++);
    ws.on('close', () => (rec.closed = true));
    ws.on('socketerror', (e) => (rec.error = String(e)));
  });
  page.on('response', (r) => {
    if (r.status() >= 400) {
      out.bad_responses.push({ phase, status: r.status(), method: r.request().method(), url: r.url().split('?')[0] });
    }
  });
  page.on('console', (m) => {
    if (m.type() === 'error') out.console_errors.push({ phase, text: m.text().slice(0, 300) });
  });
  page.on('framenavigated', (f) => {
    if (f === page.mainFrame()) out.navigations.push({ phase, at: Date.now(), url: f.url().split('?')[0] });
  });
  const shot = async (name) => {
    const p = path.join(shots, `${name}.png`);
    await page.screenshot({ path: p, timeout: 15_000 }).catch((e) => log(`no screenshot ${name}: ${e.message}`));
    out.screenshots.push(p);
  };
  const liveSockets = (ph) =>
    out.websockets.filter((w) => w.phase === ph && w.url.includes(instancePath) && w.received > 0 && !w.closed);

  // What the activity script shows, sampled from outside the page (reading the DOM is not
  // input), as a list of changes.
  let lastSeen = '';
  const sample = async () => {
    const seen = await page
      .evaluate(() => {
        const shown = (id) => {
          const el = document.getElementById(id);
          return el && !el.hidden && el.isConnected ? el.textContent : null;
        };
        return { notice: shown('vod-idle-notice'), stopped: shown('vod-idle-stopped'), script: !!window.__vodActivity };
      })
      .catch(() => null);
    if (!seen) return;
    const key = JSON.stringify([seen.notice && 'notice', seen.stopped]);
    if (key !== lastSeen) {
      lastSeen = key;
      out.shown.push({ phase, at: Date.now(), notice: seen.notice, stopped: seen.stopped });
      log(`page shows: ${seen.notice || seen.stopped || 'nothing of ours'}`);
    }
    out.script_loaded = out.script_loaded || seen.script;
  };
  const sampler = setInterval(sample, 250);

  try {
    // Load: token exchange, starting page, workbench, a live WebSocket.
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: WORKBENCH_TIMEOUT_MS });
    await page.waitForSelector('.monaco-workbench', { state: 'visible', timeout: WORKBENCH_TIMEOUT_MS });
    await poll('a WebSocket to the instance that receives frames', 60_000, () => liveSockets('load').length > 0);
    await poll('the activity script in the workbench page', 10_000, () => page.evaluate(() => !!window.__vodActivity));
    out.script_loaded = true;
    await openTerminal(page);
    await waitForShell(page);
    // On a slow machine the set-up above can leave the tab untouched for longer than the
    // notice's lead, so the notice may be up: the typing phase starts once a click in the
    // terminal has taken it down, as it does for a user coming back.
    await page.locator('.terminal-wrapper .xterm').first().click({ timeout: 10_000 });
    await poll('the notice gone after a click', 10_000, () =>
      page.evaluate(() => {
        const el = document.getElementById('vod-idle-notice');
        return !el || el.hidden || !el.isConnected;
      }),
    );

    // Typing: keys into the terminal every few seconds, for several idle periods.
    enter('typing');
    out.typing = { keystrokes: 0, checks: [] };
    let n = 0;
    while (Date.now() - out.phase_started.typing < typingMs) {
      await focusTerminal(page);
      const text = `echo tick-${++n}`;
      await page.keyboard.type(text, { delay: 30 });
      await page.keyboard.press('Enter');
      out.typing.keystrokes += text.length + 1;
      out.last_input_at = Date.now();
      const v = await instance();
      out.typing.checks.push({ at: Date.now(), status: v.status, stop_reason: v.stop_reason });
      if (v.status !== 'Running') throw new Error(`stopped while someone was typing: ${JSON.stringify(v)}`);
      await sleep(TYPE_EVERY_MS);
    }
    out.typing.ms = Date.now() - out.phase_started.typing;
    log(`typed ${out.typing.keystrokes} keys over ${out.typing.ms / 1000}s; still running`);
    await shot('1-after-typing');

    // Untouched: wait for the stop, watching the page.
    enter('untouched');
    let noticeShot = false;
    await poll('the idle stop', idleTimeoutMs + 30_000, async () => {
      if (!noticeShot && out.shown.some((s) => s.phase === 'untouched' && s.notice)) {
        noticeShot = true;
        await shot('2-notice');
      }
      const v = await instance();
      if (v.status === 'Stopped') {
        out.stopped_at = Date.now();
        out.stopped_instance = v;
        return true;
      }
      return false;
    }, 200);
    log(`stopped ${(out.stopped_at - out.last_input_at) / 1000}s after the last key`);
    await poll('the stopped message in the page', 15_000, () =>
      out.shown.some((s) => s.phase === 'untouched' && s.stopped),
    );
    await shot('3-stopped');

    // Stopped: the tab stays open through several of VS Code's reconnect cycles.
    enter('stopped');
    out.stopped_checks = [];
    while (Date.now() - out.phase_started.stopped < stoppedMs) {
      const v = await instance();
      out.stopped_checks.push({ at: Date.now(), status: v.status });
      if (v.status !== 'Stopped') throw new Error(`something started the instance: ${JSON.stringify(v)}`);
      await sleep(1_000);
    }
    await shot('4-still-stopped');

    // Resume: the button starts it; VS Code then connects by itself.
    enter('resume');
    await page.click('#vod-resume', { timeout: 10_000 });
    await page.waitForSelector('.monaco-workbench', { state: 'visible', timeout: WORKBENCH_TIMEOUT_MS });
    await poll('a WebSocket to the resumed instance that receives frames', 60_000, () => liveSockets('resume').length > 0);
    out.resumed_ms = Date.now() - out.phase_started.resume;
    out.resumed_instance = await instance();
    log(`resumed in ${out.resumed_ms / 1000}s: ${out.resumed_instance.status}`);
    await sleep(1_000);
    await shot('5-resumed');
  } finally {
    clearInterval(sampler);
  }
}

run('idle.js', BUDGET_MS, main, {
  ok: false,
  websockets: [],
  navigations: [],
  shown: [],
  screenshots: [],
  bad_responses: [],
  console_errors: [],
});
