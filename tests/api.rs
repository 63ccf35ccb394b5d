//! The management API contract on a real server over TLS: routes, fields, auth, and the table
//! of bad inputs that must be refused with a 4xx that says what to fix, creating nothing.

use http::{Method, StatusCode};
use serde_json::json;
use vod_testkit::*;

#[tokio::test]
async fn health_and_banner_need_no_token_everything_else_does() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    for path in ["/api/health", "/api/"] {
        let resp = s
            .send(
                s.request(Method::GET, path)
                    .body(Default::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let no_token = s
        .send(
            s.request(Method::GET, "/api/instances")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(no_token.headers()["www-authenticate"], "Bearer");
    let v = body_json(no_token).await;
    assert_eq!(v["error"], "unauthorized");
    assert!(v["message"].as_str().unwrap().contains("Bearer"));

    let wrong = s
        .send(
            s.request(Method::GET, "/api/instances")
                .header("authorization", "Bearer not-the-token")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn create_list_get_status_workspace_delete() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let c = s
        .create(json!({"user_id": "user1", "base_image": "mcr.microsoft.com/devcontainers/python:1-3.12", "memory_limit": "2Gi", "cpu_limit": "1000m"}))
        .await;
    assert!(
        c.id.starts_with("user1-") && c.id.len() == "user1-".len() + 8,
        "{}",
        c.id
    );
    assert_eq!(c.token.len(), 64, "256-bit token");
    assert_eq!(
        c.url,
        format!("{}/instances/{}/?tkn={}", s.origin_of(&c.id), c.id, c.token)
    );
    assert_eq!(c.body["status"], "Stopped");
    assert_eq!(
        c.body["base_image"],
        "mcr.microsoft.com/devcontainers/python:1-3.12"
    );
    assert_eq!(c.body["user_id"], "user1");
    let other = s.create(json!({"user_id": "user2"})).await;

    let (st, v) = s
        .api(Method::GET, "/api/instances?user_id=user1", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let ids: Vec<_> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![c.id.as_str()]);
    let (_, all) = s.api(Method::GET, "/api/instances", None).await;
    assert_eq!(all["instances"].as_array().unwrap().len(), 2);

    let (st, v) = s
        .api(Method::GET, &format!("/api/instances/{}", c.id), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["instance_id"], c.id.as_str());
    assert!(
        v.get("access_token").is_none(),
        "the token is only shown at creation"
    );
    assert!(!v["url"].as_str().unwrap().contains("tkn="));

    let (st, v) = s
        .api(
            Method::GET,
            &format!("/api/status?instance_id={}", c.id),
            None,
        )
        .await;
    assert_eq!(
        (st, v),
        (
            StatusCode::OK,
            json!({"instance_id": c.id, "status": "Stopped"})
        )
    );

    let (st, v) = s.api(Method::GET, "/api/workspaces/user1", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["workspace_exists"], true);
    assert_eq!(v["active_instances"], 0);
    assert_eq!(v["instances"], json!([c.id]));
    let (_, v) = s.api(Method::GET, "/api/workspaces/nobody", None).await;
    assert_eq!(v["workspace_exists"], false);

    let (st, v) = s
        .api(Method::DELETE, &format!("/api/instances/{}", c.id), None)
        .await;
    assert_eq!(
        (st, v),
        (
            StatusCode::OK,
            json!({"instance_id": c.id, "status": "Deleted"})
        )
    );
    let (st, v) = s
        .api(Method::GET, &format!("/api/instances/{}", c.id), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "not_found");
    let (st, _) = s
        .api(Method::DELETE, &format!("/api/instances/{}", c.id), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .api(Method::GET, &format!("/api/instances/{}", other.id), None)
        .await;
    assert_eq!(
        st,
        StatusCode::OK,
        "deleting one instance leaves the others"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_what_to_fix_and_nothing_is_created() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let table = [
        (json!({}), "invalid_json", "user_id"),
        (json!({"user_id": "Alice"}), "invalid_user_id", "lowercase"),
        (json!({"user_id": "a_b"}), "invalid_user_id", "lowercase"),
        (
            json!({"user_id": "a".repeat(41)}),
            "invalid_user_id",
            "1-40",
        ),
        (json!({"user_id": "-x"}), "invalid_user_id", "starting"),
        (
            json!({"user_id": "u", "base_image": "Ubuntu:24.04"}),
            "invalid_base_image",
            "lowercase",
        ),
        (
            json!({"user_id": "u", "base_image": "ubuntu:"}),
            "invalid_base_image",
            "tag",
        ),
        (
            json!({"user_id": "u", "base_image": "a b"}),
            "invalid_base_image",
            "image reference",
        ),
        (
            json!({"user_id": "u", "vscode_version": "newest"}),
            "invalid_vscode_version",
            "1.97.2",
        ),
        (
            json!({"user_id": "u", "storage_size": "5 GB"}),
            "invalid_storage_size",
            "Gi",
        ),
        (
            json!({"user_id": "u", "memory_limit": "lots"}),
            "invalid_memory_limit",
            "Gi",
        ),
        (
            json!({"user_id": "u", "cpu_limit": "2Gi"}),
            "invalid_cpu_limit",
            "millicores",
        ),
        (
            json!({"user_id": "u", "memory_request": "4Gi", "memory_limit": "2Gi"}),
            "invalid_memory_request",
            "limit",
        ),
        (
            json!({"user_id": "u", "cpu_request": "2", "cpu_limit": "500m"}),
            "invalid_cpu_request",
            "limit",
        ),
        (
            json!({"user_id": "u", "idle_timeout": 0}),
            "invalid_idle_timeout",
            "between",
        ),
        (
            json!({"user_id": "u", "colour": "blue"}),
            "invalid_json",
            "unknown field",
        ),
        (json!({"user_id": 7}), "invalid_json", "string"),
        (json!(["user_id"]), "invalid_json", "create request"),
    ];
    for (body, code, hint) in table {
        let (st, v) = s
            .api(Method::POST, "/api/instances", Some(body.clone()))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body} → {v}");
        assert_eq!(v["error"], code, "{body} → {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains(hint),
            "{body}: message {msg:?} should mention {hint:?}"
        );
    }

    let raw = |ct: &'static str, body: String| {
        s.request(Method::POST, "/api/instances")
            .header("authorization", format!("Bearer {}", s.token))
            .header("content-type", ct)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    let r = s.send(raw("application/json", "{not json".into())).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s.send(raw("text/plain", r#"{"user_id":"u"}"#.into())).await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = s
        .send(raw(
            "application/json",
            format!(r#"{{"user_id":"{}"}}"#, "a".repeat(100_000)),
        ))
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    for (method, path, want) in [
        (
            Method::GET,
            "/api/instances/not-an-id",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/instances/u-00000000",
            StatusCode::NOT_FOUND,
        ),
        (Method::GET, "/api/status", StatusCode::BAD_REQUEST),
        (
            Method::GET,
            "/api/instances?user_id=Bad_User",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/workspaces/Bad_User",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/api/instances",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::GET,
            "/api/instances/u-00000000/start",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (Method::GET, "/api/nothing-here", StatusCode::NOT_FOUND),
    ] {
        let (st, v) = s.api(method.clone(), path, None).await;
        assert_eq!(st, want, "{method} {path} → {v}");
        assert!(
            v["error"].is_string() && v["message"].is_string(),
            "{method} {path} → {v}"
        );
    }

    let (_, v) = s.api(Method::GET, "/api/instances", None).await;
    assert_eq!(v["instances"], json!([]), "no bad request created anything");
    let files: Vec<_> = std::fs::read_dir(s.data_dir.join("instances"))
        .unwrap()
        .collect();
    assert!(files.is_empty(), "no instance files: {files:?}");
}

#[tokio::test]
async fn client_subcommands_find_the_local_server_and_fail_clearly() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let data = s.data_dir.to_str().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(product())
            .args(args)
            .args(["--data-dir", data])
            .output()
            .unwrap()
    };
    let out = run(&["create", "--user-id", "cli-user", "--memory-limit", "2Gi"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Instance ID") && text.contains("?tkn="),
        "{text}"
    );
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("Instance ID"))
        .unwrap()
        .trim()
        .to_owned();

    let out = run(&["list", "--user-id", "cli-user"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let out = run(&["status", "--instance-id", &id]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{id}: Stopped")
    );
    let out = run(&["start", "--instance-id", &id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{id}: Running")
    );
    let out = run(&["get", "--instance-id", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "Running");
    let out = run(&["stop", "--instance-id", &id]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{id}: Stopped")
    );
    let out = run(&["delete", "--instance-id", &id]);
    assert!(out.status.success());

    let out = run(&["get", "--instance-id", &id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    let out = run(&["create", "--user-id", "Bad User"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a valid user id"),
        "{out:?}"
    );
    let out = std::process::Command::new(product())
        .args([
            "list",
            "--data-dir",
            data,
            "--token",
            "wrong-token-wrong-token",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
}

#[tokio::test]
async fn the_admin_token_is_shown_once_and_responses_ask_for_https() {
    let mut f = Fixture::new(0, &[]);
    let token = f.server.token.clone();
    assert!(
        f.server.stdout.iter().any(|l| l.contains(&token)),
        "shown when generated: {:?}",
        f.server.stdout
    );
    let r = f
        .server
        .send(
            f.server
                .request(Method::GET, "/api/health")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    f.restart(&[]);
    assert!(
        !f.server.stdout.iter().any(|l| l.contains(&token)),
        "not shown again: {:?}",
        f.server.stdout
    );
    assert!(f
        .server
        .stdout
        .iter()
        .any(|l| l.contains("API token:  in ")));
}
