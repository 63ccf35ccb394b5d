//! The console at `/` in headless Chromium (`tests/e2e/console.js`) against a real server whose
//! instances are the test kit's upstream stand-in (it starts in a second, so the row's
//! Starting is visible, and the opened tab's starting page): sign in, create, open, stop,
//! delete, a wrong token and a refused field. Screenshots are kept in a temporary directory of their own, whose path is printed.

use http::Method;
use std::path::Path;
use std::time::Duration;
use vod_testkit::browser::{run_script, Deps};
use vod_testkit::*;

#[tokio::test]
async fn sign_in_create_open_stop_delete_in_a_browser() {
    let deps = Deps::find();
    let f = Fixture::new(1500, &[]);
    let s = &f.server;
    // Kept after the test, as its artifacts.
    let shots = tempdir().keep().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    // The page is served with a strict policy: no inline script, nothing from elsewhere.
    let resp = s
        .send(
            s.request(Method::GET, "/")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!body_text(resp).await.contains("<script>"));

    let run = run_script(
        &deps,
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/console.js")),
        &[
            ("VOD_E2E_API", s.base.clone()),
            ("VOD_E2E_ADMIN_TOKEN", s.token.clone()),
            ("VOD_E2E_SCREENSHOTS", shots.display().to_string()),
        ],
        Duration::from_secs(150),
    )
    .await;
    println!("screenshots: {}", shots.display());
    assert!(
        run.success && run.result.as_ref().is_some_and(|r| r["ok"] == true),
        "the browser script failed.\nits output: {}\nserver log:\n{}",
        run.stdout,
        log_tail(&s.data_dir.with_extension("server.log"), 40),
    );
    let r = run.result.unwrap();
    assert!(
        r["wrong_token_message"].as_str().unwrap().contains("wrong"),
        "{r}"
    );
    assert!(
        r["stored_after_wrong"].is_null(),
        "a refused token is not kept: {r}"
    );
    assert_eq!(
        r["cookies"],
        serde_json::json!([]),
        "the token never becomes a cookie"
    );
    assert!(!r["url_after_signin"].as_str().unwrap().contains(&s.token));
    assert!(r["field_error"].as_str().unwrap().contains("memory"), "{r}");
    assert_eq!(r["field_invalid"], "true");
    let seen: Vec<&str> = r["seen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        seen.contains(&"Starting") && seen.contains(&"Running"),
        "{seen:?}"
    );
    assert!(
        r["starting_page"]
            .as_str()
            .unwrap()
            .contains("Starting VS Code"),
        "{r}"
    );
    assert_eq!(r["stop_reason"], "api");
    assert_eq!(r["csp_errors"], serde_json::json!([]), "{r}");
    let (_, v) = s.api(Method::GET, "/api/instances", None).await;
    assert_eq!(v["instances"], serde_json::json!([]), "deleted");
}
