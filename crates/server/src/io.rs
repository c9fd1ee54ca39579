//! A socket wrapper that reports traffic to the pool's connection tracker.
//!
//! Reads and writes are forwarded unchanged; the tracker learns when a request's first byte
//! arrived and when a write is stuck because the peer stopped reading. The wrapper tallies the
//! bytes itself and adds them to the pool's totals when it flushes, when a read or write has to
//! wait, and when it is dropped: about once per request, never per read or write.
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
    /// Bytes read and written since they were last reported to the pool.
    unreported_read: u64,
    unreported_written: u64,
}

impl<S> TrackedIo<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, tracker: ConnectionTracker) -> Self {
        TrackedIo {
            inner,
            tracker,
            link: None,
            unreported_read: 0,
            unreported_written: 0,
        }
    }

    pub(crate) fn linked(inner: S, tracker: ConnectionTracker, link: Arc<UpgradeLink>) -> Self {
        TrackedIo {
            inner,
            tracker,
            link: Some(link),
            unreported_read: 0,
            unreported_written: 0,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Adds the bytes tallied since the last report to the pool's totals.
    #[inline]
    fn report_bytes(&mut self) {
        if self.unreported_read | self.unreported_written != 0 {
            self.tracker
                .report_bytes(self.unreported_read, self.unreported_written);
            self.unreported_read = 0;
            self.unreported_written = 0;
        }
    }

    /// Tallies a write's result: progress clears a blocked write, waiting marks one (and is a
    /// moment to report, as the connection has nothing else to do).
    #[inline]
    fn track_write(&mut self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &r {
            Poll::Ready(Ok(n)) => {
                self.unreported_written += *n as u64;
                self.tracker.bytes_written();
            }
            Poll::Pending => {
                self.tracker.write_blocked();
                self.report_bytes();
            }
            Poll::Ready(Err(_)) => {}
        }
        r
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
        self.report_bytes();
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
        match r {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.unreported_read += n as u64;
                this.tracker.bytes_read(n);
            }
            // Waiting for the peer: what this connection moved so far goes to the pool.
            Poll::Pending => this.report_bytes(),
            Poll::Ready(Err(_)) => {}
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
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track_write(r)
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
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track_write(r)
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
        // A flush ends a response, or a part of one: report what moved so far.
        this.report_bytes();
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
