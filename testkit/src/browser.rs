//! What the end-to-end tests with a real VS Code need: code-server, Chromium and
//! playwright-core (from `scripts/install-test-deps.sh`; without them the tests fail rather
//! than skip), a runner for the browser scripts under `tests/e2e/`, and ways to look at what
//! code-server left behind.

use crate::bins::cache_dir;
use crate::client::Created;
use crate::process::{pid_alive, stop_child};
use crate::server::Server;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run scripts/install-test-deps.sh and export the variables it prints";

pub struct Deps {
    pub code_server: PathBuf,
    pub chromium: PathBuf,
    pub node_path: PathBuf,
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
    pub fn find() -> Deps {
        let cache = cache_dir();
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
pub fn instance_processes(id: &str) -> Vec<i32> {
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

pub struct ScriptRun {
    pub success: bool,
    /// The last JSON line the script printed.
    pub result: Option<Value>,
    pub stdout: String,
}

/// Runs `tests/e2e/vscode.js` on instance `c` of `server`: opened by its documented URL (with
/// `?tkn=`, on the public host, which hands the browser over to the instance's origin),
/// `workspace` being where its files land on this machine, screenshots going to `shots`.
pub async fn run_vscode_script(
    deps: &Deps,
    server: &Server,
    c: &Created,
    workspace: &Path,
    shots: &Path,
    timeout: Duration,
) -> ScriptRun {
    // The test kit lives one level below the project.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/vscode.js");
    run_script(
        deps,
        &script,
        &[
            (
                "VOD_E2E_URL",
                format!("{}/instances/{}/?tkn={}", server.base, c.id, c.token),
            ),
            ("VOD_E2E_ORIGIN", server.origin_of(&c.id)),
            ("VOD_E2E_API", server.base.clone()),
            ("VOD_E2E_ADMIN_TOKEN", server.token.clone()),
            ("VOD_E2E_INSTANCE", c.id.clone()),
            ("VOD_E2E_WORKSPACE", workspace.display().to_string()),
            ("VOD_E2E_SCREENSHOTS", shots.display().to_string()),
            (
                "NODE_EXTRA_CA_CERTS",
                server.data_dir.join("certs/ca.crt").display().to_string(),
            ),
        ],
        timeout,
    )
    .await
}

/// Runs a browser script (the end-to-end tests' are under the root `tests/e2e/`), forwarding
/// its progress (stderr) as it happens; it is stopped after `timeout`.
pub async fn run_script(
    deps: &Deps,
    script: &Path,
    env: &[(&str, String)],
    timeout: Duration,
) -> ScriptRun {
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .env("NODE_PATH", &deps.node_path)
        .env("VOD_E2E_CHROMIUM", &deps.chromium)
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
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            // SIGTERM first: playwright closes the browser it launched on the way out.
            stop_child(&mut child, Duration::from_secs(5));
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

/// Waits until no process of the instance is left.
pub async fn wait_instance_gone(id: &str, within: Duration) {
    let end = Instant::now() + within;
    loop {
        let left = instance_processes(id);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "code-server processes of {id} are still running: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
