//! A response head from an instance: parsed by httparse out of the read buffer into `http`
//! types whose values are slices of that buffer, interim responses passed over, and what the
//! head says of its body's framing and of the connection (RFC 9112, sections 6.3 and 9.3).

use super::framing::Framing;
use super::UpstreamError;
use bytes::{Buf, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use std::mem::MaybeUninit;

/// The largest response head accepted, status line and headers.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response may have.
const MAX_HEADERS: usize = 100;

/// A final response head, its body's framing, and whether the connection may carry another
/// exchange after it.
pub struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    pub keep_alive: bool,
}

/// The final response head at the front of `buf`, taken off it once it is there whole;
/// interim responses (100 Continue, 103 Early Hints) are passed over. After a HEAD request
/// (`head_request`) no body follows, whatever the head says.
pub fn parse(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, UpstreamError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut r, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
            Ok(_) => return Err(UpstreamError::Protocol("response head too large".into())),
            Err(e) => {
                return Err(UpstreamError::Protocol(format!(
                    "malformed response head: {e}"
                )))
            }
        };
        let code = r.code.unwrap_or(0);
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(UpstreamError::Protocol("switched protocols unasked".into()));
            }
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code)
            .map_err(|_| UpstreamError::Protocol(format!("status {code}")))?;
        let http10 = r.version == Some(0);
        // Where each name and value lies in the buffer, so that the values can be slices
        // of the head once it is split off (all of them lie within MAX_HEAD).
        let base = buf.as_ptr() as usize;
        let n = r.headers.len();
        for (span, h) in spans.iter_mut().zip(r.headers.iter()) {
            let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
            *span = (
                at(h.name.as_bytes()),
                h.name.len() as u32,
                at(h.value),
                h.value.len() as u32,
            );
        }
        let head = buf.split_to(len).freeze();
        // Room for what the proxy adds (HSTS, the request id, a cookie): a full map would
        // grow, rehashing every entry, on the first of them.
        let mut headers = HeaderMap::with_capacity(n + 3);
        let mut framed = Framed::default();
        for &(name, name_len, value, value_len) in &spans[..n] {
            let (name, value) = (name as usize, value as usize);
            let name = HeaderName::from_bytes(&head[name..name + name_len as usize])
                .map_err(|_| UpstreamError::Protocol("a bad header name".into()))?;
            let value =
                HeaderValue::from_maybe_shared(head.slice(value..value + value_len as usize))
                    .map_err(|_| UpstreamError::Protocol("a bad header value".into()))?;
            framed.note(&name);
            headers.append(name, value);
        }
        let (framing, keep_alive) = framing(status, http10, head_request, &mut headers, framed)?;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// How the response's body ends (RFC 9112, 6.3), and whether the connection outlives it.
fn framing(
    status: StatusCode,
    http10: bool,
    head_request: bool,
    headers: &mut HeaderMap,
    framed: Framed,
) -> Result<(Framing, bool), UpstreamError> {
    let mut keep_alive = !http10;
    let connection = framed
        .connection
        .then(|| headers.get_all(header::CONNECTION));
    for v in connection.into_iter().flatten() {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                keep_alive = true;
            }
        }
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), keep_alive));
    }
    let coding = framed.coding.then(|| {
        headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
    });
    if let Some(te) = coding.flatten() {
        let chunked = te
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        // A length beside a coding is not the body's: the decoded body is what goes on.
        let length_too = headers.remove(header::CONTENT_LENGTH).is_some();
        if chunked {
            return Ok((Framing::chunked(), keep_alive && !length_too));
        }
        return Ok((Framing::UntilClose, false));
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for n in v.as_bytes().split(|&b| b == b',') {
            let n = std::str::from_utf8(n.trim_ascii())
                .ok()
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(l)) if n == l => {}
                _ => return Err(UpstreamError::Protocol("a bad content-length".into())),
            }
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::UntilClose, false),
    })
}

/// Which of the headers that frame a response it has, noted while they are parsed, so that
/// the absent ones are not looked up.
#[derive(Default, Clone, Copy)]
struct Framed {
    connection: bool,
    coding: bool,
}

impl Framed {
    fn note(&mut self, name: &HeaderName) {
        if name == header::CONNECTION {
            self.connection = true;
        } else if name == header::TRANSFER_ENCODING {
            self.coding = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_text(text: &[u8], head_request: bool) -> Result<Option<Head>, UpstreamError> {
        parse(&mut BytesMut::from(text), head_request)
    }

    #[test]
    fn the_head_says_how_its_body_ends_and_whether_the_connection_stays() {
        let cases: [(&str, Framing, bool); 10] = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5",
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5",
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5",
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 5",
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: foo, close\r\nContent-Length: 5",
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
                Framing::chunked(),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3",
                Framing::chunked(),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
                Framing::UntilClose,
                false,
            ),
            ("HTTP/1.1 200 OK", Framing::UntilClose, false),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9",
                Framing::Length(0),
                true,
            ),
        ];
        for (text, framing, keep_alive) in cases {
            let head = parse_text(format!("{text}\r\n\r\n").as_bytes(), false)
                .unwrap()
                .unwrap();
            assert_eq!(
                (head.framing, head.keep_alive),
                (framing, keep_alive),
                "{text}"
            );
            if framing == Framing::chunked() {
                assert!(head.response.headers().get("content-length").is_none());
            }
        }
        let after_head = parse_text(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert_eq!(after_head.unwrap().unwrap().framing, Framing::Length(0));
    }

    #[test]
    fn interim_responses_are_passed_over_and_partial_heads_wait() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No"[..]);
        assert!(parse(&mut buf, false).unwrap().is_none());
        buf.extend_from_slice(b" Content\r\nX-A: 1\r\n\r\nnext");
        let head = parse(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.response.status(), StatusCode::NO_CONTENT);
        assert_eq!(head.response.headers()["x-a"], "1");
        assert_eq!(&buf[..], b"next", "only the head is taken");
    }

    #[test]
    fn bad_heads_are_refused() {
        for text in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse_text(text, false).is_err(), "{}", text.escape_ascii());
        }
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() <= MAX_HEAD {
            huge.extend_from_slice(b"X-Filler: 0123456789abcdef0123456789abcdef\r\n");
        }
        assert!(
            parse_text(&huge, false).is_err(),
            "a head too large, even unfinished"
        );
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused_without_panic(
            text in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let _ = parse_text(&text, false);
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            head.extend_from_slice(&text);
            let _ = parse_text(&head, false);
        }
    }
}
