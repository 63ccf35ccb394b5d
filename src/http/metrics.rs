//! `/metrics`: the Prometheus text format, on the main listener behind the admin token (the
//! API's check) and, with `--metrics-listen`, on a plain HTTP listener of its own for scrapers
//! inside a cluster.

use super::response::full;
use super::Body;
use crate::instance::State;
use crate::shared::Shared;
use http::{header, HeaderValue, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const STATES: [State; 5] = [
    State::Starting,
    State::Running,
    State::Stopping,
    State::Stopped,
    State::Failed,
];

/// The metrics as of now.
pub fn page(sh: &Shared) -> Response<Body> {
    let mut counts = [0usize; STATES.len()];
    for inst in sh.lifecycle.registry.all() {
        let state = inst.state();
        if let Some(i) = STATES.iter().position(|s| *s == state) {
            counts[i] += 1;
        }
    }
    let by_state: Vec<(&'static str, usize)> = STATES
        .iter()
        .zip(counts)
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    let mut r = Response::new(full(sh.metrics.render(&by_state)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Serves `/metrics` (and nothing else) over plain HTTP/1.1 until `shutdown`.
pub async fn serve_plain(listener: TcpListener, sh: Arc<Shared>, shutdown: CancellationToken) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let sh = sh.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let resp = if req.uri().path() == "/metrics" {
                page(&sh)
            } else {
                let mut r = Response::new(full("only /metrics is served here\n"));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            };
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(tcp), svc)
            .into_owned();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}
