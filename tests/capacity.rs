//! What the server takes on: instances per user (409 beyond), instances running at once (429
//! beyond, a page for a browser), and starts in progress at once (the rest queue, and say so).

use http::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};
use vod_testkit::*;

#[tokio::test]
async fn one_user_may_have_so_many_instances() {
    let f = Fixture::new(0, &["--max-instances-per-user", "2"]);
    let s = &f.server;
    let a = s.create(json!({"user_id": "alice"})).await;
    s.create(json!({"user_id": "alice"})).await;
    let (status, v) = s
        .api(
            Method::POST,
            "/api/instances",
            Some(json!({"user_id": "alice"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"], "too_many_instances");
    assert!(v["message"].as_str().unwrap().contains("delete one"), "{v}");
    s.create(json!({"user_id": "bob"})).await;
    let (status, _) = s
        .api(Method::DELETE, &format!("/api/instances/{}", a.id), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    s.create(json!({"user_id": "alice"})).await;
}

#[tokio::test]
async fn so_many_run_at_once_then_starts_are_refused_until_one_stops() {
    let f = Fixture::new(0, &["--max-running", "1"]);
    let s = &f.server;
    let a = s.create(json!({"user_id": "alice"})).await;
    let b = s.create(json!({"user_id": "bob"})).await;
    let start = |id: &str| {
        let path = format!("/api/instances/{id}/start");
        async move { s.api(Method::POST, &path, None).await }
    };
    assert_eq!(start(&a.id).await.0, StatusCode::OK);
    let (status, v) = start(&b.id).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"], "at_capacity");
    // A browser opening B is told the same on a page.
    let r = s.visit(&b, "/").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(body_text(r).await.contains("--max-running"));
    assert_eq!(s.state(&b.id).await, "Stopped");

    let (status, _) = s
        .api(Method::POST, &format!("/api/instances/{}/stop", a.id), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(start(&b.id).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_beyond_the_limit_wait_their_turn() {
    // Each start takes 1.5 s; one at a time.
    let f = Fixture::new(1500, &["--max-concurrent-starts", "1"]);
    let s = &f.server;
    let mut ids = Vec::new();
    for u in ["ann", "ben", "cat"] {
        ids.push(s.create(json!({ "user_id": u })).await.id);
    }
    let requests: Vec<_> = ids
        .iter()
        .map(|id| {
            let path = format!("/api/instances/{id}/start");
            let s = &f.server;
            async move { s.api(Method::POST, &path, None).await.0 }
        })
        .collect();
    let all = futures_util::future::join_all(requests);
    tokio::pin!(all);
    let mut most_starting = 0;
    let mut queued_seen = false;
    let end = Instant::now() + Duration::from_secs(120);
    let statuses = loop {
        tokio::select! {
            r = &mut all => break r,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let (_, v) = s.api(Method::GET, "/api/instances", None).await;
        let items = v["instances"].as_array().unwrap().clone();
        let starting = items
            .iter()
            .filter(|i| {
                i["status"] == "Starting"
                    && !i["message"].as_str().unwrap_or("").starts_with("queued")
            })
            .count();
        most_starting = most_starting.max(starting);
        queued_seen |= items
            .iter()
            .any(|i| i["message"].as_str().unwrap_or("").starts_with("queued: "));
        assert!(Instant::now() < end, "starts did not finish: {v}");
    };
    assert!(
        statuses.iter().all(|st| *st == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(most_starting, 1, "never more than one start in progress");
    assert!(queued_seen, "the waiting starts said they were queued");
    for id in &ids {
        assert_eq!(s.state(id).await, "Running");
    }
    assert_eq!(starts(&f.starts).len(), 3);
}
