//! One instance attacking another in a real browser, on the embedded default (host routing on
//! `localhost`). Instance A's owner serves a page through code-server's port forwarding and
//! sends the link to someone who has instance B open; the page tries to read B, script a
//! window of B, open a WebSocket to B, and set cookies for B or for every host. With each
//! instance on its own origin, none of that reaches B. The browser side is
//! `tests/e2e/isolation.js`; without its tools this test fails rather than skips.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use vod_testkit::browser::{run_script, Deps};
use vod_testkit::*;

const BUDGET: Duration = Duration::from_secs(300);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(270);

/// The page A's owner serves: it waits for a click (popups need one), then tries every way a
/// page of one origin could act in another, and records what it got.
fn attack_page(attacker: &str, victim: &str) -> String {
    format!(
        r#"<!doctype html><title>attack</title><button id="go">go</button><pre id="out"></pre>
<script>
const A = {attacker:?}, B = {victim:?};
const bHost = location.host.replace(A, B);
const bUrl = `https://${{bHost}}/instances/${{B}}/`;
window.attack = {{ ready: true, done: false, results: null }};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function read(url, opts) {{
  try {{
    const r = await fetch(url, Object.assign({{ credentials: 'include' }}, opts));
    let body = '';
    try {{ body = await r.text(); }} catch (e) {{ body = ''; }}
    return {{ status: r.status, type: r.type, workbench: /workbench|vscode/i.test(body), length: body.length }};
  }} catch (e) {{
    return {{ error: e.name }};
  }}
}}
function socket(url) {{
  return new Promise((resolve) => {{
    let ws;
    try {{ ws = new WebSocket(url); }} catch (e) {{ return resolve({{ opened: false, error: e.name }}); }}
    const done = (opened, how) => {{ try {{ ws.close(); }} catch (e) {{}} resolve({{ opened, how }}); }};
    ws.onopen = () => done(true, 'open');
    ws.onerror = () => done(false, 'error');
    ws.onclose = () => done(false, 'close');
    setTimeout(() => done(false, 'timeout'), 15000);
  }});
}}
document.getElementById('go').onclick = async () => {{
  const w = window.open(bUrl, 'victim');
  const results = {{}};
  results.own = await read(`/instances/${{A}}/`);
  results.same_host_path = await read(`/instances/${{B}}/`);
  results.cross_origin = await read(bUrl);
  results.cross_origin_no_cors = await read(bUrl, {{ mode: 'no-cors' }});
  results.websocket_other_host = await socket(`wss://${{bHost}}/instances/${{B}}/?reconnectionToken=x&reconnection=false&skipWebSocketFrames=false`);
  results.websocket_same_host = await socket(`wss://${{location.host}}/instances/${{B}}/?reconnectionToken=x&reconnection=false&skipWebSocketFrames=false`);
  await sleep(3000);
  const win = {{ opened: !!w }};
  try {{ win.title = w.document.title; win.read = true; }} catch (e) {{ win.read = false; win.error = e.name; }}
  try {{ w.document.body.innerHTML = 'owned'; win.wrote = true; }} catch (e) {{ win.wrote = false; }}
  results.window = win;
  document.getElementById('out').textContent = JSON.stringify(results, null, 1);
  window.attack.results = results;
  window.attack.done = true;
}};
</script>"#
    )
}

/// A plain HTTP server on loopback, as A's owner would run in A's terminal, answering every
/// GET with the attack page and with cookies aimed at B, at every host, and at our own name.
fn attacker_server(dir: &Path, page: &str, victim: &str) -> (std::process::Child, u16) {
    std::fs::write(dir.join("x.html"), page).unwrap();
    let script = format!(
        r#"
import http.server, socketserver, sys
page = open(sys.argv[1], 'rb').read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header('Content-Type', 'text/html')
        self.send_header('Set-Cookie', 'vod_tkn=x; Path=/instances/{victim}/')
        self.send_header('Set-Cookie', '__Host-vod_tkn=x; Path=/; Secure')
        self.send_header('Set-Cookie', 'tossed=x; Domain=localhost; Path=/')
        self.send_header('Content-Length', str(len(page)))
        self.end_headers()
        self.wfile.write(page)
    def log_message(self, *a):
        pass
s = socketserver.TCPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .arg(dir.join("x.html"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line
        .trim()
        .parse()
        .expect("the attacker's server printed its port");
    (child, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_one_instance_reaches_nothing_of_another() {
    let deps = Deps::find();
    tokio::time::timeout(BUDGET, scenario(deps))
        .await
        .expect("the isolation scenario exceeded its overall budget");
}

async fn scenario(deps: Deps) {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("isolation-e2e-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let server = Server::start(
        &data,
        &[
            "--runtime",
            "code-server",
            "--code-server",
            deps.code_server.to_str().unwrap(),
            "--start-timeout",
            "120s",
        ],
    );
    assert!(
        server.host_routing,
        "the embedded default isolates instances"
    );
    let a = server.create(json!({ "user_id": "mallory" })).await;
    let b = server.create(json!({ "user_id": "victim" })).await;
    let (mut attacker, port) = attacker_server(dir.path(), &attack_page(&a.id, &b.id), &b.id);
    // The documented URLs, on the public host: each hands over to its instance's origin.
    let documented = |c: &Created, rest: &str| {
        format!("{}/instances/{}/{rest}?tkn={}", server.base, c.id, c.token)
    };
    let run = run_script(
        &deps,
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/isolation.js"
        )),
        &[
            ("VOD_E2E_VICTIM_URL", documented(&b, "")),
            ("VOD_E2E_VICTIM", b.id.clone()),
            (
                "VOD_E2E_ATTACK_URL",
                documented(&a, &format!("proxy/{port}/x.html")),
            ),
            ("VOD_E2E_ATTACKER", a.id.clone()),
            ("VOD_E2E_SCREENSHOTS", shots.display().to_string()),
        ],
        SCRIPT_TIMEOUT,
    )
    .await;
    stop_child(&mut attacker, Duration::from_secs(15));
    let log = |c: &Created| log_tail(&data.join(format!("instances/{}/instance.log", c.id)), 30);
    assert!(
        run.success && run.result.as_ref().is_some_and(|r| r["ok"] == true),
        "the browser script failed.\nits output: {}\nserver log:\n{}\nA's log:\n{}\nB's log:\n{}",
        run.stdout,
        log_tail(&data.with_extension("server.log"), 40),
        log(&a),
        log(&b),
    );
    let r = run.result.unwrap();
    for s in r["screenshots"].as_array().into_iter().flatten() {
        eprintln!("screenshot: {}", s.as_str().unwrap_or("?"));
    }
    eprintln!("attack results: {}", r["attack"]);

    assert_eq!(r["attacker_origin"], server.origin_of(&a.id).as_str());
    assert_eq!(r["victim_origin"], server.origin_of(&b.id).as_str());
    let at = &r["attack"];
    // The control: the page runs, and reads its own instance with its own cookie.
    assert_eq!(at["own"]["status"], 200, "{at}");
    // B's path on A's host is refused before any instance is asked.
    assert_eq!(at["same_host_path"]["status"], 400, "{at}");
    assert_eq!(at["same_host_path"]["workbench"], false, "{at}");
    // B's origin does not share its answers with A's.
    assert!(at["cross_origin"]["error"].is_string(), "{at}");
    assert_eq!(at["cross_origin_no_cors"]["type"], "opaque", "{at}");
    assert_eq!(at["cross_origin_no_cors"]["length"], 0, "{at}");
    // A window of B opens but cannot be read or scripted.
    assert_eq!(
        at["window"],
        json!({ "opened": true, "read": false, "error": "SecurityError", "wrote": false }),
        "{at}"
    );
    // No WebSocket to B: not from another origin, not on A's host.
    for ws in ["websocket_other_host", "websocket_same_host"] {
        assert_eq!(at[ws]["opened"], false, "{ws}: {at}");
    }
    // The instance's cookies were dropped; ours are host-only on each instance's origin.
    let cookies = r["cookies"].as_array().unwrap();
    assert!(
        cookies.iter().all(|c| c["attacker_value"] == false),
        "a cookie set by A's page survived: {cookies:?}"
    );
    for c in [&a, &b] {
        let host = format!("{}.localhost", c.id);
        let ours: Vec<&Value> = cookies
            .iter()
            .filter(|k| k["domain"] == host.as_str())
            .collect();
        assert!(
            ours.iter().any(|k| k["name"] == "__Host-vod_tkn"
                && k["path"] == "/"
                && k["secure"] == true
                && k["httpOnly"] == true),
            "no host-only cookie for {host}: {cookies:?}"
        );
    }
    assert!(
        cookies
            .iter()
            .all(|k| k["domain"].as_str().is_some_and(|d| !d.starts_with('.'))),
        "a cookie for more than one host: {cookies:?}"
    );
    assert_eq!(r["victim_still_works"], true);
}
