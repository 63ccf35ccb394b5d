//! Request ids: 16 hex digits, a random prefix chosen when the server starts followed by a
//! counter, so they are unique across restarts and replicas without a random draw per request.
//! Sent back as `x-request-id` and written in the request's log line.
//!
//! An `x-request-id` a client sends is not trusted: ids are always ours, so a client cannot
//! make its requests' log lines pass for another's, or fill logs with text of its choosing.

use http::HeaderValue;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub const HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");

static COUNTER: AtomicU32 = AtomicU32::new(0);
static PREFIX: OnceLock<u32> = OnceLock::new();

/// A fresh request id.
#[derive(Clone, Copy)]
pub struct RequestId([u8; 16]);

impl RequestId {
    pub fn next() -> Self {
        let prefix = *PREFIX.get_or_init(rand::random::<u32>);
        let n = (u64::from(prefix) << 32) | u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            let nibble = (n >> (60 - 4 * i)) & 0xf;
            *b = b"0123456789abcdef"[nibble as usize];
        }
        Self(out)
    }

    pub fn as_str(&self) -> &str {
        // Hex digits only: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn header(&self) -> HeaderValue {
        // Hex digits only: always a valid header value.
        HeaderValue::from_bytes(&self.0).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_differ() {
        let (a, b) = (RequestId::next(), RequestId::next());
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), 16);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.header().to_str().unwrap(), a.as_str());
    }
}
