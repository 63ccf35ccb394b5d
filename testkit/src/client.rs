//! Talking to a server under test as its clients do: over real TLS, trusting the CA it
//! generated, HTTP/1.1 or HTTP/2 on a new connection per request, the management API with the
//! admin token, instance pages with the instance cookie, and WebSockets through the proxy.

use crate::Server;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// An instance the API created: its id, access token and URL, and the whole answer.
pub struct Created {
    pub id: String,
    pub token: String,
    pub url: String,
    pub body: Value,
}

/// Sends one request over a new HTTP/1.1 connection on `io`. The connection runs in a task of
/// its own (upgrades included) while the response is read; its handle lets a caller that only
/// wants the status line end it early.
pub async fn send_http1<I, B>(
    io: I,
    req: Request<B>,
) -> Result<(Response<Incoming>, JoinHandle<hyper::Result<()>>), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(conn.with_upgrades());
    let resp = tx.send_request(req).await;
    if resp.is_err() {
        driver.abort();
    }
    Ok((resp?, driver))
}

impl Server {
    pub async fn connect(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        self.tls_over(tcp, alpn).await.unwrap()
    }

    /// A TCP connection to the server from `local`, an address of this machine (another
    /// loopback address, say), so that the server sees that peer.
    pub async fn tcp_from(&self, local: IpAddr) -> TcpStream {
        let socket = match local {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        socket.connect(self.addr).await.unwrap()
    }

    /// The TLS handshake on a connection the caller opened (and may have written to already,
    /// as a PROXY protocol header); an error when the server refuses or closes it.
    pub async fn tls_over(
        &self,
        tcp: TcpStream,
        alpn: &[u8],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut cfg = (*self.tls).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
    }

    /// Sends one request over a new HTTP/1.1 connection.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        let io = TokioIo::new(self.connect(b"http/1.1").await);
        send_http1(io, req).await.unwrap().0
    }

    /// Sends one request over a new HTTP/2 connection.
    pub async fn send_h2(&self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        let io = TokioIo::new(self.connect(b"h2").await);
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        tx.send_request(req).await.unwrap()
    }

    /// A request to `path` on the host that serves it (see [`Server::host_for`]).
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.host_for(path))
    }

    /// A GET as a browser navigation, with the instance cookie.
    pub async fn visit(&self, c: &Created, rest: &str) -> Response<Incoming> {
        let req = self
            .request(Method::GET, &format!("/instances/{}{rest}", c.id))
            .header("cookie", self.cookie(&c.token))
            .header("accept", "text/html")
            .header("sec-fetch-mode", "navigate")
            .body(Full::default())
            .unwrap();
        self.send(req).await
    }

    /// A script-style request with the instance cookie.
    pub async fn fetch(
        &self,
        c: &Created,
        method: Method,
        rest: &str,
        body: &str,
    ) -> Response<Incoming> {
        let req = self
            .request(method, &format!("/instances/{}{rest}", c.id))
            .header("cookie", self.cookie(&c.token))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        self.send(req).await
    }

    /// Calls the API with the admin token.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut b = self
            .request(method, path)
            .header("authorization", format!("Bearer {}", self.token));
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let body = body.map(|v| v.to_string()).unwrap_or_default();
        let resp = self
            .send(b.body(Full::new(Bytes::from(body))).unwrap())
            .await;
        let status = resp.status();
        let text = body_text(resp).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn create(&self, body: Value) -> Created {
        let (status, v) = self.api(Method::POST, "/api/instances", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        Created {
            id: v["instance_id"].as_str().unwrap().to_owned(),
            token: v["access_token"].as_str().unwrap().to_owned(),
            url: v["url"].as_str().unwrap().to_owned(),
            body: v,
        }
    }

    pub async fn state(&self, id: &str) -> String {
        let (_, v) = self
            .api(Method::GET, &format!("/api/instances/{id}"), None)
            .await;
        v["status"].as_str().unwrap_or("?").to_owned()
    }

    pub async fn wait_state(&self, id: &str, want: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let s = self.state(id).await;
            if s == want {
                return;
            }
            assert!(Instant::now() < end, "{id} stayed {s}, wanted {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens a WebSocket to an instance path through the proxy.
    pub async fn websocket(
        &self,
        path: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::Error,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("wss://{}{path}", self.host_for(path))
            .into_client_request()
            .unwrap();
        if let Some(c) = cookie {
            req.headers_mut().insert("cookie", c.parse().unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        let tls = self.connect(b"http/1.1").await;
        tokio_tungstenite::client_async(req, tls)
            .await
            .map(|(ws, _)| ws)
    }
}

pub async fn body_text(resp: Response<Incoming>) -> String {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

pub async fn body_json(resp: Response<Incoming>) -> Value {
    serde_json::from_str(&body_text(resp).await).unwrap()
}
