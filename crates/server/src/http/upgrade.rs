//! Keeping an HTTP/1 connection pooled after a handler takes it over with an upgrade (an axum
//! `WebSocketUpgrade`, say).
//!
//! Contract: when hyper hands the connection's I/O to an upgrade, the pooled connection stays
//! open — counted, bounded by the message-protocol rules, drained — until that I/O is dropped.
//! The handler hears a polite-close request (shutdown, a lowered limit) through
//! [`PooledConnection::closing`]; if the I/O is still open when the pool closes the connection at
//! once (the drain deadline, a timeout), every further read and write on it fails.

use std::sync::atomic::{fence, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Waker;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::transport::io::IoGate;

const UPGRADED: u8 = 1;
const KILLED: u8 = 2;
const IO_DROPPED: u8 = 4;
const CLOSING: u8 = 8;
/// The request in flight asks to upgrade (an `Upgrade` header, `CONNECT`).
const UPGRADE_ASKED: u8 = 16;

/// State shared by a connection's I/O, its driver and its handlers. Small until an upgrade
/// needs it: the wakers are allocated only when someone first waits on them, which a
/// connection that never upgrades never does.
#[derive(Debug, Default)]
pub(crate) struct UpgradeLink {
    state: AtomicU8,
    wakers: OnceLock<Box<LinkWakers>>,
}

#[derive(Debug, Default)]
struct LinkWakers {
    closing: Notify,
    read: AtomicWaker,
    write: AtomicWaker,
    dropped: AtomicWaker,
}

impl UpgradeLink {
    fn is(&self, flag: u8) -> bool {
        self.state.load(Ordering::SeqCst) & flag != 0
    }

    /// Sets `flag`, then returns the wakers if anyone registered one. The fence pairs with the
    /// one in [`UpgradeLink::waiting`]: either the waiter sees the flag, or this sees the wakers.
    fn raise(&self, flag: u8) -> Option<&LinkWakers> {
        self.state.fetch_or(flag, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.wakers.get().map(|w| &**w)
    }

    /// The wakers, allocated on first use; `register` runs before the flags are re-read.
    fn waiting(&self, register: impl FnOnce(&LinkWakers)) {
        register(self.wakers.get_or_init(Box::default));
        fence(Ordering::SeqCst);
    }

    /// A request started: whether it asks to upgrade. Costs a plain request one load.
    #[inline]
    pub fn note_request(&self, asks_upgrade: bool) {
        if asks_upgrade {
            self.state.fetch_or(UPGRADE_ASKED, Ordering::SeqCst);
        } else if self.state.load(Ordering::Relaxed) & UPGRADE_ASKED != 0 {
            self.state.fetch_and(!UPGRADE_ASKED, Ordering::SeqCst);
        }
    }

    /// Whether the last request asked to upgrade.
    pub fn upgrade_asked(&self) -> bool {
        self.is(UPGRADE_ASKED)
    }

    /// The I/O was handed to an upgrade.
    pub fn mark_upgraded(&self) {
        self.state.fetch_or(UPGRADED, Ordering::SeqCst);
    }

    /// Whether the pool closed the connection, so the upgraded I/O must fail.
    pub fn is_killed(&self) -> bool {
        self.is(KILLED)
    }

    /// Whether the I/O was dropped.
    pub fn is_io_dropped(&self) -> bool {
        self.is(IO_DROPPED)
    }

    pub fn kill(&self) {
        if let Some(w) = self.raise(KILLED) {
            w.read.wake();
            w.write.wake();
        }
    }

    pub fn io_dropped(&self) {
        if let Some(w) = self.raise(IO_DROPPED) {
            w.dropped.wake();
        }
    }

    pub fn ask_to_close(&self) {
        if let Some(w) = self.raise(CLOSING) {
            w.closing.notify_waiters();
        }
    }

    #[cold]
    fn check_upgraded_io(&self, waker: &Waker, read: bool) -> bool {
        self.waiting(|w| {
            if read {
                w.read.register(waker)
            } else {
                w.write.register(waker)
            }
        });
        self.is_killed()
    }

    /// Registers the connection's task to hear that the I/O was dropped; returns whether it was.
    pub fn register_drop(&self, waker: &Waker) -> bool {
        self.waiting(|w| w.dropped.register(waker));
        self.is_io_dropped()
    }
}

/// The connection's I/O consults its link: it fails once the pool closed the connection under
/// a handler that took it over.
impl IoGate for Arc<UpgradeLink> {
    /// Whether the I/O must fail because the pool closed the connection; an upgraded I/O's
    /// task is registered to hear `UpgradeLink::kill`. Before an upgrade — every read and
    /// write of a plain request — this is one load, and the wakers are never allocated.
    #[inline]
    fn closed(&self, waker: &Waker, read: bool) -> bool {
        if self.state.load(Ordering::SeqCst) & (UPGRADED | KILLED) == 0 {
            return false;
        }
        self.check_upgraded_io(waker, read)
    }

    fn io_dropped(&self) {
        UpgradeLink::io_dropped(self)
    }

    #[inline]
    fn upgraded(&self) -> bool {
        self.state.load(Ordering::Relaxed) & UPGRADED != 0
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
        self.link.is(CLOSING)
    }

    /// Resolves when the pool asks this connection to close politely: send your protocol's
    /// goodbye (a WebSocket close 1001) and finish.
    pub async fn closing(&self) {
        loop {
            let wakers = self.link.wakers.get_or_init(Box::default);
            let notified = wakers.closing.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            fence(Ordering::SeqCst);
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }
}
