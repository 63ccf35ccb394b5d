//! Instance lifecycle through the real server and real child processes: lazy start (once, under
//! concurrent first visits), the starting page and its event stream, start failures and
//! timeouts, idle stop and wake, restarts, delete keeping the workspace, and process cleanup.

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use std::time::{Duration, Instant};
use vod_testkit::*;

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_visits_start_the_instance_once() {
    let f = Fixture::new(1500, &[]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let visits = (0..20).map(|i| {
        let c = &c;
        async move {
            if i % 4 == 0 {
                let r = s.visit(c, "/").await;
                (r.status(), body_text(r).await)
            } else {
                let r = s.fetch(c, Method::GET, "/small", "").await;
                (r.status(), body_text(r).await)
            }
        }
    });
    let results = futures_util::future::join_all(visits).await;
    for (i, (status, body)) in results.iter().enumerate() {
        assert_eq!(*status, StatusCode::OK, "visit {i}: {body}");
        if i % 4 == 0 {
            assert!(
                body.contains("Starting VS Code"),
                "navigations get the starting page: {body}"
            );
        } else {
            assert_eq!(body, "hello", "script requests are held until ready");
        }
    }
    assert_eq!(
        starts(&f.starts).len(),
        1,
        "exactly one process was started"
    );
    assert_eq!(s.state(&c.id).await, "Running");
}

#[tokio::test(flavor = "multi_thread")]
async fn starting_page_follows_progress_until_ready() {
    let f = Fixture::new(1000, &[]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let r = s.visit(&c, "/deep/page").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let page = body_text(r).await;
    assert!(
        page.contains("_vod/starting.js") && page.contains(&format!("/instances/{}/", c.id)),
        "{page}"
    );
    let js = s.fetch(&c, Method::GET, "/_vod/starting.js", "").await;
    assert_eq!(js.status(), StatusCode::OK);
    assert!(body_text(js).await.contains("EventSource"));

    let events = s.fetch(&c, Method::GET, "/_vod/events", "").await;
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(20), events.into_body().collect())
        .await
        .expect("the event stream ends once ready")
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("\"state\":\"Starting\""), "{text}");
    assert!(
        text.contains("waiting for command to answer"),
        "progress is reported: {text}"
    );
    assert!(
        text.trim_end().ends_with("}") && text.contains("event: ready"),
        "{text}"
    );

    let r = s.visit(&c, "/deep/page").await;
    assert!(
        body_text(r).await.contains("upstream /deep/page"),
        "once ready, navigations reach the instance"
    );
    let (st, _) = s
        .api(
            Method::GET,
            &format!("/api/instances/{}/events", c.id),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_that_takes_too_long_fails_with_503_and_leaves_no_process() {
    let f = Fixture::new(30_000, &["--start-timeout", "1s"]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let t0 = Instant::now();
    let r = s.fetch(&c, Method::GET, "/small", "").await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(
            r.status(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY
        ),
        "{}",
        r.status()
    );
    assert!(r.headers().contains_key("retry-after"));
    s.wait_state(&c.id, "Failed", Duration::from_secs(5)).await;
    let (_, v) = s
        .api(Method::GET, &format!("/api/instances/{}", c.id), None)
        .await;
    assert!(
        v["message"].as_str().unwrap().contains("start timeout"),
        "{v}"
    );
    let pids = starts(&f.starts);
    assert_eq!(pids.len(), 1);
    wait_until(
        "the slow process to be killed",
        Duration::from_secs(10),
        || !pid_alive(pids[0]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_instance_reports_why() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let s = Server::start(
        &data,
        &[
            "--runtime",
            "command",
            "--command",
            "sh -c exit_at_once_{port}",
        ],
    );
    let c = s.create(json!({"user_id": "alice"})).await;
    let (st, v) = s
        .api(
            Method::POST,
            &format!("/api/instances/{}/start", c.id),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("process exited") && msg.contains("not found"),
        "names the exit and the output: {msg}"
    );
    assert_eq!(s.state(&c.id).await, "Failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_stop_and_the_next_visit_wakes_them() {
    let f = Fixture::new(0, &["--idle-timeout", "2s", "--reap-interval", "200ms"]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let r = s.fetch(&c, Method::GET, "/small", "").await;
    assert_eq!(body_text(r).await, "hello");

    // A program's requests are activity: kept alive past the timeout.
    for _ in 0..10 {
        let r = s.fetch(&c, Method::GET, "/small", "").await;
        assert_eq!(body_text(r).await, "hello");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        s.state(&c.id).await,
        "Running",
        "active for 5s with a 2s idle timeout"
    );

    // Silence stops it.
    let t0 = Instant::now();
    s.wait_state(&c.id, "Stopped", Duration::from_secs(6)).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "stopped too early: {:?}",
        t0.elapsed()
    );
    let (_, v) = s
        .api(Method::GET, &format!("/api/instances/{}", c.id), None)
        .await;
    assert_eq!(v["stop_reason"], "idle");
    let first = starts(&f.starts)[0];
    wait_until("the idle process to exit", Duration::from_secs(5), || {
        !pid_alive(first)
    })
    .await;

    let r = s.fetch(&c, Method::GET, "/small", "").await;
    assert_eq!(body_text(r).await, "hello", "the next visit wakes it");
    assert_eq!(starts(&f.starts).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_instances_and_workspaces_and_stops_processes() {
    let mut f = Fixture::new(0, &[]);
    let c = f
        .server
        .create(json!({"user_id": "alice", "idle_timeout": 600}))
        .await;
    let r = f
        .server
        .fetch(&c, Method::PUT, "/workspace-file?name=notes.txt", "kept")
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let pid = starts(&f.starts)[0];
    assert!(pid_alive(pid));

    let status = f.server.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!pid_alive(pid), "no instance process outlives the server");

    f.restart(&[]);
    let s = &f.server;
    let (_, v) = s
        .api(Method::GET, &format!("/api/instances/{}", c.id), None)
        .await;
    assert_eq!(v["status"], "Stopped");
    assert_eq!(v["idle_timeout"], 600);
    assert_eq!(v["stop_reason"], "shutdown");
    let r = s
        .fetch(&c, Method::GET, "/workspace-file?name=notes.txt", "")
        .await;
    assert_eq!(
        body_text(r).await,
        "kept",
        "same token, same workspace after the restart"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_orphaned_by_a_killed_server_is_cleaned_up_on_next_start() {
    let mut f = Fixture::new(0, &[]);
    let c = f.server.create(json!({"user_id": "alice"})).await;
    let r = f.server.fetch(&c, Method::GET, "/small", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    let pid = starts(&f.starts)[0];
    f.server.kill();
    assert!(
        pid_alive(pid),
        "SIGKILL gives the server no chance to clean up"
    );
    f.server = Server::start(
        &f.server.data_dir.clone(),
        &unsandboxed(&upstream_command(&f.starts, 0)),
    );
    wait_until("the orphan to be killed", Duration::from_secs(5), || {
        !pid_alive(pid)
    })
    .await;
    assert_eq!(f.server.state(&c.id).await, "Stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_the_instance_but_keeps_the_users_workspace() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let a = s.create(json!({"user_id": "alice"})).await;
    let r = s
        .fetch(
            &a,
            Method::PUT,
            "/workspace-file?name=project.txt",
            "my work",
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let pid = starts(&f.starts)[0];

    let (st, _) = s
        .api(Method::DELETE, &format!("/api/instances/{}", a.id), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(!pid_alive(pid), "delete stops the process");
    assert!(
        !s.data_dir.join("instances").join(&a.id).exists(),
        "its own files are gone"
    );
    let r = s.fetch(&a, Method::GET, "/small", "").await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "its URL no longer opens anything"
    );

    let b = s.create(json!({"user_id": "alice"})).await;
    let r = s
        .fetch(&b, Method::GET, "/workspace-file?name=project.txt", "")
        .await;
    assert_eq!(
        body_text(r).await,
        "my work",
        "a new instance of the user sees the workspace"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_start_and_stop_through_the_api() {
    let f = Fixture::new(300, &[]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let (st, v) = s
        .api(
            Method::POST,
            &format!("/api/instances/{}/start", c.id),
            None,
        )
        .await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("Running"))
    );
    let pid = starts(&f.starts)[0];
    let (st, v) = s
        .api(Method::POST, &format!("/api/instances/{}/stop", c.id), None)
        .await;
    assert_eq!(
        (st, v["status"].as_str(), v["stop_reason"].as_str()),
        (StatusCode::OK, Some("Stopped"), Some("api"))
    );
    assert!(!pid_alive(pid));
    let (st, v) = s.api(Method::GET, "/api/workspaces/alice", None).await;
    assert_eq!(
        (st, v["active_instances"].as_u64()),
        (StatusCode::OK, Some(0))
    );
}

#[tokio::test]
async fn a_torn_metadata_file_is_set_aside_and_the_rest_start() {
    let mut f = Fixture::new(0, &[]);
    let c = f.server.create(json!({"user_id": "alice"})).await;
    let status = f.server.terminate();
    assert!(status.success(), "{status}");
    let instances = f.server.data_dir.join("instances");
    let torn = instances.join("bob-0000000a.json");
    std::fs::write(&torn, br#"{"instance_id": "bob-0000000a", "user_"#).unwrap();

    f.restart(&[]);
    let s = &f.server;
    let (status, v) = s.api(Method::GET, "/api/instances", None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["instance_id"].as_str())
        .collect();
    assert_eq!(ids, [c.id.as_str()], "the intact instance is there");
    assert!(!torn.exists());
    assert_eq!(
        std::fs::read(instances.join("bob-0000000a.json.corrupt")).unwrap(),
        br#"{"instance_id": "bob-0000000a", "user_"#,
        "kept as it was, for a person to look at"
    );
    let log = std::fs::read_to_string(s.data_dir.with_extension("server.log")).unwrap();
    assert!(log.contains("instance metadata does not parse"), "{log}");
}
