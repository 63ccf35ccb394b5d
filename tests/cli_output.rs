//! The client's output against a real server: `list` as an aligned table, `--json` as the
//! API's answer, and shell completions.

use serde_json::{json, Value};
use std::process::Command;
use vod_testkit::*;

#[tokio::test]
async fn list_is_an_aligned_table_and_json_is_the_answer() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let a = s.create(json!({"user_id": "al"})).await;
    let b = s.create(json!({"user_id": "a-much-longer-user"})).await;
    let out = s.client(&["list"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("INSTANCE ID"), "{text}");
    // Every column starts at the same place on every line.
    for header in [
        "USER",
        "STATUS",
        "LAST ACTIVITY",
        "IDLE STOP",
        "STOP REASON",
        "URL",
    ] {
        let col = lines[0].find(header).unwrap();
        for l in &lines[1..] {
            assert_eq!(&l[col - 2..col], "  ", "{header} in {l:?}\n{text}");
            assert_ne!(&l[col..col + 1], " ", "{header} in {l:?}\n{text}");
        }
    }
    for c in [&a, &b] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&c.id) && l.contains("Stopped")),
            "{text}"
        );
    }

    let out = s.client(&["list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["instances"].as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn completions_for_each_shell() {
    for (shell, mark) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef vscode-on-demand"),
        ("fish", "complete -c vscode-on-demand"),
    ] {
        let out = Command::new(product())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(mark), "{shell}: {text}");
        assert!(
            text.contains("rotate-token"),
            "{shell}: subcommands are completed"
        );
    }
    let out = Command::new(product())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown shell is refused");
}
