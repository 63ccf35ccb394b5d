//! Server-sent events of one instance's status: a `status` event per change, then `ready` or
//! `failed`, after which the stream ends. Used by the API and by the starting page.

use super::Body;
use crate::instance::State;
use crate::instance::Status;
use crate::registry::Instance;
use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const KEEPALIVE: Duration = Duration::from_secs(15);

/// The `data` of each event.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StatusEvent<'a> {
    pub state: State,
    /// Start progress while starting; the reason when failed.
    pub message: &'a str,
}

/// One event as a client parses it (the document's schema of the stream).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    /// `status`, then `ready` or `failed`.
    #[schema(pattern = "^(status|ready|failed)$")]
    event: String,
    /// A [`StatusEvent`] as JSON.
    data: String,
}

fn event(name: &str, s: &Status) -> Bytes {
    let data = serde_json::to_string(&StatusEvent {
        state: s.state,
        message: &s.message,
    })
    .unwrap_or_default();
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Streams `inst`'s status until it is running or failed, or `max` has passed.
pub fn stream(inst: Arc<Instance>, max: Duration) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let mut status_rx = inst.subscribe();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let s = status_rx.borrow_and_update().clone();
            if tx.send(event("status", &s)).await.is_err() {
                return;
            }
            match s.state {
                State::Running => {
                    let _ = tx.send(event("ready", &s)).await;
                    return;
                }
                State::Failed => {
                    let _ = tx.send(event("failed", &s)).await;
                    return;
                }
                _ => {}
            }
            loop {
                tokio::select! {
                    r = status_rx.changed() => {
                        if r.is_err() { return; }
                        break;
                    }
                    () = tokio::time::sleep(KEEPALIVE) => {
                        if tx.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() { return; }
                    }
                    () = tokio::time::sleep_until(deadline) => return,
                }
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, super::BoxError>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(frames).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
