//! The console at `/`: one page, its script and its style, compiled into the binary (no build
//! step, nothing from elsewhere), served under a strict Content-Security-Policy. It signs in
//! with the admin token, which the page keeps in the tab's sessionStorage and sends as a
//! bearer token to the API; it never becomes a cookie or part of a URL.

use crate::http::response::{confine_page, full};
use crate::http::Body;
use http::{header, HeaderValue, Response, StatusCode};

/// The console's files under `/console/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Page,
    Script,
    Style,
}

impl Asset {
    /// The asset at `path`, if it is one.
    pub fn at(path: &str) -> Option<Asset> {
        match path {
            "/" => Some(Asset::Page),
            "/console/app.js" => Some(Asset::Script),
            "/console/app.css" => Some(Asset::Style),
            _ => None,
        }
    }
}

/// Scripts and styles from this origin only, requests to it only, no forms posted anywhere,
/// no framing, no plugins, no `<base>`.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; \
    base-uri 'none'";

pub fn serve(asset: Asset) -> Response<Body> {
    let (body, ctype): (&'static str, &'static str) = match asset {
        Asset::Page => (include_str!("index.html"), "text/html; charset=utf-8"),
        Asset::Script => (include_str!("app.js"), "text/javascript; charset=utf-8"),
        Asset::Style => (include_str!("app.css"), "text/css; charset=utf-8"),
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    confine_page(h, CSP);
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}
