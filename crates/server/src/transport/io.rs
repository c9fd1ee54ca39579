//! A socket wrapper that reports traffic to the pool's connection tracker.
//!
//! Reads and writes are forwarded unchanged; the tracker learns when a request's first byte
//! arrived and when a write is stuck because the peer stopped reading. The wrapper tallies the
//! bytes itself and adds them to the pool's totals when it flushes, when a read or write has to
//! wait, and when it is dropped: about once per request, never per read or write.
//! Its [`IoGate`] lets the connection's owner make every further read and write fail (the pool
//! closed a connection a handler took over) and hear of the wrapper's drop.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use poolserve_pool::ConnectionTracker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a [`TrackedIo`] consults before each read and write, and tells when it is dropped: the
/// way its owner can make an I/O that was handed on (an upgrade) fail.
pub trait IoGate {
    /// Whether the call must fail; `waker` (the calling task's) is to be woken when that
    /// changes, `read` tells a read from a write.
    fn closed(&self, waker: &Waker, read: bool) -> bool;
    /// The I/O was dropped.
    fn io_dropped(&self);
    /// Whether a handler took the connection over (an upgrade): its traffic is then reported
    /// as activity, as the pool sees no messages of its own.
    fn upgraded(&self) -> bool {
        false
    }
}

/// The gate of an I/O nobody else can close: always open, and costs nothing.
impl IoGate for () {
    #[inline(always)]
    fn closed(&self, _: &Waker, _: bool) -> bool {
        false
    }
    #[inline(always)]
    fn io_dropped(&self) {}
    #[inline(always)]
    fn upgraded(&self) -> bool {
        false
    }
}

/// An I/O stream whose traffic is reported to a [`ConnectionTracker`].
#[derive(Debug)]
pub struct TrackedIo<S, G: IoGate = ()> {
    inner: S,
    tracker: ConnectionTracker,
    gate: G,
    /// Bytes read and written since they were last reported to the pool. 32 bits each (the
    /// wrapper lives in the connection's memory as long as it is open): a tally that would
    /// overflow is reported first.
    unreported_read: u32,
    unreported_written: u32,
}

impl<S> TrackedIo<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, tracker: ConnectionTracker) -> Self {
        TrackedIo::gated(inner, tracker, ())
    }
}

impl<S, G: IoGate> TrackedIo<S, G> {
    /// Wraps `inner`, consulting `gate` before each read and write.
    pub fn gated(inner: S, tracker: ConnectionTracker, gate: G) -> Self {
        TrackedIo {
            inner,
            tracker,
            gate,
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
            self.tracker.report_bytes(
                u64::from(self.unreported_read),
                u64::from(self.unreported_written),
            );
            self.unreported_read = 0;
            self.unreported_written = 0;
        }
    }

    /// Tallies `n` bytes read (`read`) or written.
    #[inline]
    fn tally(&mut self, n: usize, read: bool) {
        let tally = if read {
            &mut self.unreported_read
        } else {
            &mut self.unreported_written
        };
        match u32::try_from(n).ok().and_then(|n| tally.checked_add(n)) {
            Some(t) => *tally = t,
            None => self.tally_overflow(n, read),
        }
    }

    /// A tally that would overflow: what is tallied goes to the pool with these bytes.
    #[cold]
    fn tally_overflow(&mut self, n: usize, read: bool) {
        let (r, w) = if read { (n as u64, 0) } else { (0, n as u64) };
        self.tracker.report_bytes(
            u64::from(self.unreported_read) + r,
            u64::from(self.unreported_written) + w,
        );
        self.unreported_read = 0;
        self.unreported_written = 0;
    }

    /// Tallies a write's result: progress clears a blocked write, waiting marks one (and is a
    /// moment to report, as the connection has nothing else to do).
    #[inline]
    fn track_write(&mut self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &r {
            Poll::Ready(Ok(n)) => {
                self.tally(*n, false);
                self.tracker.bytes_written();
                if *n > 0 && self.gate.upgraded() {
                    self.tracker.traffic();
                }
            }
            Poll::Pending => {
                self.tracker.write_blocked();
                self.report_bytes();
            }
            Poll::Ready(Err(_)) => {}
        }
        r
    }

    /// Whether the gate fails the call.
    #[inline]
    fn killed(&self, cx: &Context<'_>, read: bool) -> bool {
        self.gate.closed(cx.waker(), read)
    }
}

impl<S, G: IoGate> Drop for TrackedIo<S, G> {
    fn drop(&mut self) {
        self.report_bytes();
        self.gate.io_dropped();
    }
}

fn closed_by_pool<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "connection closed by the pool",
    )))
}

impl<S: AsyncRead + Unpin, G: IoGate + Unpin> AsyncRead for TrackedIo<S, G> {
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
                this.tally(n, true);
                this.tracker.bytes_read(n);
                if n > 0 && this.gate.upgraded() {
                    this.tracker.traffic();
                }
            }
            // Waiting for the peer: what this connection moved so far goes to the pool.
            Poll::Pending => this.report_bytes(),
            Poll::Ready(Err(_)) => {}
        }
        r
    }
}

impl<S: AsyncWrite + Unpin, G: IoGate + Unpin> AsyncWrite for TrackedIo<S, G> {
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
        // A flush that had to wait marks a blocked write; one that completed clears it (over
        // TLS the last bytes of a response leave in a flush, not a write).
        match &r {
            Poll::Pending => this.tracker.write_blocked(),
            Poll::Ready(Ok(())) => this.tracker.bytes_written(),
            Poll::Ready(Err(_)) => {}
        }
        // A flush ends a response, or a part of one: report what moved so far.
        this.report_bytes();
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
