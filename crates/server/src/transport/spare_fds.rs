//! File descriptors held in reserve for the admin endpoint, so that it keeps answering while
//! the process is out of them (`EMFILE`, `ENFILE`).
//!
//! Contract: a runtime holds up to `target` open `/dev/null` files (`admin.spare_fds`). When the
//! admin endpoint's accept fails for want of a descriptor, it closes one spare and accepts at
//! once into the freed slot ([`SpareFds::spend`]), reopening the spare at once if no connection
//! was waiting. A spare spent is taken back as soon as a descriptor is free: a server's accept
//! loop refills the reserve before it retries a failed accept (so while the process stays at
//! its limit, a descriptor freed goes to the reserve before it goes to a waiting client), and
//! every accept loop refills it after an accept while a spare is missing. With the reserve
//! full, an accept costs one relaxed atomic load more.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::accept_error::is_descriptor_shortage;

/// What an accept loop does with a runtime's spare descriptors.
#[derive(Debug, Clone)]
pub(crate) enum SpareFdUse {
    /// Nothing: a server started on its own, with no admin endpoint beside it.
    None,
    /// A server's: refills them before it takes a slot, never spends them.
    Keep(Arc<SpareFds>),
    /// The admin endpoint's: spends one to accept while the process is out of descriptors.
    Spend(Arc<SpareFds>),
}

/// A runtime's spare descriptors.
#[derive(Debug)]
pub(crate) struct SpareFds {
    held: Mutex<Vec<File>>,
    /// How many to hold.
    target: AtomicUsize,
    /// Spares not held; read on every accept, so kept apart from the lock.
    missing: AtomicUsize,
}

impl SpareFds {
    /// A reserve of `target` spares, opened now.
    pub(crate) fn new(target: usize) -> SpareFds {
        let spares = SpareFds {
            held: Mutex::new(Vec::with_capacity(target)),
            target: AtomicUsize::new(0),
            missing: AtomicUsize::new(0),
        };
        spares.set_target(target);
        spares
    }

    /// Holds `target` spares from now on: closes those over it, opens those missing.
    pub(crate) fn set_target(&self, target: usize) {
        self.target.store(target, Ordering::Relaxed);
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .truncate(target);
        if let Err(e) = self.refill() {
            tracing::warn!(error = %e, target, "spare file descriptors for the admin endpoint not all opened");
        }
    }

    /// How many are held.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether a spare is missing (spent, or not opened yet).
    pub(crate) fn missing(&self) -> bool {
        self.missing.load(Ordering::Relaxed) > 0
    }

    /// Reopens every missing spare. An error other than a shortage of descriptors (no
    /// `/dev/null`) gives those spares up until the target changes, so no accept retries it.
    pub(crate) fn refill(&self) -> io::Result<()> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let target = self.target.load(Ordering::Relaxed);
        while held.len() < target {
            match File::open("/dev/null") {
                Ok(spare) => held.push(spare),
                Err(e) => {
                    let missing = if is_descriptor_shortage(&e) {
                        target - held.len()
                    } else {
                        0
                    };
                    self.missing.store(missing, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        self.missing.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Closes one spare, freeing its slot for the caller's next accept; `false` when none is
    /// left.
    pub(crate) fn spend(&self) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let Some(spare) = held.pop() else {
            return false;
        };
        drop(spare);
        self.missing.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_spent_is_missing_until_refilled() {
        let spares = SpareFds::new(2);
        assert_eq!(spares.held(), 2);
        assert!(!spares.missing());
        assert!(spares.spend());
        assert!(spares.missing());
        spares.refill().unwrap();
        assert!(!spares.missing());
        assert!(spares.spend() && spares.spend());
        assert!(!spares.spend(), "all spent");
        spares.refill().unwrap();
        assert_eq!(spares.held(), 2);
    }

    #[test]
    fn the_target_changes_live() {
        let spares = SpareFds::new(4);
        spares.set_target(1);
        assert_eq!(spares.held(), 1);
        spares.set_target(3);
        assert_eq!(spares.held(), 3);
        assert!(!spares.missing());
        spares.set_target(0);
        assert_eq!(spares.held(), 0);
        assert!(!spares.spend());
        assert!(!spares.missing());
    }
}
