//! A socket wrapper that reports traffic to the pool's connection tracker.
//!
//! Reads and writes are forwarded unchanged; the tracker learns how many bytes moved, when a
//! request's first byte arrived, and when a write is stuck because the peer stopped reading.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use poolserve_pool::ConnectionTracker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project_lite::pin_project! {
    /// An I/O stream whose traffic is reported to a [`ConnectionTracker`].
    #[derive(Debug)]
    pub struct TrackedIo<S> {
        #[pin]
        inner: S,
        tracker: ConnectionTracker,
    }
}

impl<S> TrackedIo<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, tracker: ConnectionTracker) -> Self {
        TrackedIo { inner, tracker }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn track_write(tracker: &ConnectionTracker, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
    match &r {
        Poll::Ready(Ok(n)) => tracker.bytes_written(*n),
        Poll::Pending => tracker.write_blocked(),
        Poll::Ready(Err(_)) => {}
    }
    r
}

impl<S: AsyncRead> AsyncRead for TrackedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.tracker.bytes_read(buf.filled().len() - before);
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        track_write(this.tracker, this.inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        track_write(this.tracker, this.inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.inner.poll_flush(cx);
        if r.is_pending() {
            this.tracker.write_blocked();
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
