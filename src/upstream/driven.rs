//! A response body read straight off its instance connection ([`h1::Conn`]): the client
//! connection's task that reads the body drives the connection, so a request never crosses to
//! a connection task of its own and back. Read to its end, the body hands the connection back
//! to the pool; dropped before that (the client went away), it closes it.

use super::h1::Conn;
use super::pool::Home;
use super::UpstreamError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

pub struct DrivenBody {
    /// `None` once the body has ended, or broken.
    conn: Option<(Box<Conn>, Home)>,
}

impl DrivenBody {
    pub fn new(conn: Box<Conn>, home: Home) -> Self {
        let mut b = Self {
            conn: Some((conn, home)),
        };
        // A body with nothing in it may never be polled.
        b.release_if_done(&mut Context::from_waker(Waker::noop()));
        b
    }

    /// Back to the pool once the response has been read to its end, unless the exchange
    /// left the connection unusable (an upload the instance answered before it was sent
    /// whole: closing the connection ends that upload).
    fn release_if_done(&mut self, cx: &mut Context<'_>) {
        if !self.conn.as_ref().is_some_and(|(c, _)| c.response_done()) {
            return;
        }
        if let Some((mut conn, home)) = self.conn.take() {
            if conn.is_idle(cx) {
                home.put(conn);
            }
        }
    }
}

impl Body for DrivenBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let Some((conn, _)) = &mut this.conn else {
            return Poll::Ready(None);
        };
        let r = conn.poll_data(cx);
        match &r {
            Poll::Ready(Some(Err(_))) => this.conn = None,
            Poll::Ready(_) => this.release_if_done(cx),
            Poll::Pending => {}
        }
        r.map(|d| d.map(|d| d.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.conn.as_ref().is_none_or(|(c, _)| c.response_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self
            .conn
            .as_ref()
            .map_or(Some(0), |(c, _)| c.body_remaining())
        {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
