//! The pool's clock: timestamps as nanoseconds since a pool's origin.
//!
//! Contract: [`Origin::now_nanos`] is read two or more times per request, so on the default
//! [`Clock::System`] it is one `clock_gettime(CLOCK_MONOTONIC)` (libc's, which reads the vDSO)
//! and an integer subtraction. On Linux that is the clock `std::time::Instant`, and so tokio's,
//! reads, so a stamp converts to the [`Instant`] the timers use with [`Origin::instant`]. Going
//! through `Instant` instead costs `Timespec` arithmetic, a `Duration` and a 128-bit multiply
//! per read (docs/design.md, "Choices measured").

use std::time::Duration;
use tokio::time::Instant;

/// Where a pool reads the time its requests and phases are stamped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// The system's monotonic clock, read directly: the default.
    #[default]
    System,
    /// tokio's clock, which tests can pause and advance (`tokio::time::pause`); slower per read.
    Tokio,
}

/// The start of a pool's timestamps, on the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    instant: Instant,
    /// The raw clock's reading at `instant`, in nanoseconds; `None` when stamps are read through
    /// tokio's `Instant` ([`Clock::Tokio`], or off Linux).
    raw: Option<u64>,
}

impl Origin {
    /// Now as the origin of stamps read on `clock`.
    pub fn now(clock: Clock) -> Self {
        match clock {
            #[cfg(target_os = "linux")]
            Clock::System => {
                // The raw reading taken as the instant's is the midpoint of two around it.
                let before = raw_nanos();
                let instant = Instant::now();
                let after = raw_nanos();
                Origin {
                    instant,
                    raw: Some(before + (after - before) / 2),
                }
            }
            _ => Origin {
                instant: Instant::now(),
                raw: None,
            },
        }
    }

    /// Nanoseconds from the origin to now: one clock read.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        match self.raw {
            #[cfg(target_os = "linux")]
            Some(raw) => raw_nanos().saturating_sub(raw),
            _ => self.nanos(Instant::now()),
        }
    }

    /// Nanoseconds from the origin to `at` (0 before it).
    pub fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.instant).as_nanos() as u64
    }

    /// The instant `nanos` after the origin.
    pub fn instant(&self, nanos: u64) -> Instant {
        self.instant + Duration::from_nanos(nanos)
    }

    /// The time from the origin to `now`.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.instant)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds.
#[cfg(target_os = "linux")]
#[inline]
fn raw_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // A monotonic clock's reading is never negative.
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_stamp_converts_to_the_instant_it_was_read_at(clock: Clock) {
        let origin = Origin::now(clock);
        std::thread::sleep(Duration::from_millis(2));
        let before = Instant::now();
        let stamp = origin.now_nanos();
        let after = Instant::now();
        let at = origin.instant(stamp);
        // The origin's reads of the two clocks are nanoseconds apart (microseconds on a first
        // read by a thread under tokio's test-util); the bound is generous.
        let slack = Duration::from_micros(50);
        assert!(
            at + slack >= before && at <= after + slack,
            "{clock:?}: {at:?} not in {before:?}..{after:?}"
        );
        assert!(
            stamp >= 2_000_000,
            "{clock:?}: {stamp} ns after a 2 ms sleep"
        );
    }

    #[test]
    fn a_system_stamp_converts_to_the_instant_it_was_read_at() {
        a_stamp_converts_to_the_instant_it_was_read_at(Clock::System);
    }

    #[test]
    fn a_tokio_stamp_converts_to_the_instant_it_was_read_at() {
        a_stamp_converts_to_the_instant_it_was_read_at(Clock::Tokio);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let origin = Origin::now(Clock::Tokio);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(origin.now_nanos(), 3_000_000_000);
    }

    #[test]
    fn system_stamps_never_go_back() {
        let origin = Origin::now(Clock::System);
        let mut last = 0;
        for _ in 0..10_000 {
            let now = origin.now_nanos();
            assert!(now >= last);
            last = now;
        }
    }
}
