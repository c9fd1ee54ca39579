//! Lock-free admission counter.
//!
//! Contract:
//! - [`AdmissionCounter::try_admit`] succeeds only while fewer than `max` connections are open
//!   and the counter is open; it is one compare-and-swap on the fast path, never a lock.
//! - Every successful admission is matched by exactly one [`AdmissionCounter::release`] (the
//!   connection guard's drop), so the count can never leak.
//! - When the limit is lowered below the open count, [`AdmissionCounter::try_claim_shed`] hands
//!   out exactly `open - max` shedding claims. A claim is returned by the release of the
//!   connection that took it, so connections that close on their own shrink the excess too.
//!
//! The open count and the number of shedding claims share one 64-bit word so that "is there
//! still an excess?" and "take a claim" are a single atomic step.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Sentinel for "no limit".
const UNLIMITED: u32 = u32::MAX;
const ACTIVE_MASK: u64 = 0xFFFF_FFFF;
const SHED_ONE: u64 = 1 << 32;

/// Why an admission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The pool is at `max_connections`.
    AtLimit,
    /// The client IP is at `max_connections_per_ip`.
    PerIpLimit,
    /// The pool is draining or closed.
    NotAccepting,
    /// The protocol policy's `validate` hook refused the peer.
    Invalid(&'static str),
}

impl Refusal {
    /// Every reason label, in the order [`Refusal::index`] gives.
    pub const REASONS: [&'static str; 4] =
        ["max_connections", "per_ip", "not_accepting", "invalid"];

    /// The label metrics count this refusal under.
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.index()]
    }

    /// The position of this refusal's reason in [`Refusal::REASONS`].
    pub fn index(&self) -> usize {
        match self {
            Refusal::AtLimit => 0,
            Refusal::PerIpLimit => 1,
            Refusal::NotAccepting => 2,
            Refusal::Invalid(_) => 3,
        }
    }

    /// Whether the refusal is pressure on the pool itself: only its own `max_connections`.
    /// One client at its per-IP limit, a peer the policy refused and a draining pool say
    /// nothing about the pool's capacity, so they do not weigh in its health.
    pub fn is_pool_pressure(&self) -> bool {
        matches!(self, Refusal::AtLimit)
    }
}

/// Counts open connections against a limit without locks.
#[derive(Debug)]
pub struct AdmissionCounter {
    /// Low 32 bits: open connections. High 32 bits: shedding claims outstanding.
    state: AtomicU64,
    max: AtomicU32,
    accepting: AtomicBool,
}

fn active(word: u64) -> u32 {
    (word & ACTIVE_MASK) as u32
}

fn shedding(word: u64) -> u32 {
    (word >> 32) as u32
}

impl AdmissionCounter {
    /// A counter with the given limit (`None` = unlimited), open for admission.
    pub fn new(max: Option<u32>) -> Self {
        AdmissionCounter {
            state: AtomicU64::new(0),
            max: AtomicU32::new(max.unwrap_or(UNLIMITED)),
            accepting: AtomicBool::new(true),
        }
    }

    /// Takes one slot if the limit allows it, returning the open count including it.
    pub fn try_admit(&self) -> Result<u32, Refusal> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(Refusal::NotAccepting);
        }
        let max = self.max.load(Ordering::Acquire);
        let mut word = self.state.load(Ordering::Relaxed);
        loop {
            if active(word) >= max {
                return Err(Refusal::AtLimit);
            }
            match self.state.compare_exchange_weak(
                word,
                word + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(active(word) + 1),
                Err(now) => word = now,
            }
        }
    }

    /// Gives back one slot; `claimed_shed` says whether this connection held a shedding claim.
    /// Returns the open count after the release.
    pub fn release(&self, claimed_shed: bool) -> u32 {
        let delta = if claimed_shed { 1 + SHED_ONE } else { 1 };
        let before = self.state.fetch_sub(delta, Ordering::AcqRel);
        debug_assert!(active(before) >= 1, "release without admission");
        active(before) - 1
    }

    /// Takes a shedding claim if more connections are open than the limit allows (after the
    /// claims already handed out). The caller must close its connection and pass `true` to
    /// [`release`](Self::release).
    pub fn try_claim_shed(&self) -> bool {
        let max = self.max.load(Ordering::Acquire);
        let mut word = self.state.load(Ordering::Relaxed);
        loop {
            let remaining = active(word).saturating_sub(shedding(word));
            if remaining <= max {
                return false;
            }
            match self.state.compare_exchange_weak(
                word,
                word + SHED_ONE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => word = now,
            }
        }
    }

    /// True while more connections are open than the limit, counting claims already taken.
    pub fn has_excess(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        let word = self.state.load(Ordering::Relaxed);
        active(word).saturating_sub(shedding(word)) > max
    }

    /// Open connections.
    pub fn active(&self) -> u32 {
        active(self.state.load(Ordering::Acquire))
    }

    /// The limit (`None` = unlimited).
    pub fn max(&self) -> Option<u32> {
        match self.max.load(Ordering::Acquire) {
            UNLIMITED => None,
            n => Some(n),
        }
    }

    /// Changes the limit; open connections above it are not touched here (see shedding).
    pub fn set_max(&self, max: Option<u32>) {
        self.max.store(max.unwrap_or(UNLIMITED), Ordering::Release);
    }

    /// Whether admission is open.
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// Opens or closes admission.
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn admits_up_to_the_limit_exactly() {
        let c = AdmissionCounter::new(Some(3));
        for open in 1..=3 {
            assert_eq!(c.try_admit(), Ok(open));
        }
        assert_eq!(c.try_admit(), Err(Refusal::AtLimit));
        assert_eq!(c.release(false), 2);
        c.try_admit().unwrap();
        assert_eq!(c.active(), 3);
    }

    #[test]
    fn closed_counter_refuses() {
        let c = AdmissionCounter::new(None);
        c.set_accepting(false);
        assert_eq!(c.try_admit(), Err(Refusal::NotAccepting));
    }

    #[test]
    fn shedding_hands_out_exactly_the_excess() {
        let c = AdmissionCounter::new(Some(10));
        for _ in 0..10 {
            c.try_admit().unwrap();
        }
        c.set_max(Some(7));
        assert!(c.has_excess());
        let claims = (0..10).filter(|_| c.try_claim_shed()).count();
        assert_eq!(claims, 3);
        assert!(!c.has_excess());
        // One unclaimed connection closes on its own: no new claim appears.
        c.release(false);
        assert!(!c.try_claim_shed());
        for _ in 0..3 {
            c.release(true);
        }
        assert_eq!(c.active(), 6);
        c.try_admit().unwrap();
        assert_eq!(c.try_admit(), Err(Refusal::AtLimit));
    }

    #[test]
    fn natural_closes_shrink_the_excess() {
        let c = AdmissionCounter::new(Some(4));
        for _ in 0..4 {
            c.try_admit().unwrap();
        }
        c.set_max(Some(2));
        for _ in 0..2 {
            c.release(false);
        }
        assert!(!c.try_claim_shed());
    }

    #[test]
    fn concurrent_admit_and_release_ends_at_zero_and_never_overshoots() {
        let c = Arc::new(AdmissionCounter::new(Some(64)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut admitted = 0u32;
                    for i in 0..20_000 {
                        if c.try_admit().is_ok() {
                            assert!(c.active() <= 64);
                            admitted += 1;
                            if i % 3 != 0 {
                                c.release(false);
                                admitted -= 1;
                            }
                        }
                        if admitted > 4 {
                            c.release(false);
                            admitted -= 1;
                        }
                    }
                    for _ in 0..admitted {
                        c.release(false);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.active(), 0);
    }
}
