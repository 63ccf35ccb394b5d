//! The local backend's runtimes: `serve-web` with the VS Code CLI downloaded once from the
//! (configurable) update service and cached, and `auto` failing with an error that names what
//! to install when nothing is available.

use http::{Method, StatusCode};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vod_testkit::vscode_cli::{fake_cli_tarball, update_service};
use vod_testkit::*;

#[tokio::test(flavor = "multi_thread")]
async fn serve_web_downloads_the_cli_once_and_keeps_the_base_path() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let downloads = Arc::new(AtomicUsize::new(0));
    let url = update_service(fake_cli_tarball(dir.path()), downloads.clone()).await;
    // The stand-in CLI runs `vod-upstream` from the build directory and records its arguments
    // outside the data directory, which a sandbox would not let it see.
    let s = Server::start(
        &data,
        &[
            "--runtime",
            "serve-web",
            "--vscode-download-url",
            &url,
            "--sandbox",
            "none",
        ],
    );
    let a = s
        .create(json!({"user_id": "alice", "vscode_version": "1.97.2"}))
        .await;
    let r = s.fetch(&a, Method::GET, "/echo/x", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(
        v["path"],
        format!("/instances/{}/echo/x", a.id),
        "serve-web gets the full path"
    );
    assert!(
        data.join("cache/vscode-cli/1.97.2/code").exists(),
        "cached per version"
    );

    let args = std::fs::read_to_string(dir.path().join("cli-args")).unwrap();
    let socket = data.join(format!("sockets/{}/vscode.sock", a.id));
    for want in [
        "serve-web",
        &format!("--socket-path {}", socket.display()),
        "--without-connection-token",
        &format!("--server-base-path /instances/{}", a.id),
    ] {
        assert!(args.contains(want), "{args} lacks {want}");
    }

    let b = s
        .create(json!({"user_id": "bob", "vscode_version": "1.97.2"}))
        .await;
    let r = s.fetch(&b, Method::GET, "/small", "").await;
    assert_eq!(body_text(r).await, "hello");
    assert_eq!(
        downloads.load(Ordering::SeqCst),
        1,
        "the second instance used the cache"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_without_any_runtime_says_what_to_install() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // An empty PATH hides any installed `code` or `code-server`; nothing listens on port 9, so
    // the download fails at once.
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let s = Server::start_with_env(
        &data,
        &[
            "--vscode-download-url",
            "http://127.0.0.1:9",
            "--start-timeout",
            "20s",
        ],
        &[("PATH", empty.to_str().unwrap())],
    );
    let c = s.create(json!({"user_id": "alice"})).await;
    let r = s.fetch(&c, Method::GET, "/", "").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v = body_json(r).await;
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("code-server") && msg.contains("install"),
        "{msg}"
    );
    s.wait_state(&c.id, "Failed", Duration::from_secs(5)).await;
}
