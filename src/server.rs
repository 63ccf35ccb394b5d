//! The listener: accept within the connection caps ([`crate::http::conns`]), TLS handshake (bounded),
//! HTTP/1.1 or HTTP/2 by ALPN with upgrades and bounded heads, idle connections closed,
//! dispatch to the API or the proxy, and graceful shutdown with a drain deadline.

use crate::http::failure::Failure;
use crate::http::origin::Site;
use crate::http::response::redirect;
use crate::http::router::{route, Route};
use crate::http::{request_host, Body};
use crate::shared::Shared;
use crate::{api, proxy};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::http::conns::{Conn, ConnInfo, ConnLimits, Conns};

/// A year; not `includeSubDomains`, which would bind hosts under the public name that this
/// server does not serve.
const HSTS: &str = "max-age=31536000";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Slow headers: a request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServerLimits {
    pub conns: ConnLimits,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list); larger ones get 431.
    pub max_header_bytes: usize,
    pub drain_timeout: Duration,
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
    let acceptor = TlsAcceptor::from(tls);
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
    let builder = Arc::new(builder);
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
        // there is any), so the listener's backlog absorbs the rest.
        let Some(conn) = conns.admit(peer.ip()).await else {
            tracing::debug!(%peer, "connection refused: this client holds its share");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let sh = sh.clone();
        let builder = builder.clone();
        let idle = conns.limits().idle;
        tokio::spawn(serve_connection(
            tcp, peer, conn, idle, acceptor, sh, builder,
        ));
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

/// One client connection: TLS, then HTTP until the client leaves, it stays idle too long, or
/// it is asked to close (to make room, or at shutdown).
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    conn: Arc<Conn>,
    idle_limit: Duration,
    acceptor: TlsAcceptor,
    sh: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    let tls = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
        () = conn.info.close.cancelled() => return,
    };
    let svc_conn = conn.clone();
    let svc = hyper::service::service_fn(move |req| {
        let sh = sh.clone();
        let conn = svc_conn.clone();
        async move {
            let _busy = conn.info.busy();
            let mut resp = dispatch(&sh, req, peer, &conn).await;
            // Browsers that came once over HTTPS never try plain HTTP for this host again.
            resp.headers_mut().insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(HSTS),
            );
            Ok::<_, Infallible>(resp)
        }
    });
    let http = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
    tokio::pin!(http);
    // Idleness is watched from a task of its own, which asks the connection to close like an
    // eviction does: the connection's own polling, once per request and more, stays as cheap
    // as waiting for that one signal.
    let watch_done = CancellationToken::new();
    let _stop_watch = watch_done.clone().drop_guard();
    tokio::spawn(watch_idle(conn.info.clone(), idle_limit, watch_done));
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

async fn dispatch(
    sh: &Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
    conn: &Arc<Conn>,
) -> Response<Body> {
    // Only the path is ever logged: query strings may carry tokens.
    tracing::debug!(method = %req.method(), path = req.uri().path(), %peer, "request");
    // A second handle on the URI's bytes (a reference count), so the route can borrow its path
    // while the request moves on.
    let uri = req.uri().clone();
    let path = uri.path();
    let site = sh.origins.site(request_host(&req));
    match route(site, req.method(), path) {
        Route::Instance { id, rest } => {
            proxy::handle(sh, id, proxy::Target::Forward(rest), req, peer.ip(), conn).await
        }
        Route::Own { id, page } => {
            proxy::handle(sh, id, proxy::Target::Own(page), req, peer.ip(), conn).await
        }
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
        api_route => Box::pin(api::handle(sh, api_route, req, peer.ip())).await,
    }
}
