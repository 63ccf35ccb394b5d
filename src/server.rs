//! The listener: accept within the connection caps ([`crate::http::conns`]), the PROXY protocol
//! header from trusted balancers ([`crate::http::proxy_header`]) and the TLS handshake (bounded
//! together), HTTP/1.1 or HTTP/2 by ALPN with upgrades and bounded heads, idle connections
//! closed, each request's client ([`crate::http::client_addr`]), dispatch to the API or the
//! proxy, and graceful shutdown with a drain deadline.
//!
//! Per-client limits and the client: a connection from an untrusted peer is its peer's, held to
//! its share at accept. One from a trusted proxy carries many clients: it counts against the
//! total only, and each request's client comes from `X-Forwarded-For`; with `--proxy-protocol`
//! the header names the connection's one client, which is then held to its share too.

use crate::http::failure::Failure;
use crate::http::origin::Site;
use crate::http::request_id::{self, RequestId};
use crate::http::response::redirect;
use crate::http::router::{route, Route};
use crate::http::{request_host, Body};
use crate::metrics::Class;
use crate::shared::Shared;
use crate::{api, proxy};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::http::conns::{Conn, ConnInfo, ConnLimits, Conns};
use crate::http::proxy_header;

/// A year; not `includeSubDomains`, which would bind hosts under the public name that this
/// server does not serve.
const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");
/// The TLS handshake, and a PROXY protocol header before it, must be done within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Slow headers: a request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServerLimits {
    pub conns: ConnLimits,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list); larger ones get 431.
    pub max_header_bytes: usize,
    pub drain_timeout: Duration,
    /// Connections from trusted proxies start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// Serves until `shutdown` is cancelled, then lets open requests finish for up to the drain
/// timeout.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    sh: Arc<Shared>,
    shutdown: CancellationToken,
    limits: ServerLimits,
) {
    let conns = Conns::new(limits.conns, shutdown.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        // hyper's floor for its read buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let front = Arc::new(Front {
        acceptor: TlsAcceptor::from(tls),
        builder,
        idle: conns.limits().idle,
        proxy_protocol: limits.proxy_protocol,
        sh,
    });
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // At the total cap this waits for a place (an idle connection is closed to make one if
        // there is any), so the listener's backlog absorbs the rest. A trusted proxy's
        // connection carries many clients: it counts against the total only (until a PROXY
        // header names its one client).
        let trusted = front.sh.trusted.contains(peer.ip());
        let Some(conn) = conns.admit((!trusted).then_some(peer.ip())).await else {
            tracing::debug!(%peer, "connection refused: this client holds its share");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(tcp, peer, trusted, conn, front.clone()));
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, conns.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            open = conns.len(),
            "drain timeout passed with connections still open; closing WebSockets (1001)"
        );
        conns.go_away();
        // Long enough for a tunnel to finish its frame under way and send its close frame.
        let _ = tokio::time::timeout(Duration::from_secs(3), conns.drained()).await;
    }
}

/// What every connection shares.
struct Front {
    acceptor: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    /// A connection with nothing in flight this long is closed.
    idle: Duration,
    /// Connections from trusted proxies start with a PROXY protocol header.
    proxy_protocol: bool,
    sh: Arc<Shared>,
}

/// The connection's address (the PROXY header's source, else the peer), with its client held
/// to its share, then the TLS handshake.
async fn open(
    mut tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    trusted: bool,
    conn: &Conn,
    front: &Front,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    IpAddr,
)> {
    let mut addr = peer.ip();
    if trusted && front.proxy_protocol {
        match proxy_header::read(&mut tcp).await {
            Ok(source) => addr = source.unwrap_or(addr),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection closed: no PROXY protocol header");
                return None;
            }
        }
        if !front.sh.trusted.contains(addr) && !conn.assign(addr) {
            tracing::debug!(%peer, client = %addr, "connection refused: the client holds its share");
            return None;
        }
    }
    match front.acceptor.accept(tcp).await {
        Ok(tls) => Some((tls, addr)),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
    }
}

/// One client connection: TLS, then HTTP until the client leaves, it stays idle too long, or
/// it is asked to close (to make room, or at shutdown).
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    trusted: bool,
    conn: Arc<Conn>,
    front: Arc<Front>,
) {
    let opening = open(tcp, peer, trusted, &conn, &front);
    let (tls, addr) = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, opening) => match r {
            Ok(Some(opened)) => opened,
            _ => return,
        },
        () = conn.info.close.cancelled() => return,
    };
    let _open = front.sh.metrics.connection();
    let svc_conn = conn.clone();
    let sh = front.sh.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sh = sh.clone();
        let conn = svc_conn.clone();
        async move {
            let _busy = conn.info.busy();
            let started = Instant::now();
            let id = RequestId::next();
            let method = req.method().clone();
            // A second handle on the URI's bytes (a reference count), so the route can borrow
            // its path while the request moves on.
            let uri = req.uri().clone();
            let (class, client, mut resp) = dispatch(&sh, req, &uri, addr, &conn).await;
            let took = started.elapsed();
            let status = resp.status();
            sh.metrics.request(class, status.as_u16(), took);
            let line = AccessLine {
                id,
                method: &method,
                uri: &uri,
                status,
                class,
                took,
                peer,
                client,
            };
            line.log();
            let h = resp.headers_mut();
            // Browsers that came once over HTTPS never try plain HTTP for this host again.
            h.insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
            h.insert(request_id::HEADER, id.header());
            Ok::<_, Infallible>(resp)
        }
    });
    let http = front
        .builder
        .serve_connection_with_upgrades(TokioIo::new(tls), svc);
    tokio::pin!(http);
    // Idleness is watched from a task of its own, which asks the connection to close like an
    // eviction does: the connection's own polling, once per request and more, stays as cheap
    // as waiting for that one signal.
    let watch_done = CancellationToken::new();
    let _stop_watch = watch_done.clone().drop_guard();
    tokio::spawn(watch_idle(conn.info.clone(), front.idle, watch_done));
    let mut closing = false;
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = conn.info.close.cancelled(), if !closing => {
                closing = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Asks a connection to close once it has had nothing in flight for `limit`.
async fn watch_idle(info: Arc<ConnInfo>, limit: Duration, done: CancellationToken) {
    loop {
        let left = info
            .idle_for()
            .map_or(limit, |idle| limit.saturating_sub(idle));
        tokio::select! {
            () = tokio::time::sleep(left) => {}
            () = done.cancelled() => return,
        }
        if info.idle_for().is_some_and(|idle| idle >= limit) {
            info.close.cancel();
            return;
        }
    }
}

/// One request's log line, under the target `access`: at debug level
/// (`VOD_LOG=info,access=debug` shows them all), and at info when the server failed it (5xx).
/// Only the path is ever logged: query strings may carry tokens; no header is.
struct AccessLine<'a> {
    id: RequestId,
    method: &'a Method,
    uri: &'a Uri,
    status: StatusCode,
    class: Class,
    took: Duration,
    peer: SocketAddr,
    client: IpAddr,
}

impl AccessLine<'_> {
    fn log(&self) {
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "access",
                    request_id = %self.id,
                    method = %self.method,
                    path = self.uri.path(),
                    status = self.status.as_u16(),
                    class = self.class.as_str(),
                    duration_ms = self.took.as_secs_f64() * 1000.0,
                    peer = %self.peer,
                    client = %self.client,
                    "request"
                )
            };
        }
        if self.status.is_server_error() {
            line!(info);
        } else {
            line!(debug);
        }
    }
}

/// Serves one request. `addr` is the connection's address (see [`open`]); the client is
/// found from it and the request's headers. Says which class of request it was, for the
/// metrics, and who the client was, for the log.
async fn dispatch(
    sh: &Arc<Shared>,
    req: Request<Incoming>,
    uri: &Uri,
    addr: IpAddr,
    conn: &Arc<Conn>,
) -> (Class, IpAddr, Response<Body>) {
    let client = sh.trusted.resolve(addr, req.headers());
    let path = uri.path();
    let site = sh.origins.site(request_host(&req));
    let r = match route(site, req.method(), path) {
        Route::Instance { id, rest } => {
            let r = proxy::handle(sh, id, proxy::Target::Forward(rest), req, &client, conn);
            return (Class::Proxy, client.ip, r.await);
        }
        Route::Own { id, page } => {
            proxy::handle(sh, id, proxy::Target::Own(page), req, &client, conn).await
        }
        Route::Metrics => return (Class::Api, client.ip, api::metrics(sh, &req, client.ip)),
        Route::InstanceBare(id) => {
            let mut loc = format!("/instances/{id}/");
            if let Some(q) = req.uri().query() {
                loc.push('?');
                loc.push_str(q);
            }
            redirect(StatusCode::PERMANENT_REDIRECT, &loc)
        }
        // The documented URL names the public host: the browser goes on to the instance's own
        // origin, with the same path and query (a `tkn` is exchanged for a cookie there).
        Route::HandOff(id) => {
            let mut loc = sh.origins.instance_base(id);
            loc.push_str(path);
            if path == format!("/instances/{id}") {
                loc.push('/');
            }
            if let Some(q) = req.uri().query() {
                loc.push('?');
                loc.push_str(q);
            }
            redirect(StatusCode::TEMPORARY_REDIRECT, &loc)
        }
        Route::InstanceHome => match site {
            Site::Instance(id) => {
                redirect(StatusCode::TEMPORARY_REDIRECT, &format!("/instances/{id}/"))
            }
            _ => Failure::not_found("nothing here").response(),
        },
        Route::BadPath(why) => Failure::bad_request("bad_path", why).response(),
        Route::MethodNotAllowed(allowed) => Failure::method_not_allowed(allowed).response(),
        Route::Console(asset) => crate::console::serve(asset),
        Route::NotFound if matches!(site, Site::Instance(_)) => {
            Failure::not_found("this host serves its instance only, under /instances/<id>/")
                .response()
        }
        Route::NotFound => Failure::not_found("nothing here; the API is under /api/").response(),
        // Boxed: the API's futures are large and rare beside the proxy's, and every request's
        // future is as large as its largest branch.
        api_route => {
            let r = Box::pin(api::handle(sh, api_route, req, client.ip)).await;
            return (Class::Api, client.ip, r);
        }
    };
    (Class::Own, client.ip, r)
}
