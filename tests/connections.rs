//! Client connections under limits, on real sockets with small limits set by flags: idle
//! connections make room at the cap, one client is held to its share, connections that stay
//! idle (silent after the TLS handshake, between keep-alive requests, HTTP/2) and idle
//! WebSocket tunnels are closed, tunnels count against the cap, oversized heads get 431, and
//! at shutdown open WebSockets keep working until the drain deadline, then get "going away".

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use vod_testkit::tokio_tungstenite::tungstenite::Message;
use vod_testkit::*;

/// Generous bounds: the limits under test are one or two seconds.
const CLOSED_WITHIN: Duration = Duration::from_secs(30);

/// An HTTP/1.1 keep-alive connection that has made one request.
async fn kept_alive(s: &Server) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let io = TokioIo::new(s.connect(b"http/1.1").await);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = s
        .request(Method::GET, "/api/health")
        .body(Full::default())
        .unwrap();
    assert_eq!(tx.send_request(req).await.unwrap().status(), StatusCode::OK);
    tx
}

/// A request on a new connection to the instance, answered once the instance has started; the
/// connection is open (and in the table) when this returns.
async fn held_request(s: &Server, c: &Created) -> tokio::task::JoinHandle<StatusCode> {
    let req = s
        .request(Method::GET, &format!("/instances/{}/small", c.id))
        .header("cookie", s.cookie(&c.token))
        .body(Full::<Bytes>::default())
        .unwrap();
    let tls = s.connect(b"http/1.1").await;
    tokio::spawn(async move {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        tx.send_request(req).await.unwrap().status()
    })
}

async fn wait_closed(what: &str, mut closed: impl FnMut() -> bool) {
    wait_until(what, CLOSED_WITHIN, &mut closed).await;
}

#[tokio::test]
async fn idle_connections_make_room_at_the_cap() {
    let f = Fixture::new(0, &["--max-connections", "3"]);
    let s = &f.server;
    let held = [
        kept_alive(s).await,
        kept_alive(s).await,
        kept_alive(s).await,
    ];
    // A fourth client is served: the longest-idle connection is closed to make room.
    let r = tokio::time::timeout(
        CLOSED_WITHIN,
        s.send(
            s.request(Method::GET, "/api/health")
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .expect("a new client is served at the cap");
    assert_eq!(r.status(), StatusCode::OK);
    wait_closed("an idle connection closed to make room", || {
        held.iter().any(|c| c.is_closed())
    })
    .await;
    assert!(
        !held[2].is_closed(),
        "the longest-idle connection goes first"
    );
}

#[tokio::test]
async fn one_client_is_held_to_its_share() {
    // Starts take 4 s, so a request to a stopped instance is held that long.
    let f = Fixture::new(4000, &["--max-connections-per-client", "2"]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let idle = kept_alive(s).await;
    let _other = kept_alive(s).await;
    // At its share, the client's own idle connection makes room.
    let held = held_request(s, &c).await;
    wait_closed("the client's idle connection closed", || {
        idle.is_closed() || _other.is_closed()
    })
    .await;
    // Now both of its places are taken: one busy, one idle again. Make the idle one busy too.
    let second = held_request(s, &c).await;
    // With nothing idle of its own, a third connection is refused before TLS.
    let mut refused = false;
    for _ in 0..50 {
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let cfg = s.tls.clone();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect("localhost".try_into().unwrap(), tcp)
            .await;
        if tls.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a third connection while two are busy is refused");
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    assert_eq!(second.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn connections_that_stay_idle_are_closed() {
    let f = Fixture::new(0, &["--idle-connection-timeout", "1s"]);
    let s = &f.server;
    // Silent after the TLS handshake.
    let mut silent = s.connect(b"http/1.1").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(CLOSED_WITHIN, silent.read(&mut buf))
        .await
        .expect("a silent connection is closed");
    assert!(!matches!(n, Ok(m) if m > 0), "{n:?}");
    // Between keep-alive requests.
    let kept = kept_alive(s).await;
    wait_closed("an idle keep-alive connection", || kept.is_closed()).await;
    // HTTP/2, which answers our pings but asks for nothing.
    let io = TokioIo::new(s.connect(b"h2").await);
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let ended = tokio::spawn(conn);
    let req = s
        .request(Method::GET, "/api/health")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(tx.send_request(req).await.unwrap().status(), StatusCode::OK);
    tokio::time::timeout(CLOSED_WITHIN, ended)
        .await
        .expect("an idle HTTP/2 connection is closed")
        .unwrap()
        .ok();
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let f = Fixture::new(0, &["--max-header-bytes", "16384"]);
    let s = &f.server;
    let get = |size: usize| {
        s.request(Method::GET, "/api/health")
            .header("x-fill", "a".repeat(size))
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(s.send(get(8000)).await.status(), StatusCode::OK);
    let io = TokioIo::new(s.connect(b"http/1.1").await);
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let status = tx.send_request(get(40_000)).await.map(|r| r.status());
    assert!(
        matches!(status, Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)),
        "{status:?}"
    );
}

#[tokio::test]
async fn idle_tunnels_are_closed_and_tunnels_count_against_the_cap() {
    let f = Fixture::new(
        0,
        &["--tunnel-idle-timeout", "2s", "--max-connections", "2"],
    );
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let path = format!("/instances/{}/ws", c.id);
    let cookie = s.cookie(&c.token);
    let origin = s.origin_of(&c.id);
    let mut a = s
        .websocket(&path, Some(&cookie), Some(&origin))
        .await
        .unwrap();
    let mut b = s
        .websocket(&path, Some(&cookie), Some(&origin))
        .await
        .unwrap();
    a.send(Message::text("hi")).await.unwrap();
    assert_eq!(a.next().await.unwrap().unwrap(), Message::text("hi"));
    // Two tunnels fill the cap, and an open tunnel is never taken for idle.
    let third = tokio::time::timeout(
        Duration::from_secs(1),
        s.send(
            s.request(Method::GET, "/api/health")
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await;
    assert!(third.is_err(), "served while two tunnels filled the cap");
    // Left silent, a tunnel is closed, and the waiting client gets its place.
    let end = tokio::time::timeout(CLOSED_WITHIN, async {
        loop {
            match b.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "an idle tunnel was not closed");
    let r = tokio::time::timeout(
        CLOSED_WITHIN,
        s.send(
            s.request(Method::GET, "/api/health")
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .expect("served once a tunnel closed");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn shutdown_keeps_websockets_until_the_drain_deadline_then_says_going_away() {
    let mut f = Fixture::new(0, &["--drain-timeout", "5s"]);
    let c = f.server.create(json!({"user_id": "alice"})).await;
    let path = format!("/instances/{}/ws", c.id);
    let s = &f.server;
    let mut ws = s
        .websocket(&path, Some(&s.cookie(&c.token)), Some(&s.origin_of(&c.id)))
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    s.sigterm();
    // New connections are refused once the listener is gone.
    let addr = s.addr;
    wait_until("the listener closed", CLOSED_WITHIN, || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    // The open WebSocket still works during the drain.
    ws.send(Message::text("draining")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("draining"));
    // At the deadline the browser is told the server is going away, in a close frame.
    let msg = tokio::time::timeout(CLOSED_WITHIN, ws.next())
        .await
        .expect("a close frame at the drain deadline")
        .expect("the connection ended with a frame")
        .expect("a well-formed frame");
    match msg {
        Message::Close(Some(frame)) => assert_eq!(
            frame.code,
            vod_testkit::tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away
        ),
        other => panic!("expected a close frame with 1001, got {other:?}"),
    }
    assert!(f.server.terminate().success(), "clean exit after the drain");
}
