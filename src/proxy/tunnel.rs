//! Splices an upgraded (WebSocket) connection between browser and instance. Its traffic is not
//! activity: an open VS Code tab sends keepalives and protocol messages by itself for as long
//! as it is open. Upgraded connections leave hyper's connection tracking, so the tunnel ends by
//! itself: when the access token it was opened with is replaced, after a time with no bytes
//! either way (VS Code's own keepalives come every few seconds, so only a dead tab gets there),
//! and at the server's drain deadline, where the browser gets a close frame with status 1001
//! ("going away") after the frame under way.

use super::frames::{FrameCursor, GOING_AWAY};
use crate::metrics::Metrics;
use crate::registry::Instance;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

/// How long the frame under way at the drain deadline may take to finish before the tunnel is
/// cut without a close frame.
const FINISH_FRAME: Duration = Duration::from_secs(2);

/// What ends a tunnel besides either side closing it.
pub struct Ends {
    /// The server's drain deadline passed.
    pub going_away: CancellationToken,
    /// The access token that opened it was replaced.
    pub revoked: CancellationToken,
    /// No bytes either way for this long.
    pub idle: Duration,
}

pub async fn splice(
    client: Upgraded,
    upstream: Upgraded,
    inst: Arc<Instance>,
    ends: Ends,
    metrics: Arc<Metrics>,
) {
    let _open = metrics.tunnel();
    let Ends {
        going_away,
        revoked,
        idle,
    } = ends;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        last: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        at_boundary: AtomicBool::new(true),
    });
    let mut client = Counted {
        io: TokioIo::new(client),
        start,
        shared: shared.clone(),
        frames: FrameCursor::default(),
        metrics,
    };
    let mut upstream = TokioIo::new(upstream);
    let quiet = async {
        loop {
            let since = Duration::from_millis(shared.last.load(Ordering::Relaxed));
            let left = (since + idle).saturating_sub(start.elapsed());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    // Boxed so it can be dropped, ending its borrows, before the close frame is written.
    let mut copy = Box::pin(tokio::io::copy_bidirectional(&mut client, &mut upstream));
    tokio::select! {
        r = &mut copy => {
            if let Err(e) = r {
                tracing::debug!(instance = %inst.id, error = %e, "websocket tunnel closed");
            }
            return;
        }
        () = quiet => {
            tracing::debug!(instance = %inst.id, "websocket tunnel idle; closed");
            return;
        }
        () = revoked.cancelled() => {
            tracing::info!(instance = %inst.id, "websocket tunnel closed: its access token was replaced");
            return;
        }
        () = going_away.cancelled() => {}
    }
    // From here the browser gets no byte past the end of the frame under way; once that is out,
    // copying stops and the close frame follows.
    shared.closing.store(true, Ordering::Relaxed);
    if !shared.at_boundary.load(Ordering::Relaxed) {
        let _ = tokio::time::timeout(FINISH_FRAME, &mut copy).await;
    }
    drop(copy);
    if client.frames.at_boundary() {
        let _ = tokio::time::timeout(FINISH_FRAME, async {
            client.io.write_all(&GOING_AWAY).await?;
            client.io.shutdown().await
        })
        .await;
        tracing::debug!(instance = %inst.id, "websocket tunnel closed at the drain deadline (1001)");
    }
}

/// What the tunnel and its client side share while the copy runs.
struct Shared {
    /// Milliseconds after the tunnel's start when bytes last moved either way.
    last: AtomicU64,
    /// Set at the drain deadline: writes to the browser stop at the next frame's end.
    closing: AtomicBool,
    at_boundary: AtomicBool,
}

/// The client side of a tunnel: notes when bytes last moved either way (every byte of the
/// tunnel passes through it) and where the frames sent to the browser end.
struct Counted {
    io: TokioIo<Upgraded>,
    start: Instant,
    shared: Arc<Shared>,
    frames: FrameCursor,
    metrics: Arc<Metrics>,
}

impl Counted {
    fn moved(&self, n: usize) {
        if n > 0 {
            self.shared
                .last
                .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.moved(n);
        self.metrics.bytes_to_instance(n as u64);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let closing = self.shared.closing.load(Ordering::Relaxed);
        // Closing: only what finishes the frame under way; at its end the copy is refused.
        let allowed = if closing {
            self.frames.clone().pass(data, true)
        } else {
            data.len()
        };
        if closing && allowed == 0 && !data.is_empty() {
            return Poll::Ready(Err(std::io::Error::other("going away")));
        }
        let r = Pin::new(&mut self.io).poll_write(cx, &data[..allowed]);
        if let Poll::Ready(Ok(n)) = r {
            self.moved(n);
            self.metrics.bytes_to_client(n as u64);
            self.frames.pass(&data[..n], false);
            let at = self.frames.at_boundary();
            self.shared.at_boundary.store(at, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
