//! The proxy path on a real server over TLS: token exchange and URL cleaning, cookie checks and
//! rate limits, strict instance paths, header rewriting, streaming both ways, HTTP/2, and
//! WebSocket splicing with the origin check.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use std::time::{Duration, Instant};
use vod_testkit::tokio_tungstenite::tungstenite::Message;
use vod_testkit::*;

#[tokio::test]
async fn token_is_exchanged_for_a_host_only_cookie_and_removed_from_the_url() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    assert!(s.host_routing, "localhost gets host routing by default");
    let c = s.create(json!({"user_id": "alice"})).await;
    assert_eq!(
        c.url,
        format!(
            "https://{}.{}/instances/{}/?tkn={}",
            c.id, s.host, c.id, c.token
        ),
        "the API gives the instance's own origin"
    );
    let query = format!("folder=/w&tkn={}&x=1", c.token);
    // The documented URL on the public host hands the browser over to the instance's origin,
    // path and query unchanged, before any cookie is set.
    let front = s
        .send(
            Request::builder()
                .uri(format!("/instances/{}/some/page?{query}", c.id))
                .header("host", &s.host)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(front.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        front.headers()["location"],
        format!(
            "{}/instances/{}/some/page?{query}",
            s.origin_of(&c.id),
            c.id
        )
    );
    assert!(front.headers().get("set-cookie").is_none());

    let path = format!("/instances/{}/some/page?{query}", c.id);
    let resp = s
        .send(s.request(Method::GET, &path).body(Full::default()).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let h = resp.headers();
    assert_eq!(
        h["location"],
        format!("/instances/{}/some/page?folder=/w&x=1", c.id)
    );
    assert_eq!(h["referrer-policy"], "no-referrer");
    let cookie = h["set-cookie"].to_str().unwrap();
    for part in [
        &format!("__Host-vod_tkn={}", c.token)[..],
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
    ] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
    assert!(!cookie.contains("Domain"), "host-only: {cookie}");
    assert_eq!(
        s.state(&c.id).await,
        "Stopped",
        "the exchange alone starts nothing"
    );

    let wrong = format!("/instances/{}/?tkn={}", c.id, "0".repeat(64));
    let resp = s
        .send(
            s.request(Method::GET, &wrong)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn a_tkn_parameter_that_is_not_ours_passes_through_with_a_valid_cookie() {
    let f = Fixture::new(0, &["--auth-failures-per-minute", "2"]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    // VS Code adds an empty `tkn=` of its own to some resource URLs.
    for _ in 0..5 {
        let r = s.fetch(&c, Method::GET, "/echo/res?path=/x&tkn=", "").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body_json(r).await["path"], "/echo/res?path=/x&tkn=");
    }
    let r = s.fetch(&c, Method::GET, "/echo/res?tkn=other", "").await;
    assert_eq!(body_json(r).await["path"], "/echo/res?tkn=other");
    // None of that counted as a failure: a fresh exchange still works.
    let path = format!("/instances/{}/?tkn={}", c.id, c.token);
    let r = s
        .send(s.request(Method::GET, &path).body(Full::default()).unwrap())
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // With a valid cookie, our own token in the URL is still taken out of it.
    let r = s
        .send(
            s.request(Method::GET, &path)
                .header("cookie", s.cookie(&c.token))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], format!("/instances/{}/", c.id));
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_refused_then_rate_limited() {
    let f = Fixture::new(0, &["--auth-failures-per-minute", "5"]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let other = s.create(json!({"user_id": "bob"})).await;
    let get = |cookie: Option<String>, html: bool| {
        let mut b = s.request(Method::GET, &format!("/instances/{}/small", c.id));
        if let Some(ck) = cookie {
            b = b.header("cookie", ck);
        }
        if html {
            b = b.header("accept", "text/html");
        }
        b.body(Full::default()).unwrap()
    };
    let r = s.send(get(None, true)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        body_text(r).await.contains("access token"),
        "a page for browsers"
    );
    let r = s.send(get(None, false)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(r).await["error"], "unauthorized");
    for _ in 0..10 {
        let r = s.send(get(None, false)).await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "no credential at all is not a guess"
        );
    }
    let r = s.send(get(Some(s.cookie(&other.token)), false)).await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "another instance's token does not open this one"
    );
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(s.send(get(Some(s.cookie("guess")), false)).await.status());
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(
        s.state(&c.id).await,
        "Stopped",
        "nothing unauthenticated started the instance"
    );
    let r = s.send(get(Some(s.cookie(&c.token)), false)).await;
    assert_eq!(r.status(), StatusCode::OK, "valid credentials still work");
    let path = format!("/instances/{}/?tkn={}", c.id, c.token);
    let r = s
        .send(s.request(Method::GET, &path).body(Full::default()).unwrap())
        .await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "a right token works from a throttled address"
    );
}

#[tokio::test]
async fn paths_that_do_not_name_exactly_one_instance_are_refused() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    for bad in [
        format!("/instances/{}/..%2f..%2fapi", c.id),
        format!("/instances/{}/a%2Fb", c.id),
        format!("/instances/{}/%2e%2e/x", c.id),
        format!("/instances/{}/a/../../other-00000000/", c.id),
        format!("/instances/{}/", c.id.to_uppercase()),
        "/instances/al%69ce-00000000/".into(),
        "/instances/a_b/".into(),
    ] {
        let r = s
            .send(
                s.request(Method::GET, &bad)
                    .header("cookie", s.cookie(&c.token))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body_json(r).await["error"], "bad_path");
    }
    assert!(
        !f.dir.path().join("starts").exists(),
        "no bad path reached an instance"
    );
    let bare = s
        .send(
            s.request(Method::GET, &format!("/instances/{}?a=1", c.id))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        bare.headers()["location"],
        format!("/instances/{}/?a=1", c.id)
    );
}

#[tokio::test]
async fn requests_are_rewritten_streamed_and_served_over_http2() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let req = s
        .request(Method::POST, &format!("/instances/{}/echo/x?q=1", c.id))
        .header(
            "cookie",
            format!("theme=dark; {}; lang=en", s.cookie(&c.token)),
        )
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "6.6.6.6")
        .body(Full::new(Bytes::from_static(b"hello body")))
        .unwrap();
    let r = s.send(req).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a script request waits for the start"
    );
    let v = body_json(r).await;
    assert_eq!(v["method"], "POST");
    assert_eq!(
        v["path"], "/echo/x?q=1",
        "the /instances/<id> prefix is removed for this runtime"
    );
    assert_eq!(v["body_len"], 10);
    let h = &v["headers"];
    assert_eq!(
        h["cookie"], "theme=dark; lang=en",
        "our cookie never reaches the instance"
    );
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "client-sent values are replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "https");
    let instance_host = s.host_for(&format!("/instances/{}/", c.id));
    assert_eq!(h["x-forwarded-host"], instance_host.as_str());
    assert_eq!(h["host"], instance_host.as_str());
    assert!(
        h.get("x-hop").is_none() && h.get("connection").is_none(),
        "{h}"
    );

    // Streaming: the first chunk arrives while the instance is still producing the rest.
    let r = s.fetch(&c, Method::GET, "/stream", "").await;
    let mut body = r.into_body();
    let t0 = Instant::now();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = t0.elapsed();
    assert_eq!(&first[..], b"chunk-0\n");
    let rest = body.collect().await.unwrap().to_bytes();
    let all_at = t0.elapsed();
    assert_eq!(&rest[..], b"chunk-1\nchunk-2\nchunk-3\nchunk-4\n");
    assert!(
        all_at - first_at >= Duration::from_millis(600),
        "chunks were not buffered: first {first_at:?}, all {all_at:?}"
    );

    // Uploads stream too: 8 MiB, counted by the instance.
    let big = "x".repeat(8 << 20);
    let r = s.fetch(&c, Method::POST, "/upload", &big).await;
    assert_eq!(body_text(r).await, (8 << 20).to_string());
    let r = s.fetch(&c, Method::GET, "/big", "").await;
    assert_eq!(body_text(r).await.len(), 65536);

    let r = s
        .send_h2(
            s.request(
                Method::GET,
                &format!("{}/instances/{}/echo/h2", s.origin_of(&c.id), c.id),
            )
            .header("cookie", s.cookie(&c.token))
            .body(Full::default())
            .unwrap(),
        )
        .await;
    assert_eq!(r.version(), http::Version::HTTP_2);
    let v = body_json(r).await;
    assert_eq!(v["path"], "/echo/h2");
    assert_eq!(
        v["headers"]["host"],
        instance_host.as_str(),
        "HTTP/2 authority becomes the upstream Host"
    );
}

#[tokio::test]
async fn websockets_are_spliced_and_need_this_hosts_origin() {
    let f = Fixture::new(0, &[]);
    let s = &f.server;
    let c = s.create(json!({"user_id": "alice"})).await;
    let path = format!("/instances/{}/ws", c.id);
    let cookie = format!("{}; other=1", s.cookie(&c.token));
    let origin = s.origin_of(&c.id);

    let err = s
        .websocket(&path, Some(&cookie), Some("https://evil.example"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let err = s.websocket(&path, Some(&cookie), None).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let err = s.websocket(&path, None, Some(&origin)).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // The instance is stopped: the upgrade is held until it runs, then spliced.
    let mut ws = s
        .websocket(&path, Some(&cookie), Some(&origin))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().to_vec(), big);
    ws.send(Message::text("whoami")).await.unwrap();
    let who: serde_json::Value =
        serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(who["origin"], origin.as_str());
    assert_eq!(
        who["cookie"], "other=1",
        "our cookie is stripped from the upgrade too"
    );
    ws.close(None).await.unwrap();
}
