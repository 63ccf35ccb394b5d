//! A hung instance does not hold its clients: a response head that does not come within
//! `--upstream-response-timeout` is answered 504 (a page for a browser loading one), and the
//! proxy goes on serving.

use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::json;
use std::time::Duration;
use vod_testkit::*;

/// An instance that answers `/` at once and never answers `/hang`, keeping connections alive
/// (so a hung request can come on a connection whose deadline served earlier requests).
const HUNG: &str = r#"
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        if self.path.endswith('/hang'):
            time.sleep(3600)
        self.send_response(200)
        self.send_header('Content-Length', '2')
        self.end_headers()
        self.wfile.write(b'ok')
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

#[tokio::test]
async fn a_hung_instance_is_answered_504_and_the_rest_goes_on() {
    let dir = tempdir();
    let s = python_instances(dir.path(), HUNG, &["--upstream-response-timeout", "1s"]);
    let c = s.create(json!({"user_id": "alice"})).await;
    let get = |rest: &str, navigation: bool| {
        let mut b = s
            .request(Method::GET, &format!("/instances/{}{rest}", c.id))
            .header("cookie", s.cookie(&c.token));
        if navigation {
            b = b
                .header("sec-fetch-mode", "navigate")
                .header("accept", "text/html");
        }
        b.body(Full::default()).unwrap()
    };
    for _ in 0..3 {
        let r = s.send(get("/", false)).await;
        assert_eq!(r.status(), StatusCode::OK, "the instance runs");
    }

    let bounded = Duration::from_secs(30);
    let r = tokio::time::timeout(bounded, s.send(get("/hang", false)))
        .await
        .expect("answered, not held");
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(body_json(r).await["error"], "upstream_timeout");

    let r = tokio::time::timeout(bounded, s.send(get("/page/hang", true)))
        .await
        .expect("answered, not held");
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(body_text(r).await.contains("did not answer in time"));

    let r = s.send(get("/", false)).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "other requests are still served"
    );
}
