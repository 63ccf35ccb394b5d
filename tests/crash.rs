//! A server killed (SIGKILL) in the middle of a burst of creates loses none it acknowledged:
//! every instance answered 201 is there after a restart, with its token.

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::HashMap;
use vod_testkit::*;

const BURST: usize = 300;
/// Killed once this many were acknowledged, so the rest are in flight.
const KILL_AFTER: usize = 100;

#[tokio::test(flavor = "multi_thread")]
async fn creates_acknowledged_before_a_crash_survive_it() {
    let mut f = Fixture::new(0, &["--max-instances-per-user", "1000"]);
    let s = &f.server;
    // One HTTP/2 connection, every create a stream of it, all in flight together.
    let io = TokioIo::new(s.connect(b"h2").await);
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for i in 0..BURST {
        let mut tx = tx.clone();
        let req = s
            .request(Method::POST, "/api/instances")
            .header("authorization", format!("Bearer {}", s.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({ "user_id": format!("u{}", i % 7) }).to_string(),
            )))
            .unwrap();
        pending.push(async move {
            let resp = tx.send_request(req).await.ok()?;
            if resp.status() != StatusCode::CREATED {
                return None;
            }
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice::<Value>(&body).ok()
        });
    }
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    let pid = s.pid();
    use futures_util::StreamExt;
    while let Some(done) = pending.next().await {
        if let Some(v) = done {
            acknowledged.insert(
                v["instance_id"].as_str().unwrap().to_owned(),
                v["access_token"].as_str().unwrap().to_owned(),
            );
            if acknowledged.len() == KILL_AFTER {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    assert!(
        acknowledged.len() >= KILL_AFTER && acknowledged.len() < BURST,
        "killed in the middle: {} of {BURST} acknowledged",
        acknowledged.len()
    );

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
