//! Reaching instances: a connection to an instance's address (TCP or Unix socket) with an
//! HTTP/1.1 handshake, and the keep-alive pool the proxy sends requests through. The local
//! backend's readiness probes connect the same way.

use crate::instance::UpstreamAddr;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The readiness probes' connect timeout; the proxy's is configured.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle connection is reused when the instance does not say (`Keep-Alive:
/// timeout=N`): below Node's default of 5 s, which VS Code's servers keep. A server that closes
/// an idle connection just as a request is written to it breaks that request, and nothing can
/// resend it, so the proxy stops reusing a connection before the instance would close it.
const DEFAULT_REUSE: Duration = Duration::from_secs(4);

/// Kept off an instance's own keep-alive timeout: its timer starts when a response ends, this
/// one at the response head, plus a margin for a write that is scheduled late.
const REUSE_MARGIN: Duration = Duration::from_secs(1);

/// A pooled connection and the instant after which it is not handed out again.
struct Pooled {
    conn: SendRequest<Incoming>,
    reuse_until: Instant,
}

type Pool = HashMap<UpstreamAddr, Vec<Pooled>, foldhash::fast::RandomState>;

/// Keep-alive HTTP/1.1 connections to instances, by address (TCP or Unix socket).
///
/// A connection is handed out only while idle (its previous response read to the end), so a
/// long response never holds up another request; while all are busy, another is opened. A
/// connection the instance closed, or one idle for as long as the instance keeps connections
/// open (see [`DEFAULT_REUSE`]), is dropped when next looked at, and a request that could not
/// be written to one goes to the next. hyper-util's pooled client does the same with more
/// work per request (hashing its pool key, a checkout racing a connect): a fifth of the proxy
/// path's instructions in profiles (bench/README.md).
///
/// A connection must be made within the connect timeout and a response head must come
/// within the response timeout, so a hung instance does not hold its clients forever.
pub struct UpstreamClient {
    // foldhash: two lookups per request, keyed by addresses the orchestrators chose.
    idle: Mutex<Pool>,
    returns: AtomicUsize,
    connect_timeout: Duration,
    response_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {0}: {1}")]
    Connect(UpstreamAddr, std::io::Error),
    #[error("cannot connect to {0}: timed out")]
    ConnectTimeout(UpstreamAddr),
    #[error("no response within {0:?}")]
    ResponseTimeout(Duration),
    #[error("{}", with_cause(.0))]
    Http(#[from] hyper::Error),
}

/// hyper's message names the step that failed ("error writing a body to connection"); its
/// cause says why (a broken pipe, a reset).
fn with_cause(e: &hyper::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl UpstreamError {
    /// The instance took too long (rather than refusing or breaking the exchange).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout(_) | UpstreamError::ResponseTimeout(_)
        )
    }
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        Self {
            idle: Mutex::default(),
            returns: AtomicUsize::new(0),
            connect_timeout,
            response_timeout,
        }
    }

    /// Sends a request (its URI in origin form, its `Host` set) to the instance at `addr` and
    /// returns the response head, within the response timeout.
    pub async fn request(
        &self,
        addr: &UpstreamAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        tokio::time::timeout(self.response_timeout, self.exchange(addr, req))
            .await
            .map_err(|_| UpstreamError::ResponseTimeout(self.response_timeout))?
    }

    async fn exchange(
        &self,
        addr: &UpstreamAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // After an upgrade the connection belongs to the tunnel.
        let reusable = !req.headers().contains_key(http::header::UPGRADE);
        while let Some(mut conn) = self.take(addr) {
            match conn.try_send_request(req).await {
                Ok(resp) => {
                    if reusable {
                        self.put(addr, conn, &resp);
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the connection had gone; the next one gets the request.
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: connecting is rare beside reusing, and its future is large.
        let mut conn = Box::pin(connect_within(addr, self.connect_timeout)).await?;
        let resp = conn.send_request(req).await?;
        if reusable {
            self.put(addr, conn, &resp);
        }
        Ok(resp)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Pool> {
        // Each critical section leaves the map consistent, so a poisoned lock is still usable.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, addr: &UpstreamAddr) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle();
        let conns = idle.get_mut(addr)?;
        let now = Instant::now();
        conns.retain(|c| !c.conn.is_closed() && c.reuse_until > now);
        let found = conns.iter().position(|c| c.conn.is_ready());
        let conn = found.map(|i| conns.swap_remove(i).conn);
        if conns.is_empty() {
            idle.remove(addr);
        }
        conn
    }

    /// Pools `conn` for as long as `resp` says the instance keeps it open.
    fn put(&self, addr: &UpstreamAddr, conn: SendRequest<Incoming>, resp: &Response<Incoming>) {
        let reuse = reuse_window(resp.headers());
        if reuse.is_zero() {
            return;
        }
        let conn = Pooled {
            conn,
            reuse_until: Instant::now() + reuse,
        };
        let mut idle = self.idle();
        // Looked up by reference: only a new entry pays for a key of its own.
        match idle.get_mut(addr) {
            Some(conns) => conns.push(conn),
            None => {
                idle.insert(addr.clone(), vec![conn]);
            }
        }
        // Now and then, forget connections to instances that are gone (stopped, moved).
        if self.returns.fetch_add(1, Ordering::Relaxed) % 4096 == 0 {
            idle.retain(|_, conns| {
                conns.retain(|c| !c.conn.is_closed());
                !conns.is_empty()
            });
        }
    }
}

/// How long a connection whose response carried `headers` may be reused: the instance's own
/// `Keep-Alive: timeout=N` less [`REUSE_MARGIN`], else [`DEFAULT_REUSE`]; never longer than a
/// minute, so a stale connection is not kept on an instance's word.
fn reuse_window(headers: &http::HeaderMap) -> Duration {
    let Some(v) = headers.get(KEEP_ALIVE) else {
        return DEFAULT_REUSE;
    };
    let timeout = v.to_str().ok().and_then(|v| {
        v.split(',')
            .find_map(|p| p.trim().strip_prefix("timeout="))
            .and_then(|n| n.trim().parse::<u64>().ok())
    });
    match timeout {
        Some(secs) => Duration::from_secs(secs.min(60)).saturating_sub(REUSE_MARGIN),
        None => DEFAULT_REUSE,
    }
}

const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");

/// Opens a new HTTP/1.1 connection to an instance (the readiness probe uses it too, so a
/// ready instance is one the proxy can reach).
pub async fn connect<B>(addr: &UpstreamAddr) -> Result<SendRequest<B>, UpstreamError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    connect_within(addr, PROBE_CONNECT_TIMEOUT).await
}

async fn connect_within<B>(
    addr: &UpstreamAddr,
    timeout: Duration,
) -> Result<SendRequest<B>, UpstreamError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match addr {
        UpstreamAddr::Tcp(a) => {
            let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout(addr.clone()))?
                .map_err(|e| UpstreamError::Connect(addr.clone(), e))?;
            let _ = tcp.set_nodelay(true);
            handshake(addr, tcp).await
        }
        UpstreamAddr::Unix(p) => {
            let unix = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(p))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout(addr.clone()))?
                .map_err(|e| UpstreamError::Connect(addr.clone(), e))?;
            handshake(addr, unix).await
        }
    }
}

async fn handshake<S, B>(addr: &UpstreamAddr, io: S) -> Result<SendRequest<B>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let addr = addr.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "instance connection ended with an error");
        }
    });
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(v: Option<&str>) -> Duration {
        let mut h = http::HeaderMap::new();
        if let Some(v) = v {
            h.insert(KEEP_ALIVE, http::HeaderValue::from_str(v).unwrap());
        }
        reuse_window(&h)
    }

    #[test]
    fn a_connection_is_reused_for_less_than_the_instance_keeps_it() {
        assert_eq!(window(None), DEFAULT_REUSE);
        assert_eq!(window(Some("timeout=5")), Duration::from_secs(4));
        assert_eq!(window(Some("max=100, timeout=2")), Duration::from_secs(1));
        assert_eq!(window(Some("timeout=1")), Duration::ZERO);
        assert_eq!(window(Some("timeout=0")), Duration::ZERO);
        assert_eq!(window(Some("timeout=86400")), Duration::from_secs(59));
        assert_eq!(window(Some("timeout=soon")), DEFAULT_REUSE);
    }
}
