//! The request body handlers receive: it tells the pool when a request was received.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use poolserve_pool::{later, RequestBodyTracker};
use tokio::time::{Instant, Sleep};

use super::read_budget::ReadBudget;

/// The request body handlers receive: hyper's body, reporting to the pool when it is fully
/// received so the request timeout stops applying. On a multiplexed connection (HTTP/2), where
/// the connection's timer leaves streams alone, the body itself enforces `request_timeout`: a
/// body not received in time fails with [`RequestTimeout`]. A protocol whose calls carry their
/// own deadline opts out (see [`RequestRules::times_body`]), since a client stream may rightly
/// last long.
///
/// [`RequestRules::times_body`]: crate::http::RequestRules::times_body
#[derive(Debug)]
pub struct Body {
    inner: Incoming,
    /// `None` once the body ended, failed or timed out (and for one complete with its head).
    tracker: Option<RequestBodyTracker>,
    deadline: Option<Pin<Box<Sleep>>>,
    read_budget: Option<ReadBudget>,
}

/// The error of a request body that did not arrive within `request_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTimeout;

impl std::fmt::Display for RequestTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive within request_timeout")
    }
}

impl std::error::Error for RequestTimeout {}

use super::errors::BoxError;

impl Body {
    /// A body already at its end (its head said so): nothing left to report.
    pub(crate) fn ended(inner: Incoming) -> Self {
        Body {
            inner,
            tracker: None,
            deadline: None,
            read_budget: None,
        }
    }

    /// A body still arriving, reporting to its request through `tracker`. `timed`: whether
    /// this body enforces `request_timeout` itself (a stream of a multiplexed connection whose
    /// protocol does not bound it otherwise). `read_budget`: the connection's, for a protocol
    /// that reads ahead of its handler (see [`ReadBudget`]).
    pub(crate) fn arriving(
        inner: Incoming,
        tracker: RequestBodyTracker,
        timed: bool,
        read_budget: Option<ReadBudget>,
    ) -> Self {
        let deadline = timed.then(|| {
            let at = later(Instant::now(), tracker.request_timeout());
            Box::pin(tokio::time::sleep_until(at))
        });
        Body {
            inner,
            tracker: Some(tracker),
            deadline,
            read_budget,
        }
    }

    /// The connection's budget for bytes read ahead of the handler, when it has one.
    pub(crate) fn read_budget(&self) -> Option<&ReadBudget> {
        self.read_budget.as_ref()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // A handler that drops the body unread is done receiving; what is left is hyper's to
        // discard, and the request timeout stops applying.
        if let Some(t) = self.tracker.take() {
            t.received();
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let (Some(deadline), Some(_)) = (this.deadline.as_mut(), &this.tracker) {
                    ready!(deadline.as_mut().poll(cx));
                    this.deadline = None;
                    if let Some(t) = this.tracker.take() {
                        t.timed_out();
                    }
                    return Poll::Ready(Some(Err(Box::new(RequestTimeout))));
                }
                return Poll::Pending;
            }
        };
        let done = match &frame {
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) => {
                if let Some(t) = this.tracker.take() {
                    t.broken_off();
                }
                false
            }
        };
        if done {
            this.deadline = None;
            if let Some(t) = this.tracker.take() {
                t.received();
            }
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
