//! HTTP/1.1 to an instance, as the proxy's hop needs it: the request head written from the
//! rewritten request and its body sent as it arrives (with its length, or chunked when the
//! length is not known), the response head parsed ([`super::head`]) into `http` types whose
//! values are slices of the read buffer, and the response body read by its framing
//! ([`super::framing`]). One exchange at a time, driven by whoever polls it; the connection is
//! reusable once both directions are complete and the instance keeps it open. hyper's client
//! does the same through a dispatcher, a callback per request and a channel per response body,
//! which on a small request cost more than the exchange itself.

use super::framing::{Decoded, Framing};
use super::head;
use super::{Outgoing, UpstreamError};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{Instant, Sleep};
use tokio_util::either::Either;

/// An instance's socket, TCP or Unix.
pub type Stream = Either<TcpStream, UnixStream>;

/// Room for the first read; doubled while reads fill it, up to [`MAX_READ`].
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// An HTTP/1.1 connection to an instance.
pub struct Conn {
    io: Stream,
    read: BytesMut,
    read_size: usize,
    /// Bytes of the request not yet written.
    write: BytesMut,
    upload: Upload,
    reading: Reading,
    /// The exchange so far allows another on this connection.
    reusable: bool,
    head_request: bool,
    /// The response-head deadline, kept across exchanges: resetting a registered timer costs
    /// less than registering, and later dropping, one per request.
    deadline: Option<Pin<Box<Sleep>>>,
}

/// The request body's way to the instance.
enum Upload {
    /// Sent whole, or there was none.
    Done,
    /// Being sent: with this many bytes to come, or chunked (`None`).
    Sending { body: Incoming, rest: Option<u64> },
    /// Given up: the instance stopped reading it, or the client's body broke off.
    Broken,
}

enum Reading {
    /// No exchange in progress.
    Idle,
    Head,
    Body(Framing),
}

impl Conn {
    pub fn new(io: Stream) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            read_size: MIN_READ,
            write: BytesMut::new(),
            upload: Upload::Done,
            reading: Reading::Idle,
            reusable: true,
            head_request: false,
            deadline: None,
        }
    }

    /// Starts an exchange: the request's head is queued to be written and its body follows as
    /// it comes. The request's own framing headers are replaced by ones that match its body.
    pub fn start(&mut self, req: Request<Incoming>, out: &Outgoing<'_>) {
        let (parts, body) = req.into_parts();
        let w = &mut self.write;
        w.reserve(512);
        w.put_slice(parts.method.as_str().as_bytes());
        w.put_u8(b' ');
        // The pieces come from the client's URI (checked by http's parser and our router), so
        // they hold no space, CR or LF; nor does a `HeaderValue`. No line can end early.
        for piece in out.path {
            w.put_slice(piece.as_bytes());
        }
        if let Some(q) = parts.uri.query() {
            w.put_u8(b'?');
            w.put_slice(q.as_bytes());
        }
        w.put_slice(b" HTTP/1.1\r\n");
        let mut had_length = false;
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH {
                had_length = true;
                continue;
            }
            if out.set.iter().any(|(n, _)| n == name) {
                continue;
            }
            put_header(w, name, value);
        }
        for (name, value) in out.set {
            if let Some(value) = value {
                put_header(w, name, value);
            }
        }
        self.upload = if body.is_end_stream() {
            if had_length || carries_body(&parts.method) {
                w.put_slice(b"content-length: 0\r\n");
            }
            Upload::Done
        } else if let Some(n) = body.size_hint().exact() {
            w.put_slice(b"content-length: ");
            w.put_slice(itoa(n, &mut [0; 20]));
            w.put_slice(b"\r\n");
            Upload::Sending {
                body,
                rest: Some(n),
            }
        } else {
            w.put_slice(b"transfer-encoding: chunked\r\n");
            Upload::Sending { body, rest: None }
        };
        w.put_slice(b"\r\n");
        self.head_request = parts.method == Method::HEAD;
        self.reading = Reading::Head;
    }

    /// Sets when the response head of the exchange about to start must have come by.
    pub fn set_deadline(&mut self, at: Instant) {
        match &mut self.deadline {
            Some(d) => d.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// [`Self::poll_head`] until the deadline set last: `None` once it has passed.
    pub fn poll_head_in_time(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Response<()>, UpstreamError>>> {
        if let Poll::Ready(r) = self.poll_head(cx) {
            return Poll::Ready(Some(r));
        }
        let passed = (self.deadline.as_mut()).is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if passed {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    /// Sends what it can of the request, and reads until the response head has come.
    pub fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<()>, UpstreamError>> {
        if let Err(e) = self.poll_upload(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            if let Some(head) = self.parse_head()? {
                return Poll::Ready(Ok(head));
            }
            match ready!(self.fill(cx)) {
                Ok(0) if self.read.is_empty() => return Poll::Ready(Err(UpstreamError::Closed)),
                Ok(0) => return Poll::Ready(Err(UpstreamError::Truncated)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(UpstreamError::Io(e))),
            }
        }
    }

    /// The next piece of the response body, sending what it can of the request meanwhile.
    pub fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        if self.poll_upload(cx).is_err() {
            // The response goes on; only the connection is lost.
            self.reusable = false;
        }
        let Reading::Body(framing) = &mut self.reading else {
            return Poll::Ready(None);
        };
        loop {
            match framing.decode(&mut self.read) {
                Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(d))),
                Ok(Decoded::End) => {
                    self.reading = Reading::Idle;
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match ready!(fill(&mut self.io, &mut self.read, &mut self.read_size, cx)) {
                Ok(0) if *framing == Framing::UntilClose => {
                    self.reusable = false;
                    self.reading = Reading::Idle;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(UpstreamError::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(UpstreamError::Io(e))));
                }
            }
        }
    }

    /// The response has been read to its end (or no exchange is in progress).
    pub fn response_done(&self) -> bool {
        match &self.reading {
            Reading::Idle => true,
            Reading::Head => false,
            Reading::Body(f) => f.is_end(),
        }
    }

    /// How much of the response body is still to come, when that is known.
    pub fn body_remaining(&self) -> Option<u64> {
        match &self.reading {
            Reading::Body(f) => f.remaining(),
            _ => Some(0),
        }
    }

    /// Whether the connection can take another request now: the last exchange is complete in
    /// both directions (an upload the instance answered before it was sent whole is not), the
    /// instance did not ask to close, and nothing can be read: an idle connection that turns
    /// readable is one the instance closed (or one it wrote to out of turn).
    pub fn is_idle(&mut self, cx: &mut Context<'_>) -> bool {
        if self.poll_upload(cx).is_err() {
            self.reusable = false;
        }
        let complete = self.reusable
            && self.response_done()
            && matches!(self.upload, Upload::Done)
            && self.write.is_empty()
            && self.read.is_empty();
        if !complete {
            return false;
        }
        self.reading = Reading::Idle;
        if self.fill(cx).is_pending() {
            return true;
        }
        self.reusable = false;
        false
    }

    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        fill(&mut self.io, &mut self.read, &mut self.read_size, cx)
    }

    /// Writes what the socket takes of the request, and takes more of its body while the
    /// socket has room. An error is the client's body breaking off; the instance no longer
    /// reading is not one (its answer, say a 413 to a large upload, may still come).
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Result<(), UpstreamError> {
        loop {
            while !self.write.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, &self.write) {
                    Poll::Ready(Ok(n)) if n > 0 => self.write.advance(n),
                    Poll::Ready(_) => {
                        self.give_up_upload();
                        return Ok(());
                    }
                    Poll::Pending => return Ok(()),
                }
            }
            let Upload::Sending { body, rest } = &mut self.upload else {
                return Ok(());
            };
            let frame = match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(None) => {
                    match rest {
                        None => self.write.put_slice(b"0\r\n\r\n"),
                        Some(0) => {}
                        Some(_) => return Err(self.upload_failed("it ended early")),
                    }
                    self.upload = Upload::Done;
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Err(self.upload_failed(&e.to_string())),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            // Trailers are not forwarded.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match rest {
                Some(rest) => {
                    // Never more than announced: the instance would read the rest as a request.
                    let Some(left) = rest.checked_sub(data.len() as u64) else {
                        return Err(self.upload_failed("it is longer than its length"));
                    };
                    *rest = left;
                    self.write.put_slice(&data);
                }
                None if data.is_empty() => {}
                None => {
                    self.write.put_slice(hex(data.len() as u64, &mut [0; 16]));
                    self.write.put_slice(b"\r\n");
                    self.write.put_slice(&data);
                    self.write.put_slice(b"\r\n");
                }
            }
        }
    }

    fn give_up_upload(&mut self) {
        self.upload = Upload::Broken;
        self.write.clear();
        self.reusable = false;
    }

    fn upload_failed(&mut self, why: &str) -> UpstreamError {
        self.give_up_upload();
        UpstreamError::RequestBody(why.to_owned())
    }

    /// The final response head, once the buffer holds it (see [`head::parse`]).
    fn parse_head(&mut self) -> Result<Option<Response<()>>, UpstreamError> {
        let Some(head) = head::parse(&mut self.read, self.head_request)? else {
            return Ok(None);
        };
        self.reusable &= head.keep_alive;
        self.reading = Reading::Body(head.framing);
        Ok(Some(head.response))
    }
}

/// Reads into `buf`, with room for the next read that grows while reads fill it.
fn fill(
    io: &mut Stream,
    buf: &mut BytesMut,
    size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < *size / 2 {
        buf.reserve(*size);
    }
    let room = buf.capacity() - buf.len();
    let n = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, buf))?;
    if n == room {
        *size = (*size * 2).min(MAX_READ);
    }
    Poll::Ready(Ok(n))
}

fn put_header(w: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    w.put_slice(name.as_str().as_bytes());
    w.put_slice(b": ");
    w.put_slice(value.as_bytes());
    w.put_slice(b"\r\n");
}

/// Methods whose request is expected to carry a body, so an empty one is announced as such.
fn carries_body(m: &Method) -> bool {
    *m == Method::POST || *m == Method::PUT || *m == Method::PATCH
}

/// `n` in decimal, without the formatting machinery.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// `n` in hexadecimal, for a chunk size.
fn hex(mut n: u64, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[(n % 16) as usize];
        n /= 16;
        if n == 0 {
            return &buf[at..];
        }
    }
}
