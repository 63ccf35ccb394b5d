//! HTTP plumbing shared by the API and the proxy: the body type, the router, and responses.

pub mod events;
pub mod response;
pub mod router;

use bytes::Bytes;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: a full buffer, a proxied stream or an event stream.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
