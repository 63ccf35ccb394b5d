//! `start --wait` and `create --start --wait` against a real server: the start's phases as
//! plain lines when stdout is not a terminal, a redrawn line in a pseudo-terminal (`script`
//! from util-linux), and a failed start's reason with a non-zero exit.

use serde_json::json;
use std::process::Command;
use vod_testkit::*;

#[tokio::test]
async fn start_wait_shows_phases_as_lines_and_in_a_terminal() {
    let f = Fixture::new(1500, &[]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "waiter"})).await;
    let out = s.client(&["start", "--instance-id", &c.id, "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = text.lines().collect();
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| l.starts_with('[') && l.contains(what))
            .unwrap_or_else(|| panic!("no {what} line in:\n{text}"))
    };
    assert!(
        at("Stopped") < at("Starting") && at("Starting") < at("Running"),
        "{text}"
    );
    let phase_lines = |what: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with('[') && l.to_lowercase().contains(what))
            .count()
    };
    assert_eq!(phase_lines("running"), 1, "Running once: {text}");
    assert!(
        !lines
            .iter()
            .any(|l| l.rsplit("] ").next() == Some("Starting: starting")),
        "a phase's name is not repeated as its message: {text}"
    );
    assert!(
        !text.contains('\r') && !text.contains('\x1b'),
        "no terminal codes: {text:?}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(format!("{}: Running", c.id).as_str())
    );

    // In a terminal: one line redrawn in place, then the result.
    s.api(
        http::Method::POST,
        &format!("/api/instances/{}/stop", c.id),
        None,
    )
    .await;
    let cmd = format!(
        "{} start --instance-id {} --wait --data-dir {}",
        product(),
        c.id,
        s.data_dir.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(tty.contains("\r\x1b[2K"), "the line is redrawn: {tty:?}");
    assert!(tty.contains("Starting"), "{tty:?}");
    assert!(tty.contains("✓ Running"), "{tty:?}");

    // --json: the answer on stdout, the phases on stderr.
    s.api(
        http::Method::POST,
        &format!("/api/instances/{}/stop", c.id),
        None,
    )
    .await;
    let out = s.client(&["start", "--instance-id", &c.id, "--wait", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "Running");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Running"));
}

#[tokio::test]
async fn a_failed_start_exits_non_zero_with_its_reason() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // An instance command that exits at once.
    let cmd = format!("{} --socket {{socket}} --no-such-flag", upstream());
    let s = Server::start(&data, &unsandboxed(&cmd));
    let c = s.create(json!({"user_id": "doomed"})).await;
    for args in [
        vec!["start", "--instance-id", c.id.as_str(), "--wait"],
        vec!["create", "--user-id", "doomed", "--start", "--wait"],
    ] {
        let out = s.client(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(stdout.contains("Failed:"), "{args:?}: {stdout}");
        assert!(
            stderr.contains("error: the start failed:"),
            "{args:?}: {stderr}"
        );
        let reason = stderr.split("the start failed:").nth(1).unwrap().trim();
        assert!(!reason.is_empty(), "a reason: {stderr}");
    }
}
