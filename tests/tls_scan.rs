//! The TLS scan an auditor would run against the front door: sslyze (from
//! `scripts/install-test-deps.sh`) checks the running server against Mozilla's "intermediate"
//! configuration, on the public host and on an instance's own host (a certificate minted at the
//! handshake), trusting the server's CA as a user who installed it does.

use serde_json::json;
use std::path::PathBuf;
use vod_testkit::bins::cache_dir;
use vod_testkit::*;

fn sslyze() -> PathBuf {
    let path = std::env::var_os("VOD_TEST_SSLYZE")
        .map_or_else(|| cache_dir().join("sslyze/bin/sslyze"), PathBuf::from);
    assert!(
        path.exists(),
        "sslyze not found at {} (set VOD_TEST_SSLYZE to override); run \
         scripts/install-test-deps.sh and export the variables it prints",
        path.display()
    );
    path
}

/// Scans `host` (sent as SNI, connected on the server's address); the scan's report on failure.
async fn scan(s: &Server, host: &str) {
    let target = format!("{host}:{}{{{}}}", s.addr.port(), s.addr.ip());
    let out = tokio::process::Command::new(sslyze())
        .arg("--mozilla_config=intermediate")
        .arg("--certinfo_ca_file")
        .arg(s.data_dir.join("certs/ca.crt"))
        .arg(&target)
        .output()
        .await
        .expect("sslyze runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("OK - Compliant"),
        "{target} is not compliant with Mozilla's intermediate configuration ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn public_and_instance_hosts_pass_mozillas_intermediate_configuration() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    assert!(
        s.host_routing,
        "the embedded default serves instances on hosts of their own"
    );
    scan(s, "localhost").await;
    let c = s.create(json!({"user_id": "alice"})).await;
    scan(s, &format!("{}.localhost", c.id)).await;
}
