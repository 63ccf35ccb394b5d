//! Splices an upgraded (WebSocket) connection between browser and instance. Bytes from the
//! browser count as activity. Upgraded connections leave hyper's connection tracking, so the
//! tunnel watches the shutdown token itself.

use crate::registry::Instance;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const BUF: usize = 16 * 1024;

pub async fn splice(
    client: Upgraded,
    upstream: Upgraded,
    inst: Arc<Instance>,
    shutdown: CancellationToken,
) {
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
    let (mut ur, mut uw) = tokio::io::split(TokioIo::new(upstream));
    let from_client = async {
        let mut buf = vec![0u8; BUF];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            inst.touch();
            uw.write_all(&buf[..n]).await?;
        }
        uw.shutdown().await
    };
    let from_upstream = async {
        tokio::io::copy(&mut ur, &mut cw).await?;
        cw.shutdown().await
    };
    tokio::select! {
        r = async { tokio::try_join!(from_client, from_upstream) } => {
            if let Err(e) = r {
                tracing::debug!(instance = %inst.id, error = %e, "websocket tunnel closed");
            }
        }
        () = shutdown.cancelled() => {}
    }
}
