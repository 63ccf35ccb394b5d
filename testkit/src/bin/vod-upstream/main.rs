#![forbid(unsafe_code)]
//! `vod-upstream`: a small HTTP + WebSocket server that the integration tests and benchmarks run
//! as an instance, the stand-in for VS Code.
//!
//! Routes are matched on the end of the request path (or, for `/echo`, anywhere in it), so the
//! server answers the same way whatever prefix the proxy keeps in front of the path. `/doc` is
//! an HTML document (gzipped when accepted); other unknown paths get a small HTML page.
//!
//! With `--connection-token` (or `--connection-token-file`) it checks requests the way VS
//! Code's server does: the token in a `tkn` query parameter or the `vscode-tkn` cookie, else
//! 403, except `/version`; a valid `tkn` is answered with a `vscode-tkn` cookie. VS Code checks
//! WebSockets inside its own protocol; this server checks the handshake instead, which is what
//! a client without the token runs into either way.
//!
//! With `--exec`, `POST .../exec` runs its body with `sh -c` and `GET .../connect?path=P`
//! tries to connect to the Unix socket `P`: the sandbox tests act from inside an instance
//! through them, as a user's code would.

use std::{
    convert::Infallible,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use futures_util::{stream, SinkExt, StreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
    HeaderMap, Method, Request, Response, StatusCode,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, Message},
    WebSocketStream,
};

mod inside;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Static so that every `/big` response shares one buffer instead of allocating 64 KiB.
static BIG: [u8; 65536] = [b'x'; 65536];

#[derive(Parser)]
#[command(about = "HTTP + WebSocket stand-in for a VS Code instance (tests and benchmarks)")]
struct Args {
    #[arg(long, required_unless_present = "socket", conflicts_with = "socket")]
    port: Option<u16>,
    /// Listen on this Unix socket instead of a TCP port.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Serve `/exec` and `/connect` (commands run as the instance).
    #[arg(long)]
    exec: bool,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Delay before binding, to simulate a slow VS Code start.
    #[arg(long, default_value_t = 0)]
    startup_delay_ms: u64,
    /// File that gets one `<pid>` line per start, so tests can count starts.
    #[arg(long)]
    starts_file: Option<PathBuf>,
    /// Directory served by `/workspace-file`.
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// Token every request must carry (as VS Code's `--connection-token`).
    #[arg(long, conflicts_with = "connection_token_file")]
    connection_token: Option<String>,
    /// File holding the token (as VS Code's `--connection-token-file`).
    #[arg(long)]
    connection_token_file: Option<PathBuf>,
}

/// The connection token, if any: from the flag, or the file without its final newline.
fn connection_token(args: &Args) -> anyhow::Result<Option<Arc<str>>> {
    let token = match (&args.connection_token, &args.connection_token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the connection token file {}", path.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    anyhow::ensure!(
        valid,
        "the connection token may only hold 0-9, a-z, A-Z, _ and -"
    );
    Ok(Some(token.into()))
}

/// How a request stands against the connection token.
enum Access {
    Allowed,
    /// A valid `tkn`, which VS Code answers with its cookie.
    AllowedByQuery,
    Forbidden,
}

fn access(req: &Request<Incoming>, token: Option<&str>) -> Access {
    let Some(token) = token else {
        return Access::Allowed;
    };
    if req.uri().path().ends_with("/version") {
        return Access::Allowed;
    }
    let query = req.uri().query().unwrap_or("");
    if query
        .split('&')
        .any(|kv| kv.strip_prefix("tkn=") == Some(token))
    {
        return Access::AllowedByQuery;
    }
    let cookie_ok = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        // VS Code's cookie parser keeps the first of two equal names.
        .find_map(|kv| kv.trim().strip_prefix("vscode-tkn="))
        .is_some_and(|v| v == token);
    if cookie_ok {
        Access::Allowed
    } else {
        Access::Forbidden
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    // The signals race the whole server, startup delay included, so a stop request never waits.
    tokio::select! {
        result = run(args) => result,
        _ = sigterm.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(path) = &args.starts_file {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // A single write call keeps the line whole even if several instances append at once.
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    }
    tokio::time::sleep(Duration::from_millis(args.startup_delay_ms)).await;

    let server = Server {
        workspace: Arc::new(args.workspace.clone()),
        exec: args.exec,
        token: connection_token(&args)?,
        builder: auto::Builder::new(TokioExecutor::new()),
    };
    if let Some(path) = &args.socket {
        // A socket left by an earlier run would make the bind fail.
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("binding {}", path.display()))?;
        loop {
            match listener.accept().await {
                Ok((unix, _)) => server.serve(unix),
                Err(err) => backoff(err).await,
            }
        }
    }
    let port = args.port.unwrap_or_default();
    let listener = TcpListener::bind((args.host, port))
        .await
        .with_context(|| format!("binding {}:{port}", args.host))?;
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                server.serve(tcp);
            }
            Err(err) => backoff(err).await,
        }
    }
}

async fn backoff(err: std::io::Error) {
    // Usually fd exhaustion under benchmark load: back off instead of spinning.
    eprintln!("vod-upstream: accept failed: {err}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

struct Server {
    workspace: Arc<Option<PathBuf>>,
    exec: bool,
    token: Option<Arc<str>>,
    builder: auto::Builder<TokioExecutor>,
}

impl Server {
    fn serve<S>(&self, io: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (builder, workspace, exec) = (self.builder.clone(), self.workspace.clone(), self.exec);
        let token = self.token.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (workspace, token) = (workspace.clone(), token.clone());
                async move {
                    let response = match access(&req, token.as_deref()) {
                        Access::Forbidden => text(StatusCode::FORBIDDEN, "Forbidden."),
                        Access::Allowed => handle(req, workspace.as_deref(), exec).await,
                        Access::AllowedByQuery => {
                            let mut r = handle(req, workspace.as_deref(), exec).await;
                            let cookie = format!(
                                "vscode-tkn={}; SameSite=Lax; Max-Age=604800",
                                token.as_deref().unwrap_or_default()
                            );
                            if let Ok(v) = HeaderValue::from_str(&cookie) {
                                r.headers_mut().append(header::SET_COOKIE, v);
                            }
                            r
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            // Connection errors are the client's business (resets, aborted uploads).
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, workspace: Option<&Path>, exec: bool) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if exec && path.ends_with("/exec") && req.method() == Method::POST {
        inside::run_shell(req).await
    } else if exec && path.ends_with("/connect") {
        inside::connect(req.uri().query().unwrap_or(""))
    } else if path.ends_with("/ws") && is_websocket_upgrade(req.headers()) {
        websocket(req)
    } else if path.contains("/echo") {
        echo(req).await
    } else if path.ends_with("/workspace-file") {
        workspace_file(req, workspace).await
    } else if path.ends_with("/doc") {
        document(req.headers())
    } else if path.ends_with("/healthz") && req.method() == Method::GET {
        text(StatusCode::OK, "ok")
    } else if path.ends_with("/small") {
        text(StatusCode::OK, "hello")
    } else if path.ends_with("/big") {
        text(StatusCode::OK, Bytes::from_static(&BIG))
    } else if path.ends_with("/stream") {
        chunked_stream()
    } else if path.ends_with("/upload") {
        match count_body(req.into_body()).await {
            Some(total) => text(StatusCode::OK, total.to_string()),
            None => text(StatusCode::BAD_REQUEST, "body read failed"),
        }
    } else {
        let html = format!(
            "<!doctype html><title>upstream</title><p>upstream {}</p>",
            escape_html(&path)
        );
        respond(StatusCode::OK, "text/html", full(html))
    }
}

/// A complete HTML document, gzip-compressed when the client accepts it, the way VS Code
/// serves its workbench page.
fn document(headers: &HeaderMap) -> Response<Body> {
    const DOC: &str =
        "<!doctype html><html><head><title>doc</title></head><body><p>doc</p></body></html>";
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let body = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing to a Vec cannot fail.
        let _ = enc.write_all(DOC.as_bytes());
        Bytes::from(enc.finish().unwrap_or_default())
    } else {
        Bytes::from_static(DOC.as_bytes())
    };
    let len = body.len();
    let mut response = respond(StatusCode::OK, "text/html; charset=utf-8", full(body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ETAG, HeaderValue::from_static("\"doc-1\""));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Body,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    respond(status, "text/plain", full(body))
}

/// Counts the body without buffering it, so large uploads measure the proxy, not our memory.
async fn count_body(mut body: Incoming) -> Option<usize> {
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.ok()?.data_ref() {
            total += data.len();
        }
    }
    Some(total)
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<_> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect();
        headers.insert(name.as_str().to_owned(), values.join(", ").into());
    }
    let Some(body_len) = count_body(body).await else {
        return text(StatusCode::BAD_REQUEST, "body read failed");
    };
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        "headers": headers,
        "body_len": body_len,
    });
    respond(StatusCode::OK, "application/json", full(json.to_string()))
}

/// The first chunk goes out at once and the rest are spaced out, so a test can tell a proxy that
/// streams from one that buffers the whole response.
fn chunked_stream() -> Response<Body> {
    let chunks = stream::iter(0..5).then(|i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Frame::data(Bytes::from(format!("chunk-{i}\n"))))
    });
    respond(
        StatusCode::OK,
        "text/plain",
        StreamBody::new(chunks).boxed_unsync(),
    )
}

async fn workspace_file(req: Request<Incoming>, workspace: Option<&Path>) -> Response<Body> {
    let Some(dir) = workspace else {
        return text(StatusCode::NOT_FOUND, "no workspace");
    };
    let query = req.uri().query().unwrap_or("");
    let name = query.split('&').find_map(|kv| kv.strip_prefix("name="));
    // Names stay inside the workspace: no separators, no parent references.
    let Some(name) = name.filter(|n| !n.is_empty() && !n.contains('/') && !n.contains("..")) else {
        return text(StatusCode::BAD_REQUEST, "bad name");
    };
    let file = dir.join(name);
    match *req.method() {
        Method::GET => match tokio::fs::read(&file).await {
            Ok(content) => text(StatusCode::OK, content),
            Err(_) => text(StatusCode::NOT_FOUND, "not found"),
        },
        Method::PUT => {
            let Ok(body) = req.into_body().collect().await else {
                return text(StatusCode::BAD_REQUEST, "body read failed");
            };
            match tokio::fs::write(&file, body.to_bytes()).await {
                Ok(()) => text(StatusCode::NO_CONTENT, Bytes::new()),
                Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
            }
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT"),
    }
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers.get(header::UPGRADE).map(HeaderValue::as_bytes);
    upgrade.is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"))
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let accept = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()));
    let Some(Ok(accept)) = accept.map(HeaderValue::try_from) else {
        return text(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key");
    };
    let header_value = |name| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let whoami = serde_json::json!({
        "origin": header_value(header::ORIGIN),
        "cookie": header_value(header::COOKIE),
        "host": header_value(header::HOST),
    })
    .to_string();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(ref t) if t.as_str() == "whoami" => Message::text(whoami.clone()),
                Message::Text(_) | Message::Binary(_) => msg,
                // tungstenite answers Close and Ping itself; polling on flushes the answer.
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
