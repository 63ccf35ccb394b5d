//! The listener: accept, TLS handshake (bounded), HTTP/1.1 or HTTP/2 by ALPN with upgrades,
//! dispatch to the API or the proxy, and graceful shutdown with a drain deadline.

use crate::http::origin::Site;
use crate::http::response::{error, html, page};
use crate::http::router::{route, Route};
use crate::http::{request_host, Body};
use crate::state::Shared;
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
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServerLimits {
    pub max_connections: usize,
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
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
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
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let sh = sh.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = hyper::service::service_fn(move |req| {
                let sh = sh.clone();
                async move { Ok::<_, Infallible>(dispatch(&sh, req, peer).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout passed with connections still open");
    }
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = Response::new(crate::http::response::empty());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn dispatch(sh: &Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    // Only the path is ever logged: query strings may carry tokens.
    tracing::debug!(method = %req.method(), path = req.uri().path(), %peer, "request");
    let path = req.uri().path().to_owned();
    let site = sh.origins.site(request_host(&req));
    match route(site, req.method(), &path) {
        Route::Instance { id, rest } => proxy::handle(sh, id, rest, req, peer.ip()).await,
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
            loc.push_str(&path);
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
            Site::Instance(id) => redirect(StatusCode::TEMPORARY_REDIRECT, &format!("/instances/{id}/")),
            _ => error(StatusCode::NOT_FOUND, "not_found", "nothing here"),
        },
        Route::BadPath(why) => error(StatusCode::BAD_REQUEST, "bad_path", why),
        Route::MethodNotAllowed(allowed) => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("use {allowed}"));
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
            r
        }
        Route::Root => html(
            StatusCode::OK,
            page(
                "vscode-on-demand",
                "<p>VS Code in the browser, on demand. The management API is at <code>/api/</code>; \
                 open an instance with the URL printed when it was created.</p>",
            ),
        ),
        Route::NotFound if matches!(site, Site::Instance(_)) => {
            error(StatusCode::NOT_FOUND, "not_found", "this host serves its instance only, under /instances/<id>/")
        }
        Route::NotFound => error(StatusCode::NOT_FOUND, "not_found", "nothing here; the API is under /api/"),
        api_route => api::handle(sh, api_route, req, peer.ip()).await,
    }
}
