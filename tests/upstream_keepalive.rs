//! Connections to an instance: kept alive and reused between requests, but not past the
//! instance's keep-alive timeout. A server whose keep-alive timer fires just as the proxy
//! writes a request to the idle connection closes it unanswered (Node, which VS Code's servers
//! run on, closes after `Keep-Alive: timeout=5`); the request cannot be sent again, so reusing
//! such a connection would answer the user 502. A connection the instance breaks in the middle
//! of a response ends that response, and the next request is served.

use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::json;
use std::time::Duration;
use vod_testkit::client::send_http1;
use vod_testkit::*;

/// An instance that says `Keep-Alive: timeout=2` and closes, unanswered, a connection that
/// receives a request after being idle longer than that: the crossing above, every time. Each
/// answer names the connection it came on.
const STRICT: &str = r#"
import socket, sys, threading, time
count = 0
def serve(c, n):
    f = c.makefile('rb')
    last = None
    while True:
        line = f.readline()
        if not line:
            break
        while line not in (b'\r\n', b'\n', b''):
            line = f.readline()
        if last is not None and time.monotonic() - last > 2.0:
            break
        body = b'connection %d' % n
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nKeep-Alive: timeout=2\r\n\r\n%s' % (len(body), body))
        last = time.monotonic()
    c.close()
"#;

#[tokio::test]
async fn a_connection_idle_past_the_instances_keep_alive_is_not_reused() {
    let dir = tempdir();
    let s = python_instances(dir.path(), &python_socket_instance(STRICT), &[]);
    let c = s.create(json!({"user_id": "alice"})).await;
    let get = || {
        s.request(Method::GET, &format!("/instances/{}/", c.id))
            .header("cookie", s.cookie(&c.token))
            .body(Full::default())
            .unwrap()
    };
    let r = s.send(get()).await;
    assert_eq!(r.status(), StatusCode::OK, "the instance runs");
    let first = body_text(r).await;

    // Past the instance's keep-alive: the connection the proxy kept would be closed on it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = s.send(get()).await;
    let status = r.status();
    let second = body_text(r).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a request after the instance's keep-alive timeout is answered: {second}\nserver log:\n{}",
        log_tail(&s.data_dir.with_extension("server.log"), 20),
    );
    assert_ne!(first, second, "it came on a new connection");
}

/// An instance that answers `/` with the connection it came on (no `Keep-Alive` header, so
/// the proxy's own reuse window applies) and `/cut` with the head and part of a body, after
/// which it closes the connection.
const CUTTING: &str = r#"
import socket, sys, threading
count = 0
def serve(c, n):
    f = c.makefile('rb')
    while True:
        line = f.readline()
        if not line:
            break
        path = line.split()[1]
        while line not in (b'\r\n', b'\n', b''):
            line = f.readline()
        if path.endswith(b'/cut'):
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n' + b'x' * 1000)
            break
        body = b'connection %d' % n
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body))
    c.close()
"#;

#[tokio::test]
async fn connections_are_reused_and_one_broken_mid_response_ends_only_that_response() {
    let dir = tempdir();
    let s = python_instances(dir.path(), &python_socket_instance(CUTTING), &[]);
    let c = s.create(json!({"user_id": "alice"})).await;
    let get = |rest: &str| {
        s.request(Method::GET, &format!("/instances/{}/{rest}", c.id))
            .header("cookie", s.cookie(&c.token))
            .body(Full::default())
            .unwrap()
    };
    let r = s.send(get("")).await;
    assert_eq!(r.status(), StatusCode::OK, "the instance runs");
    let first = body_text(r).await;
    let r = s.send(get("")).await;
    assert_eq!(
        body_text(r).await,
        first,
        "the next request reuses the connection"
    );

    // The response fails when the instance breaks the connection, rather than being held: the
    // client gets its head and then a body cut short, or, when the break came as the head was
    // being sent, no response on a closed connection.
    let cut = async {
        let io = hyper_util::rt::TokioIo::new(s.connect(b"http/1.1").await);
        let (r, _conn) = send_http1(io, get("cut")).await?;
        assert_eq!(r.status(), StatusCode::OK);
        http_body_util::BodyExt::collect(r.into_body()).await
    };
    let read = tokio::time::timeout(Duration::from_secs(60), cut)
        .await
        .expect("a response the instance broke off ends");
    assert!(read.is_err(), "the client sees the response was cut short");

    let r = s.send(get("")).await;
    assert_eq!(r.status(), StatusCode::OK, "the next request is served");
    let after = body_text(r).await;
    assert!(after.starts_with("connection "), "{after}");
}

/// An instance that answers a POST at once, 413, before reading its body, and then reads and
/// drops the body before the next request, as Node does; anything else is answered with the
/// connection it came on.
const EARLY: &str = r#"
import socket, sys, threading
count = 0
def serve(c, n):
    f = c.makefile('rb')
    while True:
        line = f.readline()
        if not line:
            break
        length = 0
        h = f.readline()
        while h not in (b'\r\n', b'\n', b''):
            k, _, v = h.partition(b':')
            if k.strip().lower() == b'content-length':
                length = int(v)
            h = f.readline()
        if line.startswith(b'POST'):
            c.sendall(b'HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n')
        else:
            body = b'connection %d' % n
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s' % (len(body), body))
        while length > 0:
            chunk = f.read1(min(length, 65536))
            if not chunk:
                break
            length -= len(chunk)
    c.close()
"#;

/// A request body that sends its first 64 KiB of the length it announced, and then nothing:
/// an upload in progress.
struct StalledUpload {
    sent: bool,
}

impl http_body::Body for StalledUpload {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if std::mem::replace(&mut self.sent, true) {
            return std::task::Poll::Pending;
        }
        let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

#[tokio::test]
async fn an_upload_the_instance_answered_early_does_not_hold_the_next_request() {
    let dir = tempdir();
    // Long enough that a request waiting for the stalled upload fails the test, not this.
    let s = python_instances(
        dir.path(),
        &python_socket_instance(EARLY),
        &["--upstream-response-timeout", "30s"],
    );
    let c = s.create(json!({"user_id": "alice"})).await;
    let get = || {
        s.request(Method::GET, &format!("/instances/{}/", c.id))
            .header("cookie", s.cookie(&c.token))
            .body(Full::default())
            .unwrap()
    };
    let r = s.send(get()).await;
    assert_eq!(r.status(), StatusCode::OK, "the instance runs");

    let upload = s
        .request(Method::POST, &format!("/instances/{}/upload", c.id))
        .header("cookie", s.cookie(&c.token))
        .header("content-length", 64 * 1024 * 1024)
        .body(StalledUpload { sent: false })
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(s.connect(b"http/1.1").await);
    let (r, _uploading) = send_http1(io, upload).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "answered early");

    // The upload is still open: the connection it went over must not be this one's.
    let r = s.send(get()).await;
    let status = r.status();
    let text = body_text(r).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the next request is served at once: {text}\nserver log:\n{}",
        log_tail(&s.data_dir.with_extension("server.log"), 20),
    );
}
