//! A stand-in VS Code CLI and update service: the CLI is a shell script that serves with
//! `vod-upstream` on the socket or port it is given (on `$POD_IP` when run as a pod), requiring
//! the `--connection-token` it is given, and records its arguments (a variant for containers
//! carries `vod-upstream` with it); the service answers `<version>/cli-alpine-<arch>/stable`
//! with a redirect to a tarball of it, counting downloads.

use crate::bins;
use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub fn fake_cli_tarball(dir: &Path) -> Vec<u8> {
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {args}\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in --port) port=$2; shift;; --socket-path) socket=$2; shift;; --connection-token) tok=$2; shift;; esac\n  shift\ndone\n\
         if [ -n \"$socket\" ]; then exec {up} --socket \"$socket\" --workspace \"$PWD\" ${{tok:+--connection-token \"$tok\"}}; fi\n\
         exec {up} --host \"${{POD_IP:-127.0.0.1}}\" --port \"$port\" --workspace \"$PWD\" ${{tok:+--connection-token \"$tok\"}}\n",
        args = dir.join("cli-args").display(),
        up = bins::upstream(),
    );
    tarball(&dir.join("cli"), &script, &[])
}

/// The stand-in CLI for a container: `vod-upstream` packed beside the script (glibc-linked, so
/// for Debian-based images), listening on `--host` as serve-web does.
pub fn container_cli_tarball(dir: &Path) -> Vec<u8> {
    let script = "#!/bin/sh\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in --host) host=$2; shift;; --port) port=$2; shift;; --connection-token) tok=$2; shift;; esac\n  shift\ndone\n\
         exec \"$(dirname \"$0\")/vod-upstream\" --host \"${host:-0.0.0.0}\" --port \"$port\" --workspace \"$PWD\" ${tok:+--connection-token \"$tok\"}\n";
    tarball(
        &dir.join("container-cli"),
        script,
        &[Path::new(bins::upstream())],
    )
}

/// `code.tar.gz` of `script` as `code`, with `files` beside it, made in `src`.
fn tarball(src: &Path, script: &str, files: &[&Path]) -> Vec<u8> {
    std::fs::create_dir_all(src).unwrap();
    let code = src.join("code");
    std::fs::write(&code, script).unwrap();
    let mut names = vec!["code".to_owned()];
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(f, src.join(&name)).unwrap();
        names.push(name);
    }
    let st = std::process::Command::new("chmod")
        .arg("755")
        .args(names.iter().map(|n| src.join(n)))
        .status()
        .unwrap();
    assert!(st.success());
    let out = src.with_extension("tar.gz");
    let st = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(src)
        .args(&names)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

pub async fn update_service(tarball: Vec<u8>, downloads: Arc<AtomicUsize>) -> String {
    update_service_on("127.0.0.1", tarball, downloads).await
}

/// The update service on address `ip` (a real node's pods reach the host on their bridge's).
pub async fn update_service_on(ip: &str, tarball: Vec<u8>, downloads: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
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
                                .status(302)
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
