//! Metrics, request ids and logs through the real server: `/metrics` behind the admin token
//! and on a plain listener of its own, values that follow a cold start (each phase once), a
//! stop and refused tokens, and JSON log lines that carry the id sent back in `x-request-id`
//! and never a token or a query string.

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vod_testkit::*;

/// Visits until the instance's own page comes back (not the starting page).
async fn cold_start(s: &Server, c: &Created) {
    let r = s.visit(c, "/").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(body_text(r).await.contains("Starting VS Code"));
    s.wait_state(&c.id, "Running", Duration::from_secs(30))
        .await;
    let r = s.fetch(c, Method::GET, "/small", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_text(r).await, "hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_cold_starts_stops_and_refused_tokens() {
    let f = Fixture::new(300, &["--auth-failures-per-minute", "2"]);
    let s = &f.server;

    let (status, _) = s.metrics_page(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "/metrics needs the token");
    let (status, _) = s.metrics_page(Some("not-the-admin-token-at-all")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let before = s.scrape().await;
    assert_eq!(before.val("vod_instance_starts_total"), 0.0);
    assert_eq!(before.val("vod_auth_failures_total{endpoint=\"api\"}"), 1.0);
    for p in PHASES {
        assert_eq!(before.phase_count(p), 0.0, "{p}");
    }

    let c = s.create(json!({"user_id": "alice"})).await;
    cold_start(s, &c).await;
    let m = s.scrape().await;
    assert_eq!(m.val("vod_instance_starts_total"), 1.0);
    for p in PHASES {
        assert_eq!(m.phase_count(p), 1.0, "phase {p} counted once");
    }
    assert!(
        m.phase_seconds("listening") > 0.2,
        "the instance's 300 ms before listening show in its phase"
    );
    assert_eq!(m.val("vod_instances{state=\"Running\"}"), 1.0);
    assert!(m.val("vod_http_requests_total{class=\"proxy\",status=\"2xx\"}") >= 2.0);
    assert!(m.val("vod_http_requests_total{class=\"api\",status=\"2xx\"}") >= 2.0);
    assert!(m.val("vod_http_requests_total{class=\"api\",status=\"4xx\"}") >= 2.0);
    assert!(m.val("vod_http_request_duration_seconds_count{class=\"proxy\"}") >= 2.0);
    assert!(m.val("vod_proxied_bytes_total{direction=\"to_client\"}") >= 5.0);
    assert!(m.val("vod_open_connections") >= 1.0);

    let (status, _) = s
        .api(Method::POST, &format!("/api/instances/{}/stop", c.id), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let m = s.scrape().await;
    assert_eq!(m.val("vod_instance_stops_total{reason=\"api\"}"), 1.0);
    assert_eq!(m.val("vod_instances{state=\"Running\"}"), 0.0);
    assert_eq!(m.val("vod_instances{state=\"Stopped\"}"), 1.0);

    cold_start(s, &c).await;
    let m = s.scrape().await;
    assert_eq!(m.val("vod_instance_starts_total"), 2.0);
    for p in PHASES {
        assert_eq!(
            m.phase_count(p),
            2.0,
            "phase {p} counted once per cold start"
        );
    }

    // A WebSocket tunnel counts while open.
    let path = format!("/instances/{}/ws", c.id);
    let origin = s.origin_of(&c.id);
    let ws = s
        .websocket(&path, Some(&s.cookie(&c.token)), Some(&origin))
        .await
        .expect("websocket");
    let m = s.scrape().await;
    assert_eq!(m.val("vod_websocket_tunnels"), 1.0);
    drop(ws);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.scrape().await.val("vod_websocket_tunnels") != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tunnel stays counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Wrong instance tokens count, and past the limit so do refusals.
    let wrong = Created {
        id: c.id.clone(),
        token: "wrong-token-wrong-token".into(),
        url: c.url.clone(),
        body: c.body.clone(),
    };
    let mut limited = false;
    for _ in 0..4 {
        let r = s.fetch(&wrong, Method::GET, "/small", "").await;
        limited |= r.status() == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited, "the guess limit was reached");
    let m = s.scrape().await;
    assert!(m.val("vod_auth_failures_total{endpoint=\"instance\"}") >= 3.0);
    assert!(m.val("vod_rate_limited_requests_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_separate_plain_listener_serves_metrics() {
    let f = Fixture::new(0, &["--metrics-listen", "127.0.0.1:0"]);
    let s = &f.server;
    let addr = s
        .stdout
        .iter()
        .find_map(|l| l.split("Metrics:    http://").nth(1))
        .and_then(|r| r.split('/').next())
        .expect("the banner names the metrics listener")
        .to_owned();
    let get = |path: &'static str| {
        let addr = addr.clone();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let page = get("/metrics").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("# TYPE vod_cold_start_phase_seconds histogram"),
        "{page}"
    );
    assert!(
        page.contains("vod_instances{state=\"Running\"} 0"),
        "{page}"
    );
    assert!(get("/api/instances").await.starts_with("HTTP/1.1 404"));
    // The main listener still wants the token.
    assert_eq!(s.metrics_page(None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_carry_the_request_id_and_no_token() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cmd = upstream_command(&dir.path().join("starts"), 0);
    let mut args = unsandboxed(&cmd);
    args.extend(["--log-format", "json"]);
    let s = Server::start_with_env(&data, &args, &[("VOD_LOG", "info,access=debug")]);
    let c = s.create(json!({"user_id": "alice"})).await;

    // The token in the URL is exchanged for a cookie; neither may reach the log.
    let path = format!("/instances/{}/small?tkn={}&keep=1", c.id, c.token);
    let req = s
        .request(Method::GET, &path)
        .header("x-request-id", "forged-id")
        .body(Full::<Bytes>::default())
        .unwrap();
    let r = s.send(req).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let exchange_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(exchange_id, "forged-id", "a client's id is not taken");
    let r = s.fetch(&c, Method::GET, "/small", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    let fetch_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(fetch_id.len(), 16);
    assert_ne!(fetch_id, exchange_id);
    let (status, _) = s.api(Method::GET, "/api/instances", None).await;
    assert_eq!(status, StatusCode::OK);

    let log = data.with_extension("server.log");
    let mut lines: Vec<Value> = Vec::new();
    wait_until(
        "the request lines are logged",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            lines = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            [&exchange_id, &fetch_id]
                .iter()
                .all(|id| lines.iter().any(|v| v["request_id"] == **id))
        },
    )
    .await;
    let line = |id: &str| {
        lines
            .iter()
            .find(|v| v["request_id"] == id)
            .unwrap()
            .clone()
    };
    let l = line(&exchange_id);
    assert_eq!(l["status"], 303);
    assert_eq!(l["path"], format!("/instances/{}/small", c.id), "{l}");
    assert_eq!(l["level"], "DEBUG");
    assert_eq!(l["class"], "proxy");
    assert!(l["timestamp"].is_string());
    assert_eq!(line(&fetch_id)["status"], 200);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&c.token), "no instance token in the log");
    assert!(!text.contains(&s.token), "no admin token in the log");
    assert!(!text.contains("tkn="), "no query string in the log");
    assert!(!text.contains("forged-id"));
}
