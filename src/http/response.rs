//! Building responses: JSON, errors in the `{"error", "message"}` shape, HTML pages.

use super::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    with_type(status, "application/json", full(json_bytes(value)))
}

/// `value` as JSON and a newline.
pub fn json_bytes(value: &impl serde::Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// JSON already serialized.
pub fn json_raw(status: StatusCode, bytes: &'static [u8]) -> Response<Body> {
    with_type(status, "application/json", full(bytes))
}

/// Every failure: a stable code and a message saying what to fix.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code: `unauthorized`, `not_found`, `invalid_<field>` (the field that is
    /// wrong), `invalid_json`, `not_running`, `too_many_instances`, `start_failed`, …
    pub error: String,
    pub message: String,
}

/// An error a client can act on: a stable code and a message saying what to fix.
pub fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response<Body> {
    json(
        status,
        &ErrorBody {
            error: code.to_owned(),
            message: message.to_string(),
        },
    )
}

/// Our own pages: no framing by others, no referrer, scripts only from this origin.
pub fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut r = with_type(status, "text/html; charset=utf-8", full(page));
    confine_page(
        r.headers_mut(),
        "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    );
    r
}

/// The headers every page of ours carries: its content security policy, no referrer, and
/// no content-type sniffing.
pub fn confine_page(h: &mut http::HeaderMap, csp: &'static str) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

pub fn with_header(
    mut r: Response<Body>,
    name: header::HeaderName,
    value: HeaderValue,
) -> Response<Body> {
    r.headers_mut().insert(name, value);
    r
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A small styled page with a title and a paragraph of (already escaped) HTML.
pub fn page(title: &str, body_html: &str) -> String {
    format!(
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>{t}</title><style>body{{font:16px system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}}\
         h1{{font-size:1.4em}}code{{background:#eee;padding:0 .2em}}</style><h1>{t}</h1>{body_html}</html>",
        t = escape(title)
    )
}

/// A redirect that is not cached and sends no `Referer` onwards (the URL it leaves may have
/// carried a token). `location` comes from a parsed URI, so it is a valid header value.
pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}
