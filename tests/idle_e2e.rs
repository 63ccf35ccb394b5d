//! The idle policy end to end with a real VS Code: code-server run by the local backend,
//! opened in headless Chromium through the proxy, with short timeouts (idle 20 s, notice 10 s,
//! checked every second). A tab where someone types every few seconds is never stopped; an
//! untouched tab shows the notice, is stopped within the timeout plus one check, then says so;
//! VS Code's reconnect attempts leave it stopped; the Resume button starts it and VS Code
//! connects by itself. The browser side is `tests/e2e/idle.js`.

use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use vod_testkit::browser::{instance_processes, run_script, wait_instance_gone, Deps};
use vod_testkit::*;

const IDLE_TIMEOUT_S: u64 = 20;
const NOTICE_S: u64 = 10;
const REAP_INTERVAL_S: u64 = 1;
/// Several idle periods of typing.
const TYPING_S: u64 = 65;
/// Several of VS Code's reconnect cycles.
const STOPPED_S: u64 = 60;
/// How late the test may see a stop after the reaper made it: API polling and the process exit.
const SEEN_LATE_MS: u64 = 1500;
const BUDGET: Duration = Duration::from_secs(330);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread")]
async fn code_server_is_stopped_when_untouched_and_kept_while_someone_types() {
    let deps = Deps::find();
    tokio::time::timeout(BUDGET, scenario(deps))
        .await
        .expect("the idle scenario exceeded its overall budget");
}

fn ms(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a time: {v}"))
}

async fn scenario(deps: Deps) {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("idle-e2e-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let (idle, notice, interval) = (
        format!("{IDLE_TIMEOUT_S}s"),
        format!("{NOTICE_S}s"),
        format!("{REAP_INTERVAL_S}s"),
    );
    let mut server = Server::start(
        &data,
        &[
            "--runtime",
            "code-server",
            "--code-server",
            deps.code_server.to_str().unwrap(),
            "--start-timeout",
            "120s",
            "--idle-timeout",
            &idle,
            "--idle-notice",
            &notice,
            "--reap-interval",
            &interval,
        ],
    );
    let c = server.create(json!({ "user_id": "idle" })).await;
    eprintln!("screenshots go to {}", shots.display());

    let run = run_script(
        &deps,
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/idle.js")),
        &[
            ("VOD_E2E_URL", c.url.clone()),
            ("VOD_E2E_API", server.base.clone()),
            ("VOD_E2E_ADMIN_TOKEN", server.token.clone()),
            ("VOD_E2E_INSTANCE", c.id.clone()),
            ("VOD_E2E_SCREENSHOTS", shots.display().to_string()),
            ("VOD_E2E_IDLE_TIMEOUT_S", IDLE_TIMEOUT_S.to_string()),
            ("VOD_E2E_TYPING_S", TYPING_S.to_string()),
            ("VOD_E2E_STOPPED_S", STOPPED_S.to_string()),
            (
                "NODE_EXTRA_CA_CERTS",
                data.join("certs/ca.crt").display().to_string(),
            ),
        ],
        SCRIPT_TIMEOUT,
    )
    .await;
    let server_log = data.with_extension("server.log");
    let instance_log = data.join(format!("instances/{}/instance.log", c.id));
    assert!(
        run.success && run.result.as_ref().is_some_and(|r| r["ok"] == true),
        "the browser script failed.\nits output: {}\nserver log:\n{}\ninstance log:\n{}",
        run.stdout,
        log_tail(&server_log, 40),
        log_tail(&instance_log, 20),
    );
    let r = run.result.unwrap();
    for s in r["screenshots"].as_array().into_iter().flatten() {
        eprintln!("screenshot: {}", s.as_str().unwrap_or("?"));
    }
    assert_eq!(
        r["script_loaded"], true,
        "the activity script ran in VS Code"
    );
    let shown = r["shown"].as_array().unwrap();
    let in_phase = |phase: &str| {
        shown
            .iter()
            .filter(move |s| s["phase"] == phase)
            .collect::<Vec<_>>()
    };

    // Typing for several idle periods: never stopped, never warned.
    let typing = &r["typing"];
    eprintln!(
        "typing: {} keys over {} ms, {} checks, all running",
        typing["keystrokes"],
        typing["ms"],
        typing["checks"].as_array().map_or(0, Vec::len)
    );
    assert!(ms(&typing["ms"]) >= 3 * IDLE_TIMEOUT_S * 1000, "{typing}");
    assert!(typing["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["status"] == "Running"));
    assert!(
        in_phase("typing").iter().all(|s| s["notice"].is_null()),
        "no notice while someone types: {shown:?}"
    );

    // Untouched: the notice, the stop within the timeout plus one check, the stopped message.
    let last_input = ms(&r["last_input_at"]);
    let stopped_at = ms(&r["stopped_at"]);
    let after = stopped_at - last_input;
    eprintln!(
        "untouched: stopped {after} ms after the last key (idle timeout {IDLE_TIMEOUT_S} s, checked every {REAP_INTERVAL_S} s)"
    );
    assert!(
        after >= IDLE_TIMEOUT_S * 1000 - 500,
        "stopped too early: {after} ms"
    );
    assert!(
        after <= (IDLE_TIMEOUT_S + REAP_INTERVAL_S) * 1000 + SEEN_LATE_MS,
        "stopped too late: {after} ms"
    );
    assert_eq!(r["stopped_instance"]["stop_reason"], "idle");
    let untouched = in_phase("untouched");
    let warned = untouched
        .iter()
        .find(|s| s["notice"].is_string())
        .unwrap_or_else(|| panic!("no notice before the stop: {shown:?}"));
    let text = warned["notice"].as_str().unwrap();
    assert!(
        text.contains("stops in") && text.contains("move the mouse or press a key to keep working"),
        "{text}"
    );
    let warned_at = ms(&warned["at"]);
    eprintln!(
        "notice shown {} ms after the last key, {} ms before the stop: {text:?}",
        warned_at - last_input,
        stopped_at - warned_at
    );
    assert!(
        stopped_at - warned_at >= NOTICE_S * 1000 / 2,
        "the notice came late: {} ms before the stop",
        stopped_at - warned_at
    );
    let told = untouched
        .iter()
        .find(|s| s["stopped"].is_string())
        .expect("the stopped message");
    let text = told["stopped"].as_str().unwrap();
    eprintln!(
        "stopped message {} ms after the stop: {text:?}",
        ms(&told["at"]) as i64 - stopped_at as i64
    );
    assert!(
        text.contains(&format!(
            "stopped after {IDLE_TIMEOUT_S} seconds without activity"
        )) && text.contains("Resume"),
        "{text}"
    );

    // Stopped: VS Code kept trying to reconnect, and nothing started the instance.
    let reconnects: Vec<&Value> = r["websockets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["phase"] != "resume" && ms(&w["at"]) > stopped_at)
        .collect();
    eprintln!(
        "stopped for {STOPPED_S} s: {} WebSocket attempts by VS Code, e.g. {}",
        reconnects.len(),
        reconnects
            .last()
            .map_or(Value::Null, |w| w["error"].clone())
    );
    assert!(
        reconnects.len() >= 2,
        "VS Code did not try to reconnect: {:?}",
        r["websockets"]
    );
    let checks = r["stopped_checks"].as_array().unwrap();
    assert!(checks.len() as u64 >= STOPPED_S - 5, "{checks:?}");
    assert!(checks.iter().all(|c| c["status"] == "Stopped"));
    let log = std::fs::read_to_string(&server_log).unwrap();
    let starts = log
        .lines()
        .filter(|l| l.contains(&format!("starting instance={}", c.id)))
        .count();
    assert_eq!(
        starts,
        2,
        "one start, then one resume:\n{}",
        log_tail(&server_log, 60)
    );

    // Resume: a navigation starts it, VS Code connects by itself.
    assert_eq!(r["resumed_instance"]["status"], "Running");
    eprintln!("resumed in {} ms", r["resumed_ms"]);
    assert!(
        r["websockets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["phase"] == "resume" && w["received"].as_u64() > Some(0)),
        "no live WebSocket after the resume"
    );
    let csp: Vec<&Value> = r["console_errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let t = e["text"].as_str().unwrap_or("");
            t.contains("Content Security Policy") || t.contains("_vod")
        })
        .collect();
    assert!(csp.is_empty(), "the activity script was blocked: {csp:?}");
    assert!(!instance_processes(&c.id).is_empty());

    let status = server.terminate();
    assert!(status.success(), "server exit: {status}");
    wait_instance_gone(&c.id, Duration::from_secs(5)).await;
}
