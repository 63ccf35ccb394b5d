//! HTTP plumbing shared by the API and the proxy: the body type, origins, the router, and
//! responses; and the front door's bookkeeping of clients: who a client is behind trusted
//! proxies ([`client_addr`]: `X-Forwarded-For`; [`proxy_header`]: the PROXY protocol), its
//! connections ([`conns`]) and its failed token checks ([`guesses`]).

pub mod client_addr;
pub mod conns;
pub mod events;
pub mod failure;
pub mod guesses;
pub mod metrics;
pub mod origin;
pub mod proxy_header;
pub mod request_id;
pub mod response;
pub mod router;

use bytes::Bytes;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: a full buffer, a proxied stream or an event stream.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// The host a request names: `Host` (HTTP/1.1) or the URI authority (HTTP/2).
pub fn request_host<B>(req: &http::Request<B>) -> Option<&str> {
    match req.headers().get(http::header::HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}
