//! The one failure type of request handling, and the one place it becomes a response. Which
//! side failed decides the status: the client (4xx: what to fix), the instance (502, 503, 504,
//! with `Retry-After` where waiting helps), or this server (500). Handlers return it with `?`;
//! the body is `{"error": "<code>", "message": "<what to fix>"}`.

use super::response::error;
use super::Body;
use crate::lifecycle::StartError;
use http::{header, HeaderValue, Response, StatusCode};

/// Who failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Instance,
    Ours,
}

#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    retry_after: Option<&'static str>,
    header: Option<(header::HeaderName, &'static str)>,
}

impl Failure {
    fn new(status: StatusCode, code: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.to_string(),
            retry_after: None,
            header: None,
        }
    }

    /// The client sent something to fix: `status` is a 4xx.
    pub fn client(
        status: StatusCode,
        code: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Self {
        debug_assert!(status.is_client_error());
        Self::new(status, code, message)
    }

    pub fn bad_request(code: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl std::fmt::Display) -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed(allowed: &'static str) -> Self {
        let mut f = Self::client(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("use {allowed}"),
        );
        f.header = Some((header::ALLOW, allowed));
        f
    }

    pub fn unauthorized(message: impl std::fmt::Display, challenge: Option<&'static str>) -> Self {
        let mut f = Self::client(StatusCode::UNAUTHORIZED, "unauthorized", message);
        f.header = challenge.map(|c| (header::WWW_AUTHENTICATE, c));
        f
    }

    /// Too many failed token checks from this client.
    pub fn rate_limited() -> Self {
        Self::client(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed token checks; wait a minute",
        )
        .retry_after("60")
    }

    /// The instance could not answer: `status` is 502, 503 or 504.
    pub fn instance(
        status: StatusCode,
        code: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Self {
        debug_assert!(status.is_server_error());
        Self::new(status, code, message)
    }

    /// This server failed.
    pub fn ours(code: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, message)
    }

    pub fn retry_after(mut self, secs: &'static str) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn side(&self) -> Side {
        if self.status.is_client_error() {
            Side::Client
        } else if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            Side::Ours
        } else {
            Side::Instance
        }
    }

    /// The JSON response.
    pub fn response(&self) -> Response<Body> {
        let mut r = error(self.status, &self.code, &self.message);
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        if let Some((name, value)) = &self.header {
            r.headers_mut()
                .insert(name.clone(), HeaderValue::from_static(value));
        }
        r
    }
}

/// A start that did not finish: the instance failed (502), or is not ready in time (503).
impl From<StartError> for Failure {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Failed(_) => {
                Self::instance(StatusCode::BAD_GATEWAY, "start_failed", e).retry_after("5")
            }
            _ => Self::instance(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e).retry_after("5"),
        }
    }
}

impl Failure {
    /// The same as a page, for a browser that navigated here.
    pub fn page(&self) -> Response<Body> {
        let reason = self.status.canonical_reason().unwrap_or("Error");
        let body = format!(
            "<p>{}</p><p>Reload the page to try again.</p>",
            super::response::escape(&self.message)
        );
        let mut r = super::response::html(self.status, super::response::page(reason, &body));
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        r
    }
}

impl From<Failure> for Response<Body> {
    fn from(f: Failure) -> Self {
        f.response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_side_decides_the_status_and_headers_follow() {
        let f = Failure::rate_limited();
        assert_eq!(f.side(), Side::Client);
        let r = f.response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "60");
        let r = Failure::method_not_allowed("GET, POST").response();
        assert_eq!(r.headers()[header::ALLOW], "GET, POST");
        let f = Failure::from(StartError::Failed("exit 1".into()));
        assert_eq!(
            (f.side(), f.status),
            (Side::Instance, StatusCode::BAD_GATEWAY)
        );
        assert_eq!(Failure::ours("x", "y").side(), Side::Ours);
    }
}
