//! Replacing an instance's access token on the local backend: the API answer, the old token and
//! cookies holding it refused from the next request on (also on a connection opened before,
//! and for WebSocket upgrades), tunnels opened with it closed, the new token working, the
//! rotation surviving a restart, and the client subcommand.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::time::Duration;
use vod_testkit::tokio_tungstenite::tungstenite::Message;
use vod_testkit::*;

/// A GET of `rest` on the instance with `cookie`, as a script sends it.
fn get(s: &Server, id: &str, rest: &str, cookie: &str) -> http::Request<Full<Bytes>> {
    s.request(Method::GET, &format!("/instances/{id}{rest}"))
        .header("cookie", cookie)
        .body(Full::default())
        .unwrap()
}

/// Rotates through the API and returns the answer, checking it has the shape of `GET
/// /api/instances/{id}` plus the new token, and the URL that opens the instance with it.
async fn rotate(s: &Server, c: &Created) -> serde_json::Value {
    let (st, v) = s
        .api(
            Method::POST,
            &format!("/api/instances/{}/token", c.id),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(token.len(), 64, "256 bits, hex: {v}");
    assert_ne!(token, c.token);
    assert_eq!(
        v["url"],
        format!("{}/instances/{}/?tkn={token}", s.origin_of(&c.id), c.id)
    );
    let (_, shown) = s
        .api(Method::GET, &format!("/api/instances/{}", c.id), None)
        .await;
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let mut with_token = keys(&shown);
    with_token.push("access_token".into());
    with_token.sort();
    assert_eq!(keys(&v), with_token, "{v}");
    assert!(shown.get("access_token").is_none(), "{shown}");
    for k in [
        "instance_id",
        "user_id",
        "status",
        "base_image",
        "creation_time",
    ] {
        assert_eq!(v[k], shown[k], "{k}");
    }
    v
}

/// Fails unless the server ends `ws` within `within` (the echo server sends nothing by
/// itself, so the next thing to arrive is the end).
async fn closed_by_server<S>(ws: &mut S, within: Duration)
where
    S: futures_util::Stream<
            Item = Result<Message, vod_testkit::tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
{
    match tokio::time::timeout(within, ws.next()).await {
        Err(_) => panic!("the tunnel opened with the old token is still open"),
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {}
        Ok(Some(Ok(other))) => panic!("unexpected message {other:?}"),
    }
}

#[tokio::test]
async fn a_rotated_token_replaces_the_old_one_at_once_and_for_good() {
    let mut f = Fixture::new(0, &[]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let old_cookie = s.cookie(&c.token);
    let origin = s.origin_of(&c.id);
    let ws_path = format!("/instances/{}/ws", c.id);

    // Before: a keep-alive connection, a WebSocket tunnel, both opened with the old cookie.
    let io = TokioIo::new(s.connect(b"http/1.1").await);
    let (mut kept, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let r = kept
        .send_request(get(s, &c.id, "/small", &old_cookie))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the old cookie works before");
    assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "hello");
    let mut open = s
        .websocket(&ws_path, Some(&old_cookie), Some(&origin))
        .await
        .unwrap();
    open.send(Message::text("before")).await.unwrap();
    assert_eq!(open.next().await.unwrap().unwrap(), Message::text("before"));

    let v = rotate(s, &c).await;
    let new = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        v["status"], "Running",
        "a rotation does not stop the instance"
    );

    // At once: the old cookie is refused, on the connection opened before too, and for a new
    // WebSocket; the old token in ?tkn= is no longer exchanged.
    kept.ready().await.unwrap();
    let r = kept
        .send_request(get(s, &c.id, "/small", &old_cookie))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "same connection");
    let r = s.send(get(s, &c.id, "/small", &old_cookie)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "new connection");
    let h2 = s
        .request(Method::GET, &format!("{origin}/instances/{}/small", c.id))
        .header("cookie", &old_cookie)
        .body(Full::default())
        .unwrap();
    let r = s.send_h2(h2).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "HTTP/2");
    let err = s
        .websocket(&ws_path, Some(&old_cookie), Some(&origin))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let r = s
        .send(
            s.request(
                Method::GET,
                &format!("/instances/{}/?tkn={}", c.id, c.token),
            )
            .body(Full::default())
            .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the old ?tkn=");
    assert!(r.headers().get("set-cookie").is_none());
    // The tunnel the old cookie opened is closed.
    closed_by_server(&mut open, Duration::from_secs(30)).await;

    // The new token: exchanged for a cookie holding it, which opens pages and WebSockets.
    let r = s
        .send(
            s.request(Method::GET, &format!("/instances/{}/?tkn={new}", c.id))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().unwrap();
    assert!(set.starts_with(&format!("{}; ", s.cookie(&new))), "{set}");
    let new_cookie = s.cookie(&new);
    let r = s.send(get(s, &c.id, "/small", &new_cookie)).await;
    assert_eq!(body_text(r).await, "hello");
    let mut ws = s
        .websocket(&ws_path, Some(&new_cookie), Some(&origin))
        .await
        .unwrap();
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    drop(ws);

    // Unknown instances, other methods, no admin token.
    let (st, v) = s
        .api(Method::POST, "/api/instances/nobody-0000000a/token", None)
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (st, _) = s
        .api(Method::GET, &format!("/api/instances/{}/token", c.id), None)
        .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    let r = s
        .send(
            s.request(Method::POST, &format!("/api/instances/{}/token", c.id))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s.send(get(s, &c.id, "/small", &new_cookie)).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "an unauthorized call rotated nothing"
    );

    let log = std::fs::read_to_string(s.data_dir.with_extension("server.log")).unwrap();
    assert!(
        log.contains("access token replaced"),
        "the rotation is logged"
    );
    assert!(
        !log.contains(&new) && !log.contains(&c.token),
        "tokens are never logged"
    );

    // After a restart the new token holds and the old one stays refused.
    f.restart(&[]);
    let s = &f.server;
    let r = s.send(get(s, &c.id, "/small", &old_cookie)).await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "old cookie after restart"
    );
    let r = s.send(get(s, &c.id, "/small", &new_cookie)).await;
    assert_eq!(r.status(), StatusCode::OK, "new cookie after restart");
    assert_eq!(body_text(r).await, "hello");
}

#[tokio::test]
async fn the_client_rotates_and_prints_what_opens_the_instance() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "bob"})).await;
    let run = |args: &[&str]| {
        std::process::Command::new(product())
            .args(args)
            .args(["--data-dir", s.data_dir.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = run(&["rotate-token", "--instance-id", &c.id]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} in {text}"))
            .trim()
            .to_owned()
    };
    let token = line("Access token");
    assert_eq!(token.len(), 64, "{text}");
    assert_ne!(token, c.token);
    assert_eq!(line("Instance ID"), c.id);
    assert!(line("URL").ends_with(&format!("?tkn={token}")), "{text}");
    let r = s.send(get(s, &c.id, "/small", &s.cookie(&token))).await;
    assert_eq!(body_text(r).await, "hello");
    let r = s.send(get(s, &c.id, "/small", &s.cookie(&c.token))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let out = run(&["rotate-token", "--instance-id", &c.id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(v["access_token"].as_str().unwrap(), token);
    let out = run(&["rotate-token", "--instance-id", "bob-0000000a"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
}
