//! End to end with a real VS Code: code-server run by the local backend, opened in headless
//! Chromium through the proxy (token exchange, starting page, WebSockets), a file written from
//! VS Code's terminal, a stop through the API, and a wake by navigation that finds the file
//! again. The browser side is `tests/e2e/vscode.js`; its tools come from
//! `scripts/install-test-deps.sh`, and without them this test fails rather than skips.

use serde_json::json;
use std::path::Path;
use std::time::Duration;
use vod_testkit::browser::{instance_processes, run_vscode_script, wait_instance_gone, Deps};
use vod_testkit::*;

const BUDGET: Duration = Duration::from_secs(300);
/// Longer than the script's own budget, so the script normally reports its failure itself.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(270);

#[tokio::test(flavor = "multi_thread")]
async fn code_server_through_the_proxy_survives_stop_and_wake() {
    let deps = Deps::find();
    tokio::time::timeout(BUDGET, scenario(deps))
        .await
        .expect("the end-to-end scenario exceeded its overall budget");
}

async fn scenario(deps: Deps) {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vscode-e2e-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let code_server = deps.code_server.to_str().unwrap();
    let mut server = Server::start(
        &data,
        &[
            "--runtime",
            "code-server",
            "--code-server",
            code_server,
            "--start-timeout",
            "120s",
            "--sandbox",
            "bwrap",
        ],
    );
    assert!(
        server
            .stdout
            .iter()
            .any(|l| l.contains("Sandbox:    bubblewrap")),
        "{:?}",
        server.stdout
    );
    let c = server.create(json!({ "user_id": "e2e" })).await;
    assert_eq!(server.state(&c.id).await, "Stopped");
    assert!(c.url.contains("?tkn="), "{}", c.url);
    let workspace = data.join("workspaces/e2e");
    eprintln!("screenshots go to {}", shots.display());

    let run = run_vscode_script(&deps, &server, &c, &workspace, &shots, SCRIPT_TIMEOUT).await;
    let instance_log = data.join(format!("instances/{}/instance.log", c.id));
    assert!(
        run.success && run.result.as_ref().is_some_and(|r| r["ok"] == true),
        "the browser script failed.\nits output: {}\nserver log:\n{}\ninstance log:\n{}",
        run.stdout,
        log_tail(&data.with_extension("server.log"), 40),
        log_tail(&instance_log, 40),
    );
    let result = run.result.unwrap();
    // code-server opens the workspace where its sandbox puts it, not at a server path.
    let url = result["workbench_url"].as_str().unwrap_or_default();
    assert!(
        url.contains("folder=/workspaces") || url.contains("folder=%2Fworkspaces"),
        "{url}"
    );
    eprintln!(
        "starting page seen: {} (on wake: {}); timings: {}",
        result["starting_page_seen"], result["wake_starting_page_seen"], result["timings"]
    );
    for s in result["screenshots"].as_array().into_iter().flatten() {
        eprintln!("screenshot: {}", s.as_str().unwrap_or("?"));
    }
    for key in ["bad_responses", "failed_requests", "console_errors"] {
        let items = result[key].as_array().map_or(0, Vec::len);
        if items > 0 {
            eprintln!("{key} ({items}): {}", result[key]);
        }
    }
    // Code-server answers 404 for assets it does not ship (vsda); anything the proxy itself
    // refuses or fails (401, 403, 429, 5xx) would be a broken page.
    let refused: Vec<_> = result["bad_responses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["status"].as_u64() != Some(404))
        .collect();
    assert!(
        refused.is_empty(),
        "requests refused or failed through the proxy: {refused:?}"
    );
    let sockets = result["websockets"]
        .as_array()
        .expect("websockets recorded");
    for phase in ["first", "wake"] {
        assert!(
            sockets.iter().any(|w| w["phase"] == phase
                && w["url"]
                    .as_str()
                    .is_some_and(|u| u.contains(&format!("/instances/{}/", c.id)))
                && w["received"].as_u64() > Some(0)),
            "no WebSocket through the proxy received frames ({phase}): {sockets:?}"
        );
    }

    let written = std::fs::read_to_string(workspace.join("persisted.txt"))
        .expect("persisted.txt is in the workspace");
    assert_eq!(written.trim(), "e2e-persist");
    assert_eq!(server.state(&c.id).await, "Running");
    assert!(
        !instance_processes(&c.id).is_empty(),
        "no code-server process found by its marker"
    );

    let status = server.terminate();
    assert!(status.success(), "server exit: {status}");
    wait_instance_gone(&c.id, Duration::from_secs(5)).await;
}
