//! HTTP/1.1 between the proxy and an instance, as an instance may speak it: every way a
//! response body can end (a length, chunked coding with extensions and trailers, the end of the
//! connection, no body after HEAD, 204 or interim responses), each leaving the connection
//! reusable or not as the response says; malformed responses answered 502 rather than passed
//! on; and request bodies framed for the instance by what the client sent.

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use serde_json::json;
use vod_testkit::client::send_http1;
use vod_testkit::*;

/// `serve` for an instance ([`python_socket_instance`]) that answers from a table of raw
/// responses by path. `/echo` answers with the
/// connection's number and the request exactly as it arrived (head and decoded body); `/close`
/// answers in HTTP/1.0 without a length and closes; any other path (the readiness probe's) is
/// answered `ok`.
const RAW: &str = r#"
import socket, sys, threading
count = 0
huge = b''.join(b'x-h%d: %s\r\n' % (i, b'v' * 1000) for i in range(70))
RESPONSES = {
    '/chunked': b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'
                b'5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nx-checksum: 1\r\n\r\n',
    '/interim': b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n'
                b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal',
    '/no-content': b'HTTP/1.1 204 No Content\r\n\r\n',
    '/head': b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n',
    '/both': b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n'
             b'6\r\nchunks\r\n0\r\n\r\n',
    '/two-lengths': b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd',
    '/huge-head': b'HTTP/1.1 200 OK\r\n' + huge + b'Content-Length: 0\r\n\r\n',
    '/garbage': b'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n',
}
def serve(c, n):
    f = c.makefile('rb')
    while True:
        line = f.readline()
        if not line:
            break
        path = line.split(b' ')[1].decode()
        head, length, chunked = [line], 0, False
        while True:
            h = f.readline()
            head.append(h)
            if h in (b'\r\n', b''):
                break
            k, _, v = h.partition(b':')
            if k.strip().lower() == b'content-length':
                length = int(v)
            if k.strip().lower() == b'transfer-encoding':
                chunked = v.strip().lower() == b'chunked'
        body = b''
        if chunked:
            while True:
                size = int(f.readline().split(b';')[0], 16)
                if size == 0:
                    while f.readline() not in (b'\r\n', b''):
                        pass
                    break
                body += f.read(size)
                f.readline()
        else:
            body = f.read(length)
        if path == '/close':
            c.sendall(b'HTTP/1.0 200 OK\r\n\r\nuntil close on connection %d' % n)
            break
        if path == '/echo':
            text = b'connection %d\n' % n + b''.join(head) + body
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s' % (len(text), text))
        else:
            c.sendall(RESPONSES.get(path, b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'))
    c.close()
"#;

/// The request line, headers and body the instance received, and the connection's number.
struct Seen {
    connection: String,
    text: String,
}

async fn echo(s: &Server, c: &Created) -> Seen {
    let r = s.fetch(c, Method::GET, "/echo", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = body_text(r).await;
    let connection = text.lines().next().unwrap_or_default().to_owned();
    Seen { connection, text }
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_and_the_connection_is_reused_as_it_says() {
    let dir = tempdir();
    let s = python_instances(dir.path(), &python_socket_instance(RAW), &[]);
    let c = s.create(json!({"user_id": "alice"})).await;
    let first = echo(&s, &c).await.connection;
    assert_eq!(
        echo(&s, &c).await.connection,
        first,
        "kept alive and reused"
    );

    // Bodies that end by their framing leave the connection to the next request.
    let r = s.fetch(&c, Method::GET, "/chunked", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_text(r).await, "hello, world", "chunks decoded");
    assert_eq!(echo(&s, &c).await.connection, first, "reused after chunks");

    let r = s.fetch(&c, Method::HEAD, "/head", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"],
        "1000",
        "HEAD keeps the length"
    );
    assert_eq!(body_text(r).await, "");
    assert_eq!(echo(&s, &c).await.connection, first, "reused after HEAD");

    let r = s.fetch(&c, Method::GET, "/no-content", "").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(echo(&s, &c).await.connection, first, "reused after 204");

    let r = s.fetch(&c, Method::GET, "/interim", "").await;
    assert_eq!(r.status(), StatusCode::OK, "interim responses passed over");
    assert_eq!(body_text(r).await, "final");
    assert_eq!(echo(&s, &c).await.connection, first, "reused after 1xx");

    // A body that ends with the connection is whole, and the next request takes another.
    let r = s.fetch(&c, Method::GET, "/close", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        body_text(r).await,
        format!("until close on {first}"),
        "read to the end of the connection"
    );
    let second = echo(&s, &c).await.connection;
    assert_ne!(second, first, "a closed connection is not reused");

    // A length beside chunked coding is not the body's: the decoded body goes on without it,
    // and a connection whose framing was in doubt is not reused.
    let r = s.fetch(&c, Method::GET, "/both", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_ne!(
        r.headers().get("content-length").map(|v| v.as_bytes()),
        Some(&b"3"[..]),
        "the instance's wrong length does not reach the client"
    );
    assert_eq!(body_text(r).await, "chunks");
    assert_ne!(echo(&s, &c).await.connection, second, "not reused");

    // Malformed responses are the instance's failure, and say so.
    for (path, why) in [
        ("/two-lengths", "content-length"),
        ("/huge-head", "too large"),
        ("/garbage", "malformed response head"),
    ] {
        let r = s.fetch(&c, Method::GET, path, "").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{path}");
        let text = body_text(r).await;
        assert!(text.contains(why), "{path}: {text}");
    }
    let after = echo(&s, &c).await;
    assert!(after.text.starts_with("connection "), "{}", after.text);
}

#[tokio::test]
async fn request_bodies_are_framed_for_the_instance_by_what_the_client_sent() {
    let dir = tempdir();
    let s = python_instances(dir.path(), &python_socket_instance(RAW), &[]);
    let c = s.create(json!({"user_id": "alice"})).await;
    let path = format!("/instances/{}/echo", c.id);

    let r = s.fetch(&c, Method::POST, "/echo", "abc").await;
    let text = body_text(r).await;
    assert!(text.contains("content-length: 3\r\n"), "{text}");
    assert_eq!(
        text.matches("content-length").count(),
        1,
        "ours only: {text}"
    );
    assert!(text.ends_with("\r\n\r\nabc"), "{text}");

    let r = s.fetch(&c, Method::POST, "/echo", "").await;
    let text = body_text(r).await;
    assert!(
        text.contains("content-length: 0\r\n"),
        "an empty POST says so: {text}"
    );

    let text = echo(&s, &c).await.text;
    assert!(
        !text.contains("content-length") && !text.contains("transfer-encoding"),
        "a GET carries no framing: {text}"
    );

    // A body of unknown length (chunked from the client) goes on chunked, whole.
    let parts = ["first part, ", "second part"].map(|p| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(p.as_bytes())))
    });
    let req = s
        .request(Method::POST, &path)
        .header("cookie", s.cookie(&c.token))
        .body(StreamBody::new(futures_util::stream::iter(parts)))
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(s.connect(b"http/1.1").await);
    let (r, _conn) = send_http1(io, req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nfirst part, second part"), "{text}");
}
