//! A stand-in VS Code CLI and update service: the CLI is a shell script that serves with
//! `vod-upstream` on the socket or port it is given (on `$POD_IP` when run as a pod), requiring
//! the `--connection-token` it is given, and records its arguments; the service answers
//! `<version>/cli-alpine-<arch>/stable` with a redirect to a
//! tarball of it, counting downloads.

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
    let src = dir.join("cli");
    std::fs::create_dir_all(&src).unwrap();
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {args}\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in --port) port=$2; shift;; --socket-path) socket=$2; shift;; --connection-token) tok=$2; shift;; esac\n  shift\ndone\n\
         if [ -n \"$socket\" ]; then exec {up} --socket \"$socket\" --workspace \"$PWD\" ${{tok:+--connection-token \"$tok\"}}; fi\n\
         exec {up} --host \"${{POD_IP:-127.0.0.1}}\" --port \"$port\" --workspace \"$PWD\" ${{tok:+--connection-token \"$tok\"}}\n",
        args = dir.join("cli-args").display(),
        up = bins::upstream(),
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

pub async fn update_service(tarball: Vec<u8>, downloads: Arc<AtomicUsize>) -> String {
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
