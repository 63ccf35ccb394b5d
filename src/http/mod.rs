//! HTTP plumbing shared by the API and the proxy: the body type, origins, the router, and
//! responses.

pub mod conns;
pub mod events;
pub mod failure;
pub mod guesses;
pub mod metrics;
pub mod origin;
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
