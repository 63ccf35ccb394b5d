//! Splices an upgraded (WebSocket) connection between browser and instance. Its traffic is not
//! activity: an open VS Code tab sends keepalives and protocol messages by itself for as long
//! as it is open. Upgraded connections leave hyper's connection tracking, so the tunnel watches
//! its connection's close token (shutdown) itself, ends when the access token it was opened
//! with is replaced, and ends after a time with no bytes either way (VS Code's own keepalives
//! come every few seconds, so only a dead tab gets there).

use crate::registry::Instance;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// What ends a tunnel besides either side closing it.
pub struct Ends {
    /// Its connection closes (shutdown, or room made for others).
    pub close: CancellationToken,
    /// The access token that opened it was replaced.
    pub revoked: CancellationToken,
    /// No bytes either way for this long.
    pub idle: Duration,
}

pub async fn splice(client: Upgraded, upstream: Upgraded, inst: Arc<Instance>, ends: Ends) {
    let Ends {
        close,
        revoked,
        idle,
    } = ends;
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Counted {
        io: TokioIo::new(client),
        start,
        last: last.clone(),
    };
    let mut upstream = TokioIo::new(upstream);
    let quiet = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let left = (since + idle).saturating_sub(start.elapsed());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(instance = %inst.id, error = %e, "websocket tunnel closed");
            }
        }
        () = quiet => tracing::debug!(instance = %inst.id, "websocket tunnel idle; closed"),
        () = close.cancelled() => {}
        () = revoked.cancelled() => {
            tracing::info!(instance = %inst.id, "websocket tunnel closed: its access token was replaced");
        }
    }
}

/// The client side of a tunnel, noting when bytes last moved either way (every byte of the
/// tunnel passes through it).
struct Counted {
    io: TokioIo<Upgraded>,
    start: Instant,
    /// Milliseconds after `start`.
    last: Arc<AtomicU64>,
}

impl Counted {
    fn moved(&self, n: usize) {
        if n > 0 {
            self.last
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
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            self.moved(n);
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
