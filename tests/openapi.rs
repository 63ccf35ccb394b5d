//! The API document (`GET /api/openapi.json`) against the running server: every documented
//! operation is called, on its happy path and its failures, and each answer's status must be
//! documented and its body must match the documented schema; then schemathesis (from
//! `scripts/install-test-deps.sh`) generates requests from the document and must find no 5xx
//! and nothing undocumented.

use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use vod_testkit::bins::cache_dir;
use vod_testkit::*;

/// Resolves a local `$ref`.
fn deref<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    match s["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            deref(doc, &doc["components"]["schemas"][name])
        }
        None => s,
    }
}

/// Checks `v` against the subset of JSON Schema the document uses; the first mismatch.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = deref(doc, schema);
    if let Some(all) = s["allOf"].as_array() {
        for sub in all {
            check(doc, sub, v, at)?;
        }
    }
    if let Some(one) = s["oneOf"].as_array() {
        let ok = one
            .iter()
            .filter(|sub| check(doc, sub, v, at).is_ok())
            .count();
        if ok != 1 {
            return Err(format!("{at}: {v} matches {ok} of oneOf"));
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            t => vec![t.as_str().unwrap_or_default()],
        };
        let ok = types.iter().any(|t| match *t {
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {v} is not {types:?}"));
        }
    }
    if let Some(e) = s["enum"].as_array() {
        if !e.contains(v) {
            return Err(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for r in s["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                return Err(format!("{at}: required field {r} is missing in {v}"));
            }
        }
        if let Some(props) = s["properties"].as_object() {
            for (k, sub) in props {
                if let Some(x) = obj.get(k) {
                    check(doc, sub, x, &format!("{at}.{k}"))?;
                }
            }
        }
    }
    if let (Some(items), Some(a)) = (s.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            check(doc, items, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Calls `method path` (token or not) and checks the answer against the document.
async fn call_checked(
    s: &Server,
    doc: &Value,
    (template, method): (&str, &str),
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut b = s.request(m, path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let resp = s.send(b.body(body.into()).unwrap()).await;
    let status = resp.status();
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let text = body_text(resp).await;
    let op = &doc["paths"][template][method];
    let documented = &op["responses"][status.as_str()];
    assert!(
        documented.is_object(),
        "{method} {path} answered {status}, which {template} does not document: {text}"
    );
    let content = &documented["content"];
    assert!(
        content[&ctype].is_object(),
        "{method} {path}: content type {ctype} is not documented for {status}: {content}"
    );
    let v = if ctype == "application/json" {
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        if let Some(schema) = content[&ctype].get("schema") {
            check(doc, schema, &v, "$")
                .unwrap_or_else(|e| panic!("{method} {path} ({status}): {e}"));
        }
        v
    } else {
        Value::String(text)
    };
    (status, v)
}

async fn document(s: &Server) -> Value {
    let resp = s
        .send(
            s.request(Method::GET, "/api/openapi.json")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "the document needs no token");
    body_json(resp).await
}

#[tokio::test]
async fn every_documented_route_answers_as_documented() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let doc = document(s).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let ops: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (p.clone(), m.clone()))
        })
        .collect();
    // Every route the router knows, and nothing else.
    let mut names: Vec<String> = ops.iter().map(|(p, m)| format!("{m} {p}")).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "delete /api/instances/{id}",
            "get /api/",
            "get /api/health",
            "get /api/instances",
            "get /api/instances/{id}",
            "get /api/instances/{id}/events",
            "get /api/openapi.json",
            "get /api/status",
            "get /api/workspaces/{user}",
            "post /api/instances",
            "post /api/instances/{id}/keepalive",
            "post /api/instances/{id}/start",
            "post /api/instances/{id}/stop",
            "post /api/instances/{id}/token",
        ]
    );

    let t = Some(s.token.as_str());
    let (st, created) = call_checked(
        s,
        &doc,
        ("/api/instances", "post"),
        "/api/instances",
        t,
        Some(json!({"user_id": "alice", "idle_timeout": 600})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let id = created["instance_id"].as_str().unwrap().to_owned();
    let ok = |p: &str| p.replace("{id}", &id).replace("{user}", "alice");
    // The happy path of each operation, in an order where each has what it needs.
    let happy: &[(&str, &str, Option<Value>, &str)] = &[
        ("/api/", "get", None, ""),
        ("/api/health", "get", None, ""),
        ("/api/openapi.json", "get", None, ""),
        ("/api/instances", "get", None, "?user_id=alice"),
        ("/api/instances/{id}", "get", None, ""),
        ("/api/status", "get", None, "?instance_id={id}"),
        ("/api/workspaces/{user}", "get", None, ""),
        ("/api/instances/{id}/start", "post", None, ""),
        ("/api/instances/{id}/events", "get", None, ""),
        ("/api/instances/{id}/keepalive", "post", Some(json!({})), ""),
        ("/api/instances/{id}/token", "post", None, ""),
        ("/api/instances/{id}/stop", "post", None, ""),
        ("/api/instances/{id}", "delete", None, ""),
    ];
    for (tpl, m, body, q) in happy {
        let path = ok(&format!("{tpl}{q}"));
        let (st, v) = call_checked(s, &doc, (tpl, m), &path, t, body.clone()).await;
        assert!(st.is_success(), "{m} {path}: {st} {v}");
    }
    // Failures: no token, an unknown instance, an id that cannot be one, a bad body.
    for (tpl, m) in &ops {
        let secured = doc["paths"][tpl][m]["security"].is_array();
        let path = ok(tpl);
        let (st, v) = call_checked(s, &doc, (tpl, m), &path, None, None).await;
        if secured {
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{m} {path}: {v}");
            assert_eq!(v["error"], "unauthorized");
        }
        if tpl.contains("{id}") {
            let gone = tpl.replace("{id}", "nobody-00000000");
            let (st, _) = call_checked(s, &doc, (tpl, m), &gone, t, None).await;
            assert_eq!(st, StatusCode::NOT_FOUND, "{m} {gone}");
            let bad = tpl.replace("{id}", "NOT_AN_ID");
            let (st, v) = call_checked(s, &doc, (tpl, m), &bad, t, None).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{m} {bad}");
            assert_eq!(v["error"], "invalid_instance_id");
        }
    }
    let (st, v) = call_checked(
        s,
        &doc,
        ("/api/instances", "post"),
        "/api/instances",
        t,
        Some(json!({"user_id": "alice", "memory_limit": "lots"})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"], "invalid_memory_limit", "{v}");
    let (st, _) = call_checked(s, &doc, ("/api/status", "get"), "/api/status", t, None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("VOD_TEST_SCHEMATHESIS").map_or_else(
        || cache_dir().join("schemathesis/bin/schemathesis"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "schemathesis not found at {} (set VOD_TEST_SCHEMATHESIS to override); run \
         scripts/install-test-deps.sh and export the variables it prints",
        path.display()
    );
    path
}

/// Runs schemathesis against `s` with `args`; its output on failure.
async fn run_schemathesis(s: &Server, report: &std::path::Path, args: &[&str]) {
    let out = tokio::process::Command::new(schemathesis())
        .arg("run")
        .arg(format!("{}/api/openapi.json", s.base))
        .args(["--max-examples", "40", "--seed", "1", "--workers", "2"])
        .args(["--request-timeout", "20", "--suppress-health-check", "all"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", s.token))
        .arg("--tls-verify")
        .arg(s.data_dir.join("certs/ca.crt"))
        .args(["--report", "junit", "--report-dir"])
        .arg(report)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("schemathesis {args:?}: report in {}", report.display());
    assert!(
        out.status.success(),
        "schemathesis {args:?} found problems ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_nothing_undocumented() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let report = f.dir.path().join("schemathesis");
    // Every check on every operation but create.
    run_schemathesis(
        s,
        &report,
        &["--checks", "all", "--exclude-operation-id", "create"],
    )
    .await;
    // Create, without the check that any schema-valid body is accepted: a request above
    // its limit (memory, CPU) or a notice longer than the idle timeout are refused with
    // `invalid_<field>`, and a schema cannot relate two fields.
    run_schemathesis(
        s,
        &report,
        &[
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--include-operation-id",
            "create",
        ],
    )
    .await;
}
