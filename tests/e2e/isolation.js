'use strict';
// One instance's page attacks another's in a real browser. The victim has instance B's
// workbench open (so the browser holds B's cookie and B is running); then opens a link from
// the owner of instance A: a page A serves through code-server's port forwarding. That page
// tries what same-origin pages could do to each other: read B with fetch, script a window
// of B, open a WebSocket to B, and set cookies for B or for every host. Run by
// tests/isolation_e2e.rs, which passes everything through the environment:
//   VOD_E2E_VICTIM_URL   B's documented URL with ?tkn= (on the public host)
//   VOD_E2E_VICTIM       B's instance id
//   VOD_E2E_ATTACK_URL   A's documented URL of the attack page, with A's ?tkn=
//   VOD_E2E_ATTACKER     A's instance id
//   VOD_E2E_CHROMIUM     chromium executable
//   VOD_E2E_SCREENSHOTS  directory for screenshots
// Progress goes to stderr; stdout carries exactly one JSON line, the result.

const fs = require('fs');
const path = require('path');
const { need, log, poll, launch, run } = require('./common');

const BUDGET_MS = 250_000;
const WORKBENCH_TIMEOUT_MS = 120_000;

async function main(out) {
  const victimUrl = need('VOD_E2E_VICTIM_URL');
  const victim = need('VOD_E2E_VICTIM');
  const attackUrl = need('VOD_E2E_ATTACK_URL');
  const attacker = need('VOD_E2E_ATTACKER');
  const shots = need('VOD_E2E_SCREENSHOTS');
  fs.mkdirSync(shots, { recursive: true });

  out.browser = await launch();
  const context = await out.browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const shot = async (page, name) => {
    const p = path.join(shots, `${name}.png`);
    await page.screenshot({ path: p, timeout: 15_000 });
    out.screenshots.push(p);
  };

  // The victim works in B.
  const b = await context.newPage();
  out.page = b;
  const bSockets = [];
  b.on('websocket', (ws) => {
    const rec = { url: ws.url().split('?')[0], received: 0 };
    bSockets.push(rec);
    ws.on('framereceived', () => rec.received++);
  });
  log('victim opens B');
  await b.goto(victimUrl, { waitUntil: 'domcontentloaded', timeout: WORKBENCH_TIMEOUT_MS });
  await b.waitForSelector('.monaco-workbench', { state: 'visible', timeout: WORKBENCH_TIMEOUT_MS });
  await poll("B's workbench WebSocket", 60_000, () => bSockets.some((w) => w.received > 0));
  const bOrigin = new URL(b.url()).origin;
  out.victim_origin = bOrigin;
  log(`B's workbench is up at ${bOrigin}`);

  // The victim follows A's link.
  const a = await context.newPage();
  out.page = a;
  log("victim opens A's link");
  await a.goto(attackUrl, { waitUntil: 'domcontentloaded', timeout: WORKBENCH_TIMEOUT_MS });
  // A stopped instance shows the starting page first, which moves on to the page by itself.
  await a.waitForFunction(() => window.attack && window.attack.ready, null, { timeout: WORKBENCH_TIMEOUT_MS });
  out.attacker_origin = new URL(a.url()).origin;
  if (a.url().includes('tkn=')) throw new Error(`A's token stayed in the URL: ${a.url()}`);
  log(`attack page loaded at ${out.attacker_origin}`);

  // A click gives the page the user activation that popups need.
  await a.click('#go');
  const results = await a.waitForFunction(() => window.attack.done && window.attack.results, null, { timeout: 60_000 });
  out.attack = await results.jsonValue();
  log(`attack results: ${JSON.stringify(out.attack)}`);
  await shot(a, 'attack-page');

  // What the browser keeps: no cookie of ours with the attacker's value, none for every host.
  out.cookies = (await context.cookies()).map((c) => ({
    name: c.name,
    domain: c.domain,
    path: c.path,
    secure: c.secure,
    httpOnly: c.httpOnly,
    attacker_value: c.value === 'x',
  }));

  // B still works for the victim: a reload opens its workbench again.
  await b.bringToFront();
  out.page = b;
  bSockets.length = 0;
  await b.reload({ waitUntil: 'domcontentloaded', timeout: WORKBENCH_TIMEOUT_MS });
  await b.waitForSelector('.monaco-workbench', { state: 'visible', timeout: WORKBENCH_TIMEOUT_MS });
  await poll("B's WebSocket after the attack", 60_000, () => bSockets.some((w) => w.received > 0));
  out.victim_still_works = true;
  await shot(b, 'victim-after-attack');
  out.ids = { attacker, victim };
}

run('isolation.js', BUDGET_MS, main, {
  ok: false,
  screenshots: [],
});
