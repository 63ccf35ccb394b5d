//! Reaching instances over HTTP/1.1 at their address (TCP or Unix socket): proxied requests
//! through our own client ([`h1`], with [`head`] and [`framing`]) and its keep-alive pool;
//! readiness probes and WebSocket handshakes through hyper's client, on connections of their
//! own.

mod driven;
mod framing;
mod h1;
mod head;
mod pool;

use crate::instance::UpstreamAddr;
pub use driven::DrivenBody;
use h1::Stream;
use http::{HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use pool::{Home, Pool};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio_util::either::Either;

/// The readiness probes' connect timeout; the proxy's is configured.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle connection is reused when the instance does not say (`Keep-Alive:
/// timeout=N`): below Node's default of 5 s, which VS Code's servers keep. A server that closes
/// an idle connection just as a request is written to it breaks that request, and nothing can
/// resend it, so the proxy stops reusing a connection before the instance would close it.
const DEFAULT_REUSE: Duration = Duration::from_secs(4);

/// Kept off an instance's own keep-alive timeout: its timer starts when a response ends, this
/// one when the request was sent, plus a margin for a write that is scheduled late.
const REUSE_MARGIN: Duration = Duration::from_secs(1);

/// Keep-alive HTTP/1.1 connections to instances, by address (TCP or Unix socket).
///
/// A connection is handed out only while idle (its previous exchange complete both ways), so a
/// long response never holds up another request; while all are busy, another is opened. A
/// connection the instance closed, or one idle for as long as the instance keeps connections
/// open (see [`DEFAULT_REUSE`]), is dropped when next looked at. Requests are written and
/// responses read by the task that sends them ([`h1`], [`driven`]). hyper-util's pooled client
/// does the same with more work per request (hashing its pool key, a checkout racing a
/// connect, a task per connection).
///
/// A connection must be made within the connect timeout and a response head must come
/// within the response timeout, so a hung instance does not hold its clients forever.
pub struct UpstreamClient {
    pool: Arc<Pool>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

/// What a proxied request becomes on its way to the instance, written as its head is: the
/// path in pieces (the query follows from the request's URI), and headers that replace any of
/// the request's own of the same name.
pub struct Outgoing<'a> {
    pub path: [&'a str; 3],
    pub set: &'a [Replace],
}

/// A header set on a request on its way to the instance in place of the client's own of that
/// name (`None`: removed).
pub type Replace = (HeaderName, Option<HeaderValue>);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {0}: {1}")]
    Connect(UpstreamAddr, std::io::Error),
    #[error("cannot connect to {0}: timed out")]
    ConnectTimeout(UpstreamAddr),
    #[error("no response within {0:?}")]
    ResponseTimeout(Duration),
    #[error("the instance closed the connection without answering")]
    Closed,
    #[error("the instance closed the connection before the end of its response")]
    Truncated,
    #[error("the connection to the instance failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("the instance's response is not valid HTTP/1.1: {0}")]
    Protocol(String),
    #[error(transparent)]
    Framing(#[from] framing::FramingError),
    #[error("the request body could not be forwarded: {0}")]
    RequestBody(String),
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
            pool: Arc::default(),
            connect_timeout,
            response_timeout,
        }
    }

    /// Sends a request to the instance at `addr`, as `outgoing` says (its path, the headers
    /// set on it), and returns the response head, within the response timeout. The body
    /// drives the connection as it is read, and returns it to the pool at its end.
    pub async fn request(
        &self,
        addr: &UpstreamAddr,
        req: Request<Incoming>,
        outgoing: Outgoing<'_>,
    ) -> Result<Response<DrivenBody>, UpstreamError> {
        let started = tokio::time::Instant::now();
        let mut conn = loop {
            match self.pool.take(addr) {
                // One the instance closed meanwhile is dropped here; the next is tried.
                Some(mut conn) => {
                    if poll_fn(|cx| Poll::Ready(conn.is_idle(cx))).await {
                        break conn;
                    }
                }
                // Boxed: connecting is rare beside reusing, and its future is large.
                None => {
                    let io = Box::pin(open(addr, self.connect_timeout)).await?;
                    break Box::new(h1::Conn::new(io));
                }
            }
        };
        // The connection's own timer: no timer per request (connecting has a timeout of its own).
        conn.set_deadline(started + self.response_timeout);
        conn.start(req, &outgoing);
        let head = poll_fn(|cx| conn.poll_head_in_time(cx))
            .await
            .ok_or(UpstreamError::ResponseTimeout(self.response_timeout))??;
        let window = reuse_window(head.headers());
        let home = Home {
            pool: self.pool.clone(),
            addr: addr.clone(),
            reuse_until: (!window.is_zero()).then(|| started.into_std() + window),
        };
        let (parts, ()) = head.into_parts();
        Ok(Response::from_parts(parts, DrivenBody::new(conn, home)))
    }

    /// Sends a WebSocket handshake to the instance at `addr` on a connection of its own, which
    /// becomes the tunnel's if the instance agrees; within the response timeout.
    pub async fn upgrade(
        &self,
        addr: &UpstreamAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let exchange = async {
            let mut conn = connect_within(addr, self.connect_timeout).await?;
            Ok(conn.send_request(req).await?)
        };
        tokio::time::timeout(self.response_timeout, exchange)
            .await
            .map_err(|_| UpstreamError::ResponseTimeout(self.response_timeout))?
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

/// A new connection whose task of its own drives it (probes, WebSocket handshakes).
async fn connect_within<B>(
    addr: &UpstreamAddr,
    timeout: Duration,
) -> Result<SendRequest<B>, UpstreamError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = open(addr, timeout).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let addr = addr.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "instance connection ended with an error");
        }
    });
    Ok(send)
}

/// The instance's socket, connected within `timeout`.
async fn open(addr: &UpstreamAddr, timeout: Duration) -> Result<Stream, UpstreamError> {
    let timed_out = |_| UpstreamError::ConnectTimeout(addr.clone());
    let failed = |e| UpstreamError::Connect(addr.clone(), e);
    Ok(match addr {
        UpstreamAddr::Tcp(a) => {
            let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a))
                .await
                .map_err(timed_out)?
                .map_err(failed)?;
            let _ = tcp.set_nodelay(true);
            Either::Left(tcp)
        }
        UpstreamAddr::Unix(p) => Either::Right(
            tokio::time::timeout(timeout, tokio::net::UnixStream::connect(p))
                .await
                .map_err(timed_out)?
                .map_err(failed)?,
        ),
    })
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
