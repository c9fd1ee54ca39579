//! A socket wrapper that reports traffic to the pool's connection tracker.
//!
//! Reads and writes are forwarded unchanged; the tracker learns how many bytes moved, when a
//! request's first byte arrived, and when a write is stuck because the peer stopped reading.
//! Linked to an [`UpgradeLink`], it also fails every read and write once the pool has closed an
//! upgraded connection, and reports its own drop.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use poolserve_pool::ConnectionTracker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::upgrade::UpgradeLink;

/// An I/O stream whose traffic is reported to a [`ConnectionTracker`].
#[derive(Debug)]
pub struct TrackedIo<S> {
    inner: S,
    tracker: ConnectionTracker,
    link: Option<Arc<UpgradeLink>>,
}

impl<S> TrackedIo<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, tracker: ConnectionTracker) -> Self {
        TrackedIo {
            inner,
            tracker,
            link: None,
        }
    }

    pub(crate) fn linked(inner: S, tracker: ConnectionTracker, link: Arc<UpgradeLink>) -> Self {
        TrackedIo {
            inner,
            tracker,
            link: Some(link),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Fails the call once the pool has closed an upgraded connection.
    #[inline]
    fn killed(&self, cx: &Context<'_>, read: bool) -> bool {
        match &self.link {
            Some(link) => link.check_io(cx.waker(), read),
            None => false,
        }
    }
}

impl<S> Drop for TrackedIo<S> {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            link.io_dropped();
        }
    }
}

fn closed_by_pool<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "connection closed by the pool",
    )))
}

fn track_write(tracker: &ConnectionTracker, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
    match &r {
        Poll::Ready(Ok(n)) => tracker.bytes_written(*n),
        Poll::Pending => tracker.write_blocked(),
        Poll::Ready(Err(_)) => {}
    }
    r
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.killed(cx, true) {
            return closed_by_pool();
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.tracker.bytes_read(buf.filled().len() - before);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.killed(cx, false) {
            return closed_by_pool();
        }
        track_write(&this.tracker, Pin::new(&mut this.inner).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.killed(cx, false) {
            return closed_by_pool();
        }
        track_write(
            &this.tracker,
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.killed(cx, false) {
            return closed_by_pool();
        }
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if r.is_pending() {
            this.tracker.write_blocked();
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
