//! Whether a local instance is ready: it is probed over the same kind of connection the proxy
//! uses until it answers, and a start that ends early is reported with what the instance
//! printed last.

use super::{OrchestratorError, Phase, Progress, Result};
use crate::instance::UpstreamAddr;
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;

/// Between readiness probes. A held request waits for the probe that follows the instance's
/// readiness, so this bounds the wake overhead; a probe of a port nobody listens on yet is one
/// refused connect.
const PROBE_INTERVAL: Duration = Duration::from_millis(2);
/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the instance at `addr` answers `GET path`, or fails with its last output when
/// `exited` says it ended.
pub(super) async fn wait_ready(
    addr: &UpstreamAddr,
    path: &str,
    exited: &mut oneshot::Receiver<String>,
    log: &Path,
    progress: &Progress,
) -> Result<()> {
    loop {
        if let Ok(reason) = exited.try_recv() {
            return Err(OrchestratorError::StartFailed(format!(
                "{reason}; last output: {}",
                log_tail(log)
            )));
        }
        if answers(addr, path, progress).await {
            return Ok(());
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Whether the instance answers `GET path` below 500, over the connection the proxy would use;
/// once it accepts the connection it listens.
async fn answers(addr: &UpstreamAddr, path: &str, progress: &Progress) -> bool {
    let probe = async {
        let mut conn = crate::upstream::connect(addr).await.ok()?;
        progress.reached(Phase::Listening);
        let req = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        let resp = conn.send_request(req).await.ok()?;
        Some(resp.status().as_u16() < 500)
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// The last few lines a failed instance printed, for its failure reason.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "(nothing)".into()
    } else {
        tail.chars().take(1000).collect()
    }
}
