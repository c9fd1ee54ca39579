//! Keeping an HTTP/1 connection pooled after a handler takes it over with an upgrade (an axum
//! `WebSocketUpgrade`, say).
//!
//! Contract: when hyper hands the connection's I/O to an upgrade, the pooled connection stays
//! open — counted, bounded by the message-protocol rules, drained — until that I/O is dropped.
//! The handler hears a polite-close request (shutdown, a lowered limit) through
//! [`PooledConnection::closing`]; if the I/O is still open when the pool closes the connection at
//! once (the drain deadline, a timeout), every further read and write on it fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

/// State shared by a connection's I/O, its driver and its handlers.
#[derive(Debug, Default)]
pub(crate) struct UpgradeLink {
    /// The I/O was handed to an upgrade.
    pub upgraded: AtomicBool,
    /// The pool closed the connection: the I/O must fail.
    pub killed: AtomicBool,
    /// The I/O was dropped.
    pub io_dropped: AtomicBool,
    /// The pool asked the connection to close politely.
    closing: AtomicBool,
    closing_notify: Notify,
    pub read_waker: AtomicWaker,
    pub write_waker: AtomicWaker,
    pub drop_waker: AtomicWaker,
}

impl UpgradeLink {
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.read_waker.wake();
        self.write_waker.wake();
    }

    pub fn io_dropped(&self) {
        self.io_dropped.store(true, Ordering::Release);
        self.drop_waker.wake();
    }

    pub fn ask_to_close(&self) {
        self.closing.store(true, Ordering::Release);
        self.closing_notify.notify_waiters();
    }

    pub fn register_io(&self, waker: &Waker, read: bool) {
        if self.upgraded.load(Ordering::Relaxed) {
            if read {
                self.read_waker.register(waker);
            } else {
                self.write_waker.register(waker);
            }
        }
    }
}

/// A handler's view of the pooled connection its request came on, for protocols it takes over
/// with an upgrade: in the extensions of every request with an `Upgrade` header or `CONNECT`.
#[derive(Debug, Clone)]
pub struct PooledConnection {
    pub(crate) link: Arc<UpgradeLink>,
}

impl PooledConnection {
    /// Whether the pool has asked this connection to close (shutdown or a lowered limit).
    pub fn is_closing(&self) -> bool {
        self.link.closing.load(Ordering::Acquire)
    }

    /// Resolves when the pool asks this connection to close politely: send your protocol's
    /// goodbye (a WebSocket close 1001) and finish.
    pub async fn closing(&self) {
        loop {
            let notified = self.link.closing_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }
}
