//! End to end with a real VS Code: code-server run by the local backend, opened in headless
//! Chromium through the proxy (token exchange, starting page, WebSockets), a file written from
//! VS Code's terminal, a stop through the API, and a wake by navigation that finds the file
//! again. The browser side is `tests/e2e/vscode.js`; its tools come from
//! `scripts/install-test-deps.sh`, and without them this test fails rather than skips.

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const BUDGET: Duration = Duration::from_secs(300);
/// Longer than the script's own budget, so the script normally reports its failure itself.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(270);
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/vscode.js");
const INSTALL_HINT: &str = "run scripts/install-test-deps.sh and export the variables it prints";

struct Deps {
    code_server: PathBuf,
    chromium: PathBuf,
    node_path: PathBuf,
}

fn dep(var: &str, default: PathBuf, what: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or(default, PathBuf::from);
    assert!(
        path.exists(),
        "{what} not found at {} (set {var} to override); {INSTALL_HINT}",
        path.display()
    );
    path
}

impl Deps {
    fn find() -> Deps {
        let cache = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/vscode-on-demand");
        let deps = Deps {
            code_server: dep(
                "VOD_TEST_CODE_SERVER",
                cache.join("code-server/node_modules/.bin/code-server"),
                "code-server",
            ),
            chromium: dep(
                "VOD_TEST_CHROMIUM",
                PathBuf::from("/usr/bin/chromium"),
                "chromium",
            ),
            node_path: dep(
                "VOD_TEST_NODE_PATH",
                cache.join("node/node_modules"),
                "node_modules",
            ),
        };
        assert!(
            deps.node_path.join("playwright-core").is_dir(),
            "playwright-core is not in {}; {INSTALL_HINT}",
            deps.node_path.display()
        );
        let node = Command::new("node").arg("--version").output();
        assert!(
            node.is_ok_and(|o| o.status.success()),
            "node is not on PATH; {INSTALL_HINT}"
        );
        deps
    }
}

/// Processes whose environment carries the instance marker the local backend sets.
fn instance_processes(id: &str) -> Vec<i32> {
    let marker = format!("VOD_INSTANCE_ID={id}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
        })
        .filter(|pid| pid_alive(*pid))
        .collect()
}

/// The last lines of a log, for failure messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct ScriptRun {
    success: bool,
    result: Option<Value>,
    stdout: String,
}

/// Runs the browser script, forwarding its progress (stderr) as it happens.
async fn run_script(deps: &Deps, env: &[(&str, String)]) -> ScriptRun {
    let mut cmd = Command::new("node");
    cmd.arg(SCRIPT)
        .env("NODE_PATH", &deps.node_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run node");
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    let mut stdout_pipe = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout_pipe.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            // SIGTERM first: playwright closes the browser it launched on the way out.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stdout = stdout.join().unwrap();
    let result = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok());
    ScriptRun {
        success: status.is_some_and(|s| s.success()),
        result,
        stdout,
    }
}

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
        ],
    );
    let c = server.create(json!({ "user_id": "e2e" })).await;
    assert_eq!(server.state(&c.id).await, "Stopped");
    assert!(c.url.contains("?tkn="), "{}", c.url);
    let workspace = data.join("workspaces/e2e");
    eprintln!("screenshots go to {}", shots.display());

    let run = run_script(
        &deps,
        &[
            ("VOD_E2E_URL", c.url.clone()),
            ("VOD_E2E_API", server.base.clone()),
            ("VOD_E2E_ADMIN_TOKEN", server.token.clone()),
            ("VOD_E2E_INSTANCE", c.id.clone()),
            ("VOD_E2E_WORKSPACE", workspace.display().to_string()),
            ("VOD_E2E_CHROMIUM", deps.chromium.display().to_string()),
            ("VOD_E2E_SCREENSHOTS", shots.display().to_string()),
            (
                "NODE_EXTRA_CA_CERTS",
                data.join("certs/ca.crt").display().to_string(),
            ),
        ],
    )
    .await;
    let instance_log = data.join(format!("instances/{}/instance.log", c.id));
    assert!(
        run.success && run.result.as_ref().is_some_and(|r| r["ok"] == true),
        "the browser script failed.\nits output: {}\nserver log:\n{}\ninstance log:\n{}",
        run.stdout,
        tail(&data.with_extension("server.log"), 40),
        tail(&instance_log, 40),
    );
    let result = run.result.unwrap();
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
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let left = instance_processes(&c.id);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "code-server processes outlived the server: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
