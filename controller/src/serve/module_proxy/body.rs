//! The responses' body: the whole answer in one piece, counted as being answered from the
//! moment the request arrived until hyper is done with it (written out, or the connection
//! gone). The session's end answers every waiting request 503 and then waits, briefly, for
//! those answers to be written ([`Answering::drained`]): the process exits right after.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Bytes, Frame, SizeHint};
use tokio::sync::watch;

/// How many requests are being answered.
#[derive(Clone)]
pub(crate) struct Answering(Arc<watch::Sender<usize>>);

impl Default for Answering {
    fn default() -> Self {
        Answering(Arc::new(watch::Sender::new(0)))
    }
}

impl Answering {
    /// One more request, until the returned guard is dropped.
    pub(crate) fn start(&self) -> Guard {
        self.0.send_modify(|n| *n += 1);
        Guard(self.0.clone())
    }

    /// Wait until no request is being answered, at most `limit`.
    pub(crate) async fn drained(&self, limit: Duration) {
        let mut rx = self.0.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
    }
}

/// A request being answered.
pub(crate) struct Guard(Arc<watch::Sender<usize>>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The body of a response: all of it, with its exact size (hyper sends it as
/// `Content-Length`).
pub(crate) struct Body {
    data: Option<Bytes>,
    _answering: Guard,
}

impl Body {
    pub(crate) fn new(data: Bytes, answering: Guard) -> Body {
        Body {
            data: (!data.is_empty()).then_some(data),
            _answering: answering,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_until_its_body_is_dropped() {
        let a = Answering::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let body = Body::new(Bytes::from_static(b"abc"), a.start());
        let none = Body::new(Bytes::new(), a.start());
        assert_eq!(*a.0.borrow(), 2);
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(3));
        assert!(hyper::body::Body::is_end_stream(&none));
        drop(none);
        let t0 = std::time::Instant::now();
        rt.block_on(a.drained(Duration::from_millis(50)));
        assert!(
            t0.elapsed() >= Duration::from_millis(50),
            "still answering one"
        );
        drop(body);
        rt.block_on(a.drained(Duration::from_secs(60)));
        assert_eq!(*a.0.borrow(), 0);
    }
}
