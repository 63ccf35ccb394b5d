//! The client behind a load balancer, on real sockets: connections from 127.0.0.2 play the
//! trusted balancer (`--trusted-proxies 127.0.0.2/32`), those from 127.0.0.3 a client
//! connecting directly (and so do the kit's own API calls, from 127.0.0.1). Wrong tokens
//! relayed by the balancer are limited per forwarded client, while the same header from an
//! untrusted peer is ignored; the instance is sent only the vouched-for part of
//! `X-Forwarded-For`; the balancer's connections are exempt from the per-client cap. With
//! `--proxy-protocol` the balancer's connections start with a version 1 or 2 header written
//! here byte by byte, then TLS on the same socket; the client it names is limited and held to
//! its share, and a connection without a header is closed.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vod_testkit::client::send_http1;
use vod_testkit::*;

const BALANCER: &str = "127.0.0.2";
const DIRECT: &str = "127.0.0.3";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A GET of an instance page with `cookie` and, if given, `X-Forwarded-For`.
fn get(s: &Server, c: &Created, cookie: &str, xff: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = s
        .request(Method::GET, &format!("/instances/{}/echo/x", c.id))
        .header("cookie", cookie);
    if let Some(xff) = xff {
        b = b.header("x-forwarded-for", xff);
    }
    b.body(Full::default()).unwrap()
}

/// Sends `req` over TLS on `tcp` (after whatever was written to it); the connection then ends.
async fn send_on(
    s: &Server,
    tcp: TcpStream,
    req: Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    let tls = s.tls_over(tcp, b"http/1.1").await.expect("TLS handshake");
    send_http1(TokioIo::new(tls), req).await.unwrap().0
}

/// A request from the peer `from` with `X-Forwarded-For: xff`.
async fn send_from(
    s: &Server,
    from: &str,
    req: Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    send_on(s, s.tcp_from(ip(from)).await, req).await
}

/// Wrong cookies from `send` until the answer is 429; panics if it never comes.
async fn throttle<F, Fut>(mut send: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StatusCode>,
{
    for _ in 0..20 {
        match send().await {
            StatusCode::TOO_MANY_REQUESTS => return,
            status => assert_eq!(status, StatusCode::UNAUTHORIZED),
        }
    }
    panic!("wrong tokens were never limited");
}

#[tokio::test]
async fn guesses_relayed_by_a_trusted_proxy_count_per_forwarded_client() {
    let f = Fixture::new(
        0,
        &[
            "--trusted-proxies",
            "127.0.0.2/32",
            "--auth-failures-per-minute",
            "3",
        ],
    );
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let wrong = s.cookie("guess");
    let status = |from: &'static str, xff: Option<&'static str>| {
        let req = get(s, &c, &wrong, xff);
        async move { send_from(s, from, req).await.status() }
    };
    // One forwarded client guesses until it is throttled.
    throttle(|| status(BALANCER, Some("203.0.113.7"))).await;
    // Left of its address the client writes what it likes: still the same client.
    assert_eq!(
        status(BALANCER, Some("203.0.113.8, 203.0.113.7")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client through the same balancer, and the balancer itself, are still served.
    for xff in [
        Some("6.6.6.6, 203.0.113.8"),
        Some("203.0.113.9, 127.0.0.2"),
        None,
    ] {
        assert_eq!(
            status(BALANCER, xff).await,
            StatusCode::UNAUTHORIZED,
            "{xff:?}"
        );
    }
    let r = send_from(
        s,
        BALANCER,
        get(s, &c, &s.cookie(&c.token), Some("203.0.113.7")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "a right token still works");

    // A peer that is not trusted: its header is ignored, so changing it changes nothing.
    throttle(|| status(DIRECT, Some("198.51.100.1"))).await;
    assert_eq!(
        status(DIRECT, Some("198.51.100.2")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "throttling keys on the untrusted peer, not its header"
    );
    assert_eq!(
        status(BALANCER, Some("198.51.100.1")).await,
        StatusCode::UNAUTHORIZED,
        "the address it wrote was not charged"
    );
}

#[tokio::test]
async fn the_instance_is_sent_only_the_vouched_for_chain() {
    let f = Fixture::new(0, &["--trusted-proxies", "127.0.0.2/32,192.0.2.0/24"]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let cookie = s.cookie(&c.token);
    for (from, xff, seen) in [
        (
            BALANCER,
            "6.6.6.6, 203.0.113.7, 192.0.2.1",
            "203.0.113.7, 192.0.2.1, 127.0.0.2",
        ),
        (BALANCER, "not an address", "127.0.0.2"),
        (DIRECT, "6.6.6.6", "127.0.0.3"),
    ] {
        let r = send_from(s, from, get(s, &c, &cookie, Some(xff))).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v = body_json(r).await;
        assert_eq!(v["headers"]["x-forwarded-for"], seen, "{xff} from {from}");
    }
}

/// An HTTP/1.1 connection from `from` that has made one request and stays open.
async fn kept_alive(
    s: &Server,
    from: &str,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tls = s
        .tls_over(s.tcp_from(ip(from)).await, b"http/1.1")
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let health = s
        .request(Method::GET, "/api/health")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        tx.send_request(health).await.unwrap().status(),
        StatusCode::OK
    );
    tx
}

#[tokio::test]
async fn a_trusted_proxys_connections_are_not_held_to_one_clients_share() {
    let f = Fixture::new(
        0,
        &[
            "--trusted-proxies",
            "127.0.0.2/32",
            "--max-connections-per-client",
            "1",
        ],
    );
    let s = &f.server;
    let mut balancer = Vec::new();
    for _ in 0..3 {
        balancer.push(kept_alive(s, BALANCER).await);
    }
    for tx in &mut balancer {
        let health = s
            .request(Method::GET, "/api/health")
            .body(Full::default())
            .unwrap();
        let r = tx
            .send_request(health)
            .await
            .expect("the balancer's connections stay open");
        assert_eq!(r.status(), StatusCode::OK);
    }
    // A direct client still is: its idle connection makes room for its next one.
    let first = kept_alive(s, DIRECT).await;
    let _second = kept_alive(s, DIRECT).await;
    wait_until(
        "the direct client's idle connection closed",
        Duration::from_secs(30),
        || first.is_closed(),
    )
    .await;
}

/// A version 1 header naming `source` (IPv4).
fn v1(source: &str) -> Vec<u8> {
    format!("PROXY TCP4 {source} 127.0.0.1 40000 8443\r\n").into_bytes()
}

/// A version 2 header: PROXY naming `source`, or LOCAL (the balancer's own health check).
fn v2(source: Option<IpAddr>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let mut body = Vec::new();
    let family = match source {
        None => 0x00,
        Some(IpAddr::V4(a)) => {
            body.extend(a.octets());
            body.extend([127, 0, 0, 1]);
            0x11
        }
        Some(IpAddr::V6(a)) => {
            body.extend(a.octets());
            body.extend(std::net::Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    if source.is_some() {
        body.extend(40000u16.to_be_bytes());
        body.extend(8443u16.to_be_bytes());
    }
    // A TLV (type 0x04, NOOP) as balancers add them.
    body.extend([0x04, 0x00, 0x02, 0xab, 0xcd]);
    h.push(if source.is_some() { 0x21 } else { 0x20 });
    h.push(family);
    h.extend((body.len() as u16).to_be_bytes());
    h.extend(body);
    h
}

/// A connection from the balancer that starts with `header`.
async fn with_header(s: &Server, header: &[u8]) -> TcpStream {
    let mut tcp = s.tcp_from(ip(BALANCER)).await;
    tcp.write_all(header).await.unwrap();
    tcp
}

#[tokio::test]
async fn proxy_protocol_headers_name_the_client() {
    let f = Fixture::new(
        0,
        &[
            "--trusted-proxies",
            "127.0.0.2/32",
            "--proxy-protocol",
            "--auth-failures-per-minute",
            "2",
        ],
    );
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let cookie = s.cookie(&c.token);
    // The header names the client; an X-Forwarded-For it sends is its own and ignored.
    for (header, client) in [
        (v1("203.0.113.7"), "203.0.113.7"),
        (v2(Some(ip("203.0.113.8"))), "203.0.113.8"),
        (v2(Some(ip("2001:db8::7"))), "2001:db8::7"),
    ] {
        let tcp = with_header(s, &header).await;
        let r = send_on(s, tcp, get(s, &c, &cookie, Some("6.6.6.6"))).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body_json(r).await["headers"]["x-forwarded-for"], client);
    }
    // Guesses count against the client the header names.
    let wrong = s.cookie("guess");
    throttle(|| {
        let req = get(s, &c, &wrong, None);
        async move {
            let tcp = with_header(s, &v1("203.0.113.7")).await;
            send_on(s, tcp, req).await.status()
        }
    })
    .await;
    let tcp = with_header(s, &v2(Some(ip("203.0.113.8")))).await;
    assert_eq!(
        send_on(s, tcp, get(s, &c, &wrong, None)).await.status(),
        StatusCode::UNAUTHORIZED,
        "another client behind the same balancer is not throttled"
    );
    // The balancer's own connection (LOCAL) is served as the balancer.
    let tcp = with_header(s, &v2(None)).await;
    let health = s
        .request(Method::GET, "/api/health")
        .body(Full::default())
        .unwrap();
    assert_eq!(send_on(s, tcp, health).await.status(), StatusCode::OK);
    // From the balancer, a connection without a valid header is closed before TLS.
    for header in [&b""[..], b"PROXY NONSENSE\r\n", b"GET / HTTP/1.1\r\n\r\n"] {
        let tcp = with_header(s, header).await;
        let tls = tokio::time::timeout(Duration::from_secs(30), s.tls_over(tcp, b"http/1.1"))
            .await
            .expect("closed, not left hanging");
        assert!(
            tls.is_err(),
            "{:?} was accepted",
            String::from_utf8_lossy(header)
        );
    }
    // A peer that is not a trusted proxy connects without one.
    let health = s
        .request(Method::GET, "/api/health")
        .body(Full::default())
        .unwrap();
    assert_eq!(send_from(s, DIRECT, health).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_client_a_proxy_protocol_header_names_is_held_to_its_share() {
    let f = Fixture::new(
        0,
        &[
            "--trusted-proxies",
            "127.0.0.2/32",
            "--proxy-protocol",
            "--max-connections-per-client",
            "1",
        ],
    );
    let s = &f.server;
    // A new connection is not taken for idle in its first seconds, so this one holds the
    // client's only place.
    let _held = s
        .tls_over(with_header(s, &v1("203.0.113.20")).await, b"http/1.1")
        .await
        .unwrap();
    let again = with_header(s, &v1("203.0.113.20")).await;
    assert!(
        s.tls_over(again, b"http/1.1").await.is_err(),
        "a second connection of the same client is refused"
    );
    // Another client behind the same balancer is served.
    let other = with_header(s, &v2(Some(ip("203.0.113.21")))).await;
    let health = s
        .request(Method::GET, "/api/health")
        .body(Full::default())
        .unwrap();
    assert_eq!(send_on(s, other, health).await.status(), StatusCode::OK);
}

#[test]
fn the_proxy_protocol_without_trusted_proxies_refuses_to_start() {
    let dir = tempdir();
    let out = std::process::Command::new(product())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("VOD_PROXY_PROTOCOL", "true")
        .env_remove("VOD_TRUSTED_PROXIES")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--proxy-protocol needs --trusted-proxies"),
        "{err}"
    );
}
