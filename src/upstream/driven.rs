//! A connection to an instance driven by the task that uses it. The client connection's task
//! polls it while it waits for the response head and while it streams the response body, so a
//! request does not cross to a connection task of its own and back (a spawned connection task
//! costs two task switches per request, with their wake-ups). Between requests it rests in the
//! pool and nobody polls it; whoever takes it next drives it once and uses it only if it then
//! wants a request, which also finds out when the instance closed it meanwhile.

use super::pool::Home;
use super::UpstreamError;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

/// An instance's socket, TCP or Unix.
pub type Stream = Either<TcpStream, UnixStream>;

/// An HTTP/1.1 connection to an instance and the handle requests are sent through.
pub struct Driven {
    send: SendRequest<Incoming>,
    /// Boxed: the connection's state is large, and a pooled connection moves in and out of
    /// the pool and into a response body on every request.
    conn: Box<Connection<TokioIo<Stream>, Incoming>>,
    /// The connection's future has completed: it is closed and must not be polled again.
    closed: bool,
}

impl Driven {
    pub fn new(send: SendRequest<Incoming>, conn: Connection<TokioIo<Stream>, Incoming>) -> Self {
        Self {
            send,
            conn: Box::new(conn),
            closed: false,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Lets the connection read and write what it can.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if self.closed {
            return;
        }
        if let Poll::Ready(r) = Pin::new(&mut *self.conn).poll(cx) {
            self.closed = true;
            if let Err(e) = r {
                tracing::debug!(error = %e, "instance connection ended with an error");
            }
        }
    }

    /// Whether the connection takes a request now, once it has read and written what it
    /// could: not when the instance closed it, nor while it is still sending an earlier
    /// request's body. Waiting for either would hold a request for as long as another
    /// client's upload takes.
    pub fn is_idle(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx);
        !self.closed && matches!(self.send.poll_ready(cx), Poll::Ready(Ok(())))
    }

    /// [`Self::is_idle`] from a task.
    pub async fn ready(&mut self) -> bool {
        poll_fn(|cx| Poll::Ready(self.is_idle(cx))).await
    }

    /// Sends `req` and drives the connection until the response head has come.
    pub async fn exchange(
        &mut self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut resp = pin!(self.send.send_request(req));
        poll_fn(|cx| {
            if let Poll::Ready(r) = resp.as_mut().poll(cx) {
                return Poll::Ready(r.map_err(UpstreamError::from));
            }
            self.drive(cx);
            match resp.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(r.map_err(UpstreamError::from)),
                // A finished connection does nothing more: no answer is coming.
                Poll::Pending if self.closed => Poll::Ready(Err(UpstreamError::Closed)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// A response body from a driven connection; it drives the connection while it is read, and
/// hands the connection back to the pool once it has been read to the end. Dropped before
/// that (the client went away), it closes the connection, whose response is unfinished.
pub struct DrivenBody {
    body: Incoming,
    conn: Option<(Driven, Home)>,
}

impl DrivenBody {
    pub fn new(body: Incoming, conn: Driven, home: Home) -> Self {
        let mut b = Self {
            body,
            conn: Some((conn, home)),
        };
        // A body with nothing in it may never be polled.
        if b.body.is_end_stream() {
            b.release(&mut Context::from_waker(Waker::noop()));
        }
        b
    }

    /// Back to the pool, unless the instance answered before it had the whole request body
    /// (a 413 to a large upload): then the connection is closed, which ends the upload.
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some((mut conn, home)) = self.conn.take() {
            if !home.uploaded || conn.is_idle(cx) {
                home.put(conn);
            }
        }
    }
}

impl Body for DrivenBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut r = Pin::new(&mut this.body).poll_frame(cx);
        if r.is_pending() {
            // Asked for more, the connection reads it in now.
            if let Some((conn, _)) = &mut this.conn {
                conn.drive(cx);
                if conn.is_closed() {
                    // Dropped, so that the body learns at once how it ended.
                    this.conn = None;
                }
                r = Pin::new(&mut this.body).poll_frame(cx);
            }
        }
        match &r {
            Poll::Ready(None) => this.release(cx),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(cx),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
