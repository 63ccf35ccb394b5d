//! The idle policy through the real server over TLS, with `vod-upstream` as the instance:
//! what counts as activity (activity reports, navigations, programs' requests, the keepalive
//! API) and what does not (WebSocket traffic, a page's background requests), what may start an
//! instance after an idle stop, and the activity script added to pages.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vod_testkit::tokio_tungstenite::tungstenite::{self, Message};
use vod_testkit::*;

const IDLE: &[&str] = &["--idle-timeout", "2s", "--reap-interval", "200ms"];

/// A request a page makes by itself, with the Fetch metadata browsers add.
async fn background(s: &Server, c: &Created, method: Method, rest: &str) -> Response<Incoming> {
    let req = s
        .request(method, &format!("/instances/{}{rest}", c.id))
        .header("cookie", s.cookie(&c.token))
        .header("sec-fetch-mode", "cors")
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-dest", "empty")
        .header("accept-encoding", "gzip, deflate, br")
        .body(Full::default())
        .unwrap();
    s.send(req).await
}

/// A top-level navigation as a browser sends it.
async fn navigate(s: &Server, c: &Created, rest: &str) -> Response<Incoming> {
    let req = s
        .request(Method::GET, &format!("/instances/{}{rest}", c.id))
        .header("cookie", s.cookie(&c.token))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .header("accept-encoding", "gzip, deflate, br")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-site", "none")
        .header("sec-fetch-dest", "document")
        .body(Full::default())
        .unwrap();
    s.send(req).await
}

/// What the activity script sends when someone uses the page.
async fn report_activity(s: &Server, c: &Created) -> Value {
    let r = background(s, c, Method::POST, "/_vod/activity").await;
    assert_eq!(r.status(), StatusCode::OK);
    body_json(r).await
}

async fn idle_info(s: &Server, c: &Created) -> Value {
    let r = background(s, c, Method::GET, "/_vod/idle").await;
    assert_eq!(r.status(), StatusCode::OK);
    body_json(r).await
}

async fn instance(s: &Server, c: &Created) -> Value {
    let (st, v) = s
        .api(Method::GET, &format!("/api/instances/{}", c.id), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v
}

async fn start(s: &Server, c: &Created) {
    let (st, v) = s
        .api(
            Method::POST,
            &format!("/api/instances/{}/start", c.id),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// Waits until the instance is stopped; returns how long that took.
async fn time_to_stop(s: &Server, c: &Created, within: Duration) -> Duration {
    let t0 = Instant::now();
    s.wait_state(&c.id, "Stopped", within).await;
    t0.elapsed()
}

async fn open_websocket(
    s: &Server,
    c: &Created,
) -> Result<
    vod_testkit::tokio_tungstenite::WebSocketStream<
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    >,
    tungstenite::Error,
> {
    s.websocket(
        &format!("/instances/{}/ws", c.id),
        Some(&s.cookie(&c.token)),
        Some(&s.origin_of(&c.id)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_messages_and_background_requests_alone_do_not_keep_it_alive() {
    let f = Fixture::new(0, IDLE);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    start(s, &c).await;
    let mut ws = open_websocket(s, &c).await.unwrap();
    let t0 = Instant::now();
    // What an untouched VS Code tab does: keepalives over its WebSocket, background fetches.
    while s.state(&c.id).await == "Running" {
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "still running after {:?} of WebSocket and background traffic",
            t0.elapsed()
        );
        ws.send(Message::text("keepalive")).await.unwrap();
        let _ = ws.next().await;
        let r = background(s, &c, Method::GET, "/small").await;
        let _ = body_text(r).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = t0.elapsed();
    eprintln!("stopped {took:?} after the start despite the traffic");
    assert!(
        took >= Duration::from_millis(1500),
        "stopped too early: {took:?}"
    );
    let v = instance(s, &c).await;
    assert_eq!(v["stop_reason"], "idle", "{v}");
    assert_eq!(starts(&f.starts).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn activity_reports_keep_it_alive_and_the_idle_endpoint_counts_down() {
    let f = Fixture::new(
        0,
        &[
            "--idle-timeout",
            "2s",
            "--reap-interval",
            "200ms",
            "--idle-notice",
            "1s",
        ],
    );
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    start(s, &c).await;
    // Input the script batched into a report is dated back by `ago`.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = background(s, &c, Method::POST, "/_vod/activity?ago=300").await;
    let v = body_json(r).await;
    let left = v["remaining_ms"].as_u64().unwrap();
    assert!((1500..=1720).contains(&left), "{v}");

    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let v = report_activity(s, &c).await;
        assert_eq!(v["state"], "Running", "{v}");
        assert!(v["remaining_ms"].as_u64().unwrap() > 1900, "{v}");
    }
    assert_eq!(
        s.state(&c.id).await,
        "Running",
        "6 s of reports, 2 s timeout"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let v = idle_info(s, &c).await;
    let left = v["remaining_ms"].as_u64().unwrap();
    assert!(left < 1000, "inside the notice window: {v}");
    assert_eq!(
        (v["idle_timeout"].as_u64(), v["idle_notice"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(v["report_ms"], 1000);
    assert_eq!(v["needs_resume"], false);

    let took = time_to_stop(s, &c, Duration::from_secs(5)).await;
    assert!(took <= Duration::from_millis(left + 200 + 300), "{took:?}");
    let v = idle_info(s, &c).await;
    assert_eq!(
        (&v["state"], &v["stop_reason"], &v["needs_resume"]),
        (&json!("Stopped"), &json!("idle"), &json!(true)),
        "{v}"
    );
    let v = report_activity(s, &c).await;
    assert_eq!(v["state"], "Stopped", "a report never starts it: {v}");

    // Only the instance's own pages report.
    let req = s
        .request(Method::POST, &format!("/instances/{}/_vod/activity", c.id))
        .header("cookie", s.cookie(&c.token))
        .header("sec-fetch-site", "cross-site")
        .body(Full::default())
        .unwrap();
    assert_eq!(s.send(req).await.status(), StatusCode::FORBIDDEN);
    let r = background(s, &c, Method::GET, "/_vod/activity").await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread")]
async fn navigations_and_program_requests_are_activity() {
    let f = Fixture::new(0, IDLE);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    start(s, &c).await;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = if i % 2 == 0 {
            navigate(s, &c, "/").await
        } else {
            s.fetch(&c, Method::GET, "/small", "").await
        };
        assert_eq!(r.status(), StatusCode::OK);
        let _ = body_text(r).await;
    }
    assert_eq!(s.state(&c.id).await, "Running");
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_with_busy_until_holds_it_until_then() {
    let f = Fixture::new(
        0,
        &[
            "--idle-timeout",
            "2s",
            "--reap-interval",
            "200ms",
            "--max-idle-timeout",
            "1h",
        ],
    );
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let path = format!("/api/instances/{}/keepalive", c.id);

    let (st, v) = s.api(Method::POST, &path, None).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("not_running")),
        "{v}"
    );
    start(s, &c).await;

    let (st, v) = s.api(Method::POST, &path, None).await;
    assert_eq!(st, StatusCode::OK, "a plain keepalive: {v}");
    assert!(
        v["busy_until"].is_null() && v["idle_stop_at"].is_string(),
        "{v}"
    );

    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (st, v) = s
        .api(
            Method::POST,
            &path,
            Some(json!({ "busy_until": unix + 7200 })),
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_busy_until")),
        "{v}"
    );
    let (st, v) = s
        .api(Method::POST, &path, Some(json!({ "busy_until": "soon" })))
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_busy_until")),
        "{v}"
    );

    let t0 = Instant::now();
    let until = SystemTime::now() + Duration::from_secs(4);
    let rfc3339 = humantime::format_rfc3339_seconds(until).to_string();
    let (st, v) = s
        .api(Method::POST, &path, Some(json!({ "busy_until": rfc3339 })))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["busy_until"], rfc3339, "{v}");
    let log = std::fs::read_to_string(s.data_dir.with_extension("server.log")).unwrap();
    assert!(log.contains("busy until"), "logged");

    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        s.state(&c.id).await,
        "Running",
        "busy, then within the idle timeout"
    );
    s.wait_state(&c.id, "Stopped", Duration::from_secs(4)).await;
    let took = t0.elapsed();
    eprintln!("busy for 4 s with a 2 s idle timeout: stopped after {took:?}");
    assert!(took >= Duration::from_millis(4500), "{took:?}");
    assert_eq!(instance(s, &c).await["stop_reason"], "idle");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_after_an_idle_stop_do_not_start_it_but_a_navigation_does() {
    let mut f = Fixture::new(0, IDLE);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    start(s, &c).await;
    let took = time_to_stop(s, &c, Duration::from_secs(5)).await;
    eprintln!("idle stop {took:?} after the start (timeout 2 s, checked every 200 ms)");
    let v = instance(s, &c).await;
    assert_eq!(v["stop_reason"], "idle", "{v}");
    assert!(v["last_activity"].is_string(), "{v}");
    let log = std::fs::read_to_string(s.data_dir.with_extension("server.log")).unwrap();
    assert!(
        log.contains("idle; scaling to zero") && log.contains("last_activity="),
        "the stop is logged with the last activity"
    );

    // VS Code reconnecting: WebSocket upgrades and background requests, for a while.
    for _ in 0..5 {
        match open_websocket(s, &c).await {
            Err(tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE)
            }
            other => panic!("the upgrade was not refused: {:?}", other.map(|_| ())),
        }
        let r = background(s, &c, Method::GET, "/small").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key("retry-after"));
        let v = body_json(r).await;
        assert_eq!(v["error"], "stopped", "{v}");
        assert!(
            v["message"].as_str().unwrap().contains("without activity"),
            "{v}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(s.state(&c.id).await, "Stopped");
    assert_eq!(starts(&f.starts).len(), 1, "nothing started it");

    // A navigation (a reload, the resume button) does.
    let r = navigate(s, &c, "/").await;
    assert!(body_text(r).await.contains("Starting VS Code"));
    s.wait_state(&c.id, "Running", Duration::from_secs(10))
        .await;
    assert_eq!(instance(s, &c).await["stop_reason"], Value::Null);
    let mut ws = open_websocket(s, &c)
        .await
        .expect("reconnects once it runs");
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    drop(ws);

    // The same after an API stop; an API start wakes it.
    let (st, _) = s
        .api(Method::POST, &format!("/api/instances/{}/stop", c.id), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let r = background(s, &c, Method::GET, "/small").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(idle_info(s, &c).await["needs_resume"], true);
    start(s, &c).await;
    assert_eq!(starts(&f.starts).len(), 3);

    // Programs keep the request-based signal: their requests start it.
    let (st, _) = s
        .api(Method::POST, &format!("/api/instances/{}/stop", c.id), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let r = s.fetch(&c, Method::GET, "/small", "").await;
    assert_eq!(body_text(r).await, "hello");
    assert_eq!(starts(&f.starts).len(), 4);

    // A stop nobody chose (the server restarting) is undone by the reconnect itself. The last
    // activity survives the restart.
    let before = instance(s, &c).await;
    f.restart(&["--idle-timeout", "1h"]);
    let s = &f.server;
    let after = instance(s, &c).await;
    assert_eq!(after["stop_reason"], "shutdown");
    assert_eq!(after["last_activity"], before["last_activity"]);
    let mut ws = open_websocket(s, &c).await.expect("a reconnect starts it");
    ws.send(Message::text("back")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("back"));
    assert_eq!(starts(&f.starts).len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_activity_script_is_added_to_pages_and_nothing_else() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    start(s, &c).await;
    let tag = format!(
        "<script src=\"/instances/{}/_vod/activity.js\" defer></script>",
        c.id
    );

    // A navigation: asked uncompressed, the script before </head>, the length fixed up.
    let r = navigate(s, &c, "/doc").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("content-encoding").is_none());
    assert!(r.headers().get("etag").is_none(), "the page changed");
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let page = body_text(r).await;
    assert_eq!(page.len(), len);
    assert_eq!(
        page,
        format!("<!doctype html><html><head><title>doc</title>{tag}</head><body><p>doc</p></body></html>")
    );
    // Also over HTTP/2.
    let req = s
        .request(
            Method::GET,
            &format!("{}/instances/{}/doc", s.origin_of(&c.id), c.id),
        )
        .header("cookie", s.cookie(&c.token))
        .header("sec-fetch-mode", "navigate")
        .header("accept-encoding", "gzip")
        .body(Full::default())
        .unwrap();
    assert!(body_text(s.send_h2(req).await).await.contains(&tag));
    // A page without a head gets it at the end.
    let page = body_text(navigate(s, &c, "/some/page").await).await;
    assert!(page.ends_with(&tag), "{page}");

    // Background requests get the instance's bytes untouched, compressed as asked.
    let r = background(s, &c, Method::GET, "/doc").await;
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["etag"], "\"doc-1\"");
    let gz = r.into_body().collect().await.unwrap().to_bytes();
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
    assert!(
        plain.starts_with("<!doctype html>") && !plain.contains("_vod"),
        "{plain}"
    );
    // So do frames, programs, and navigations to what is not HTML.
    let req = s
        .request(Method::GET, &format!("/instances/{}/doc", c.id))
        .header("cookie", s.cookie(&c.token))
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "iframe")
        .body(Full::default())
        .unwrap();
    assert!(!body_text(s.send(req).await).await.contains("_vod"));
    let r = s.fetch(&c, Method::GET, "/doc", "").await;
    assert!(!body_text(r).await.contains("_vod"));
    let r = navigate(s, &c, "/small").await;
    assert_eq!(body_text(r).await, "hello");
    let r = navigate(s, &c, "/echo").await;
    let echoed = body_json(r).await;
    assert!(
        echoed["headers"].get("accept-encoding").is_none(),
        "navigations go upstream without Accept-Encoding: {echoed}"
    );

    // The script itself.
    let r = background(s, &c, Method::GET, "/_vod/activity.js").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let js = body_text(r).await;
    assert!(js.contains("_vod") || js.contains("new URL('idle'"), "{js}");
    assert!(
        !js.contains("innerHTML"),
        "no markup from strings under VS Code's CSP"
    );
    let r = background(s, &c, Method::GET, "/_vod/nope").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let anonymous = s
        .send(
            s.request(
                Method::GET,
                &format!("/instances/{}/_vod/activity.js", c.id),
            )
            .body(Full::<Bytes>::default())
            .unwrap(),
        )
        .await;
    assert_eq!(
        anonymous.status(),
        StatusCode::UNAUTHORIZED,
        "behind the token like the rest"
    );
}
