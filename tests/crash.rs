//! A server killed (SIGKILL) in the middle of a burst of creates loses none it acknowledged:
//! every instance answered 201 is there after a restart, with its token.

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::HashMap;
use vod_testkit::*;

/// Creates kept in flight at once; new ones keep being sent until the server is gone, so some are
/// always in flight when the kill lands, however fast the server answers.
const WINDOW: usize = 64;
/// Killed once this many were acknowledged.
const KILL_AFTER: usize = 100;

#[tokio::test(flavor = "multi_thread")]
async fn creates_acknowledged_before_a_crash_survive_it() {
    let mut f = Fixture::new(0, &["--max-instances-per-user", "1000"]);
    let acknowledged = burst_then_kill(&f.server).await;
    f.restart(&["--max-instances-per-user", "1000"]);
    let s = &f.server;
    let (status, v) = s.api(Method::GET, "/api/instances", None).await;
    assert_eq!(status, StatusCode::OK);
    let present: HashMap<&str, &Value> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["instance_id"].as_str().unwrap(), i))
        .collect();
    let lost: Vec<&String> = acknowledged
        .keys()
        .filter(|id| !present.contains_key(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    // The tokens came back too: one of them still opens its instance.
    let (id, token) = acknowledged.iter().next().unwrap();
    let c = Created {
        id: id.clone(),
        token: token.clone(),
        url: String::new(),
        body: Value::Null,
    };
    assert_eq!(
        s.fetch(&c, Method::GET, "/small", "").await.status(),
        StatusCode::OK
    );
}

/// Sends creates over one HTTP/2 connection, every create a stream of it, until the server is
/// SIGKILLed after `KILL_AFTER` answers; returns the acknowledged ids with their tokens.
async fn burst_then_kill(s: &Server) -> HashMap<String, String> {
    use futures_util::StreamExt;
    let io = TokioIo::new(s.connect(b"h2").await);
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let creates = futures_util::stream::iter(0..).map(|i: usize| {
        let mut tx = tx.clone();
        let req = s
            .request(Method::POST, "/api/instances")
            .header("authorization", format!("Bearer {}", s.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({ "user_id": format!("u{}", i % 7) }).to_string(),
            )))
            .unwrap();
        async move {
            let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if status != StatusCode::CREATED {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())
        }
    });
    let mut creates = std::pin::pin!(creates.buffer_unordered(WINDOW));
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    let mut killed = false;
    let mut cut_off = 0usize;
    while let Some(done) = creates.next().await {
        match done {
            Ok(v) => {
                acknowledged.insert(
                    v["instance_id"].as_str().unwrap().to_owned(),
                    v["access_token"].as_str().unwrap().to_owned(),
                );
                if acknowledged.len() == KILL_AFTER {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(s.pid()),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .unwrap();
                    killed = true;
                }
            }
            Err(e) => {
                assert!(killed, "a create failed before the kill: {e}");
                cut_off += 1;
                if cut_off == WINDOW {
                    break;
                }
            }
        }
    }
    assert!(acknowledged.len() >= KILL_AFTER && cut_off == WINDOW);
    acknowledged
}
