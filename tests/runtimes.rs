//! The local backend's runtimes: `serve-web` with the VS Code CLI downloaded once from the
//! (configurable) update service and cached, and `auto` failing with an error that names what
//! to install when nothing is available.

mod support;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// A stand-in for the VS Code CLI: a shell script that serves with `vod-upstream` on the port
/// and records the arguments it was given.
fn fake_cli_tarball(dir: &std::path::Path) -> Vec<u8> {
    let src = dir.join("cli");
    std::fs::create_dir_all(&src).unwrap();
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {args}\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in --port) port=$2; shift;; esac\n  shift\ndone\nexec {up} --port \"$port\"\n",
        args = dir.join("cli-args").display(),
        up = UPSTREAM,
    );
    let code = src.join("code");
    std::fs::write(&code, script).unwrap();
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&code)
        .status()
        .unwrap();
    let out = dir.join("code.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg("code")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

/// Serves `<version>/cli-alpine-<arch>/stable` as a redirect to the tarball, counting downloads.
async fn update_service(tarball: Vec<u8>, downloads: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tarball = Bytes::from(tarball);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tarball = tarball.clone();
            let downloads = downloads.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let tarball = tarball.clone();
                    let downloads = downloads.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let resp = if path.ends_with("/stable") && path.contains("/cli-alpine-") {
                            Response::builder()
                                .status(StatusCode::FOUND)
                                .header("location", "/files/code.tar.gz")
                                .body(Full::new(Bytes::new()))
                        } else if path == "/files/code.tar.gz" {
                            downloads.fetch_add(1, Ordering::SeqCst);
                            Response::builder().body(Full::new(tarball))
                        } else {
                            Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new()))
                        };
                        Ok::<_, std::convert::Infallible>(resp.unwrap())
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_web_downloads_the_cli_once_and_keeps_the_base_path() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let downloads = Arc::new(AtomicUsize::new(0));
    let url = update_service(fake_cli_tarball(dir.path()), downloads.clone()).await;
    let s = Server::start(
        &data,
        &["--runtime", "serve-web", "--vscode-download-url", &url],
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
    for want in [
        "serve-web",
        "--host 127.0.0.1",
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
