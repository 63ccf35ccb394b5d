//! Local instances in their bubblewrap sandbox, tested from inside as an instance's code would
//! act: `vod-upstream --exec` runs shell commands in the instance and tries Unix sockets, and
//! each secret is looked for where it lies on the host. The runtime's directory also holds the
//! data and certificate directories here, so they are inside a bound directory and must be
//! hidden, not merely left out. Needs a working `bwrap` (`scripts/install-test-deps.sh`).

use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vod_testkit::*;

struct Sandboxed {
    _dir: tempfile::TempDir,
    /// The runtime's directory: the program (a link to `vod-upstream`), a file any instance
    /// may read, and the server's data and certificate directories.
    app: PathBuf,
    data: PathBuf,
    certs: PathBuf,
    server: Server,
}

impl Sandboxed {
    fn new() -> Self {
        let dir = tempdir();
        let app = dir.path().join("app");
        let data = app.join("data");
        let certs = app.join("certs");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(upstream(), app.join("vod-upstream")).unwrap();
        std::fs::write(app.join("visible.txt"), "runtime file").unwrap();
        let cmd = format!(
            "{} --socket {{socket}} --workspace {{workspace}} --exec",
            app.join("vod-upstream").display()
        );
        let server = Server::start_with_env(
            &data,
            &[
                "--runtime",
                "command",
                "--command",
                &cmd,
                "--cert-dir",
                certs.to_str().unwrap(),
                "--sandbox",
                "bwrap",
            ],
            &[("VOD_PROBE_SECRET", "server-environment-only")],
        );
        Sandboxed {
            _dir: dir,
            app,
            data,
            certs,
            server,
        }
    }

    /// Runs `script` with `sh -c` inside the instance; (exit status, stdout, stderr).
    async fn sh(&self, c: &Created, script: &str) -> (i64, String, String) {
        let r = self.server.fetch(c, Method::POST, "/exec", script).await;
        assert_eq!(r.status(), StatusCode::OK, "exec {script:?}");
        let v: Value = body_json(r).await;
        (
            v["status"].as_i64().unwrap_or(-1),
            v["stdout"].as_str().unwrap_or_default().to_owned(),
            v["stderr"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Tries a Unix socket from inside the instance.
    async fn connect(&self, c: &Created, socket: &Path) -> String {
        let path = format!("/connect?path={}", socket.display());
        body_text(self.server.fetch(c, Method::GET, &path, "").await).await
    }

    fn socket(&self, c: &Created) -> PathBuf {
        self.data.join(format!("sockets/{}/vscode.sock", c.id))
    }
}

/// PIDs of processes whose command line is exactly `args`.
fn processes(args: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .filter(|pid| pid_alive(*pid))
        .collect()
}

/// The session a process belongs to (field 6 of /proc/PID/stat).
fn session(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_reaches_none_of_the_servers_secrets() {
    let f = Sandboxed::new();
    let s = &f.server;
    let alice = s.create(json!({"user_id": "alice"})).await;
    let bob = s.create(json!({"user_id": "bob"})).await;
    let bob_secret = f.data.join("workspaces/bob/secret.txt");
    std::fs::write(&bob_secret, "bob's").unwrap();
    for c in [&alice, &bob] {
        let r = s.fetch(c, Method::GET, "/small", "").await;
        assert_eq!(body_text(r).await, "hello", "{} serves", c.id);
    }
    // What the attacks below look for is really there, and really reachable from outside.
    for secret in [
        f.data.join("admin-token"),
        f.certs.join("ca.key"),
        f.data.join(format!("instances/{}.json", bob.id)),
    ] {
        assert!(secret.exists(), "{} exists on the host", secret.display());
    }
    tokio::net::UnixStream::connect(f.socket(&bob))
        .await
        .expect("bob's socket accepts the server");

    let (_, env, _) = f.sh(&alice, "env").await;
    assert!(env.contains("HOME=/vscode/home"), "{env}");
    assert!(
        !env.lines().any(|l| l.starts_with("VOD_")),
        "the server has VOD_LOG and VOD_PROBE_SECRET; the instance must not: {env}"
    );

    // The runtime's directory is there (the program runs from it), what it holds of the
    // server is not.
    let (st, out, _) = f
        .sh(
            &alice,
            &format!("cat {}", f.app.join("visible.txt").display()),
        )
        .await;
    assert_eq!((st, out.as_str()), (0, "runtime file"));
    for secret in [
        f.data.join("admin-token"),
        f.certs.join("ca.key"),
        f.data.join(format!("instances/{}.json", bob.id)),
        f.data.join(format!("instances/{}.json", alice.id)),
        bob_secret.clone(),
    ] {
        let (st, out, err) = f.sh(&alice, &format!("cat {}", secret.display())).await;
        assert!(
            st != 0 && out.is_empty(),
            "{} is readable from inside: {out} {err}",
            secret.display()
        );
    }
    let (_, out, _) = f
        .sh(
            &alice,
            &format!("ls -A {} {}", f.data.display(), f.certs.display()),
        )
        .await;
    assert!(
        out.trim().lines().all(|l| l.ends_with(':') || l.is_empty()),
        "{out}"
    );

    assert_eq!(
        f.connect(&alice, Path::new("/run/vod/vscode.sock")).await,
        "connected"
    );
    let other = f.connect(&alice, &f.socket(&bob)).await;
    assert!(
        other.starts_with("failed"),
        "bob's socket from alice: {other}"
    );

    // Not the server's process either, nor anything of another instance.
    let (_, ps, _) = f.sh(&alice, "ls /proc | grep -E '^[0-9]+$'").await;
    assert!(
        !ps.lines().any(|p| p == s.pid().to_string()),
        "the server is visible: {ps}"
    );
    let (st, _, _) = f.sh(&alice, "echo x > /usr/written-by-instance").await;
    assert_ne!(st, 0, "system directories are read-only");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workspace_is_at_workspaces_and_persists_across_stop_and_start() {
    let f = Sandboxed::new();
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let (st, out, err) = f
        .sh(
            &c,
            "pwd && echo kept > /workspaces/notes.txt && ls -A /workspaces",
        )
        .await;
    assert_eq!(st, 0, "{err}");
    assert_eq!(out, "/workspaces\nnotes.txt\n");
    assert_eq!(
        std::fs::read_to_string(f.data.join("workspaces/alice/notes.txt")).unwrap(),
        "kept\n"
    );
    let stop = format!("/api/instances/{}/stop", c.id);
    assert_eq!(s.api(Method::POST, &stop, None).await.0, StatusCode::OK);
    s.wait_state(&c.id, "Stopped", Duration::from_secs(10))
        .await;
    let (_, out, _) = f.sh(&c, "cat /workspaces/notes.txt").await;
    assert_eq!(out, "kept\n", "started again, the file is still there");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_or_a_server_crash_ends_what_the_instance_started_setsid_included() {
    let mut f = Sandboxed::new();
    let c = f.server.create(json!({"user_id": "alice"})).await;
    // A duration no other process on the machine uses, to find this one from outside.
    let duration = format!("1000.{}", std::process::id());
    let escape = format!("setsid sleep {duration} </dev/null >/dev/null 2>&1 &");

    for crash in [false, true] {
        let (st, _, err) = f.sh(&c, &escape).await;
        assert_eq!(st, 0, "{err}");
        let mut found = Vec::new();
        wait_until("the escaped sleep to show", Duration::from_secs(10), || {
            found = processes(&["sleep", &duration]);
            !found.is_empty()
        })
        .await;
        let pgid_file = f.data.join(format!("instances/{}/pgid", c.id));
        let leader: i32 = std::fs::read_to_string(&pgid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_ne!(
            session(found[0]),
            session(leader),
            "the sleep left the instance's session, so only its namespace can end it"
        );
        if crash {
            f.server.kill();
        } else {
            let stop = format!("/api/instances/{}/stop", c.id);
            let (st, v) = f.server.api(Method::POST, &stop, None).await;
            assert_eq!(st, StatusCode::OK, "{v}");
        }
        wait_until("the escaped sleep to end", Duration::from_secs(10), || {
            processes(&["sleep", &duration]).is_empty()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_bwrap_the_bwrap_mode_refuses_to_start_and_auto_warns() {
    let dir = tempdir();
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(product())
        .args(["serve", "--listen", "127.0.0.1:0", "--sandbox", "bwrap"])
        .arg("--data-dir")
        .arg(&data)
        .env("PATH", &empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without bwrap: {err}");
    assert!(
        err.contains("bwrap is not on PATH") && err.contains("bubblewrap"),
        "the error names the package: {err}"
    );

    std::fs::create_dir_all(&data).unwrap();
    let s = Server::start_with_env(&data, &[], &[("PATH", empty.to_str().unwrap())]);
    let banner = s.stdout.join("\n");
    assert!(
        banner.contains("Sandbox:    NONE") && banner.contains("bubblewrap"),
        "{banner}"
    );
    let log = log_tail(&data.with_extension("server.log"), 50);
    assert!(log.contains("WITHOUT a sandbox"), "{log}");
}
