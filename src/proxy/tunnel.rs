//! Splices an upgraded (WebSocket) connection between browser and instance. Its traffic is not
//! activity: an open VS Code tab sends keepalives and protocol messages by itself for as long
//! as it is open. Upgraded connections leave hyper's connection tracking, so the tunnel watches
//! the shutdown token itself.

use crate::registry::Instance;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn splice(
    client: Upgraded,
    upstream: Upgraded,
    inst: Arc<Instance>,
    shutdown: CancellationToken,
) {
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(instance = %inst.id, error = %e, "websocket tunnel closed");
            }
        }
        () = shutdown.cancelled() => {}
    }
}
