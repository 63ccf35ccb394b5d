//! Adds the activity script to HTML pages the instance serves to navigations.
//!
//! The navigation's request goes upstream without `Accept-Encoding`, so the page comes back
//! uncompressed; it is read whole (pages are small; a larger one passes through untouched),
//! gets the `<script>` element before `</head>` (else at the start of the body, else at the
//! end) and a new `Content-Length`.

use crate::http::{Body, BoxError};
use crate::upstream::{DrivenBody, UpstreamError};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::{header, response, HeaderValue, StatusCode};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;

/// Largest page that gets the script. VS Code's is a few KiB.
const MAX_PAGE: usize = 2 << 20;

/// Whether a response is a page to add the script to: an uncompressed HTML document.
pub fn wanted(parts: &response::Parts) -> bool {
    let html = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/html")
        });
    let identity = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"));
    let has_body = parts.status.is_success()
        && parts.status != StatusCode::NO_CONTENT
        && parts.status != StatusCode::PARTIAL_CONTENT;
    html && identity && has_body
}

/// Where the element goes: before `</head>`, else right after `<body …>`, else at the end.
fn position(page: &[u8]) -> usize {
    let find = |needle: &[u8]| {
        page.windows(needle.len())
            .position(|w| w.eq_ignore_ascii_case(needle))
    };
    if let Some(i) = find(b"</head>") {
        return i;
    }
    if let Some(i) = find(b"<body") {
        if let Some(end) = page[i..].iter().position(|&c| c == b'>') {
            return i + end + 1;
        }
    }
    page.len()
}

/// The page with `tag` inserted.
pub fn insert(page: &[u8], tag: &str) -> Bytes {
    let at = position(page);
    let mut out = BytesMut::with_capacity(page.len() + tag.len());
    out.extend_from_slice(&page[..at]);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(&page[at..]);
    out.freeze()
}

/// Reads the page and returns it with `tag` added, fixing the headers; a page over the size
/// limit streams on unchanged.
pub async fn page(
    parts: &mut response::Parts,
    mut body: DrivenBody,
    tag: &str,
) -> Result<Body, UpstreamError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        // Trailers, if any, are dropped: a document has none worth keeping.
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > MAX_PAGE {
                let head = futures_util::stream::once(async move {
                    Ok::<_, BoxError>(Frame::data(buf.freeze()))
                });
                let rest = TryStreamExt::map_err(BodyStream::new(body), BoxError::from);
                return Ok(BodyExt::boxed(StreamBody::new(head.chain(rest))));
            }
        }
    }
    let page = insert(&buf, tag);
    let h = &mut parts.headers;
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(page.len()));
    // The representation changed, so the instance's validator no longer describes it.
    h.remove(header::ETAG);
    Ok(crate::http::response::full(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "<script src=x defer></script>";

    #[test]
    fn before_the_end_of_head() {
        let p = insert(b"<html><HEAD><title>t</title></Head><body>b</body>", TAG);
        assert_eq!(
            &p[..],
            format!("<html><HEAD><title>t</title>{TAG}</Head><body>b</body>").as_bytes()
        );
    }

    #[test]
    fn at_the_start_of_the_body_without_a_head() {
        let p = insert(b"<!doctype html><body class=\"x\"><p>b", TAG);
        assert_eq!(
            &p[..],
            format!("<!doctype html><body class=\"x\">{TAG}<p>b").as_bytes()
        );
    }

    #[test]
    fn at_the_end_otherwise() {
        let p = insert(b"<title>t</title><p>b", TAG);
        assert_eq!(&p[..], format!("<title>t</title><p>b{TAG}").as_bytes());
    }

    #[test]
    fn only_uncompressed_html_pages() {
        let parts = |status: u16, pairs: &[(header::HeaderName, &'static str)]| {
            let mut b = http::Response::builder().status(status);
            for (k, v) in pairs {
                b = b.header(k, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        let ct = header::CONTENT_TYPE;
        assert!(wanted(&parts(
            200,
            &[(ct.clone(), "text/html; charset=utf-8")]
        )));
        assert!(wanted(&parts(200, &[(ct.clone(), "TEXT/HTML")])));
        assert!(!wanted(&parts(200, &[(ct.clone(), "application/json")])));
        assert!(!wanted(&parts(200, &[])));
        assert!(!wanted(&parts(
            200,
            &[
                (ct.clone(), "text/html"),
                (header::CONTENT_ENCODING, "gzip")
            ]
        )));
        assert!(!wanted(&parts(304, &[(ct.clone(), "text/html")])));
        assert!(!wanted(&parts(206, &[(ct, "text/html")])));
    }
}
