//! Test harness: runs the real `vscode-on-demand` binary on port 0 with a temporary data
//! directory, talks to it over real TLS (trusting the CA it generated), and runs
//! `vod-upstream` as the instance process.
#![allow(dead_code)]

pub mod browser;
pub mod control_plane;
pub mod kube;
pub mod vscode_cli;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_vscode-on-demand");
pub const UPSTREAM: &str = env!("CARGO_BIN_EXE_vod-upstream");

/// The command template that runs `vod-upstream` as an instance on its Unix socket, recording
/// each start in `starts` and delaying its readiness by `delay_ms`.
pub fn upstream_command(starts: &Path, delay_ms: u64) -> String {
    format!(
        "{UPSTREAM} --socket {{socket}} --workspace {{workspace}} --starts-file {} --startup-delay-ms {delay_ms}",
        starts.display()
    )
}

/// Server arguments that run `vod-upstream` instances without a sandbox: the suites that use
/// them count starts in a file outside the data directory and follow instance processes by
/// their PIDs, neither of which a sandbox lets through; `tests/sandbox.rs` covers the sandbox.
pub fn unsandboxed(cmd: &str) -> Vec<&str> {
    vec![
        "--runtime",
        "command",
        "--command",
        cmd,
        "--sandbox",
        "none",
    ]
}

/// Lines in a starts file: how many times an instance process was started.
pub fn starts(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still answers signal 0; look at its state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    pub host: String,
    pub data_dir: PathBuf,
    pub token: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub stdout: Vec<String>,
    /// Each instance on its own origin, `<id>.localhost:<port>` (the default on localhost).
    pub host_routing: bool,
}

pub struct Created {
    pub id: String,
    pub token: String,
    pub url: String,
    pub body: Value,
}

impl Server {
    /// Starts `serve` with `args` (plus listen/data-dir), waiting until it prints its address.
    pub fn start(data_dir: &Path, args: &[&str]) -> Server {
        Self::start_with_env(data_dir, args, &[])
    }

    pub fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("VOD_LOG", "info,vscode_on_demand=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(data_dir.with_extension("server.log"))
                    .unwrap(),
            ))
            .spawn()
            .expect("run vscode-on-demand");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout = Vec::new();
        let addr: SocketAddr = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| {
                    panic!(
                        "server exited early; stdout: {stdout:?}; its log ends:\n{}",
                        log_tail(&data_dir.with_extension("server.log"), 30)
                    )
                })
                .unwrap();
            stdout.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim_end_matches(')').parse().unwrap();
            }
        };
        // The banner ends with its "Try:" line.
        for l in lines.by_ref().map_while(Result::ok) {
            let last = l.trim_start().starts_with("Try:");
            stdout.push(l);
            if last {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let token = std::fs::read_to_string(data_dir.join("admin-token"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let cert_dir = args
            .iter()
            .position(|a| *a == "--cert-dir")
            .and_then(|i| args.get(i + 1))
            .map_or_else(|| data_dir.join("certs"), PathBuf::from);
        let tls = client_tls(&cert_dir.join("ca.crt"));
        let host_routing = stdout.iter().any(|l| l.contains("Routing:    host"));
        Server {
            child,
            addr,
            base: format!("https://localhost:{}", addr.port()),
            host: format!("localhost:{}", addr.port()),
            data_dir: data_dir.to_owned(),
            token,
            tls,
            stdout,
            host_routing,
        }
    }

    /// The host serving `path`: an instance's own host for its paths in host routing, else
    /// the public one.
    pub fn host_for(&self, path: &str) -> String {
        // An absolute URI (HTTP/2 requests) names its path after the authority.
        let path = path
            .strip_prefix("https://")
            .map_or(path, |r| r.find('/').map_or("", |i| &r[i..]));
        let id = path
            .strip_prefix("/instances/")
            .and_then(|r| r.split(['/', '?']).next())
            .filter(|id| !id.is_empty());
        match id {
            Some(id) if self.host_routing => format!("{id}.{}", self.host),
            _ => self.host.clone(),
        }
    }

    /// The origin an instance's pages have.
    pub fn origin_of(&self, id: &str) -> String {
        format!("https://{}", self.host_for(&format!("/instances/{id}/")))
    }

    /// The `Cookie` header value carrying an instance token, as the browser would send it.
    pub fn cookie(&self, token: &str) -> String {
        let name = if self.host_routing {
            "__Host-vod_tkn"
        } else {
            "__Secure-vod_tkn"
        };
        format!("{name}={token}")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < end,
                "server did not exit after SIGTERM; its log ends:\n{}",
                log_tail(&self.data_dir.with_extension("server.log"), 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn connect(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let mut cfg = (*self.tls).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap()
    }

    /// Sends one request over a new HTTP/1.1 connection.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        let io = TokioIo::new(self.connect(b"http/1.1").await);
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn.with_upgrades());
        tx.send_request(req).await.unwrap()
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

impl Drop for Server {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM, a grace period, then SIGKILL: what every process a test starts gets at the end.
pub fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn client_tls(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in vscode_on_demand::tls::load_certs(ca).expect("the server wrote its CA") {
        roots.add(c).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

pub async fn body_text(resp: Response<Incoming>) -> String {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

pub async fn body_json(resp: Response<Incoming>) -> Value {
    serde_json::from_str(&body_text(resp).await).unwrap()
}

/// A temporary directory that is removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vod-test")
        .tempdir()
        .unwrap()
}

/// A server running `vod-upstream` instances, in a fresh data directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub starts: PathBuf,
    pub server: Server,
}

impl Fixture {
    pub fn new(delay_ms: u64, args: &[&str]) -> Fixture {
        let dir = tempdir();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let starts = dir.path().join("starts");
        let cmd = upstream_command(&starts, delay_ms);
        let mut all = unsandboxed(&cmd);
        all.extend_from_slice(args);
        let server = Server::start(&data, &all);
        Fixture {
            dir,
            starts,
            server,
        }
    }

    pub fn restart(&mut self, args: &[&str]) {
        self.server.terminate();
        let cmd = upstream_command(&self.starts, 0);
        let mut all = unsandboxed(&cmd);
        all.extend_from_slice(args);
        self.server = Server::start(&self.server.data_dir.clone(), &all);
    }
}
