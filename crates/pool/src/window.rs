//! A decaying window of request outcomes: requests, errors, response time, rejections and
//! failed accepts.
//!
//! Contract: the window is split into [`BUCKETS`] time buckets; recording touches only the current
//! bucket (a few relaxed atomic adds), and a reading weighs each bucket by its age, halving the
//! weight every half window, so recent trouble dominates and old trouble fades out within one
//! window. A bucket is recycled lazily by the first writer of a new period; a writer racing that
//! reset may lose its sample, which only nudges a statistic and is accepted for a lock-free path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per window.
pub const BUCKETS: usize = 10;
const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
struct Bucket {
    period: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    response_micros: AtomicU64,
    rejections: AtomicU64,
    accept_errors: AtomicU64,
}

impl Bucket {
    fn new() -> Self {
        Bucket {
            period: AtomicU64::new(EMPTY),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            response_micros: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        }
    }
}

/// Weighted totals over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    /// Weighted request count.
    pub requests: f64,
    /// Weighted error count.
    pub errors: f64,
    /// Weighted mean response time in milliseconds (0 when there were no requests).
    pub average_response_ms: f64,
    /// Rejections in the window, unweighted.
    pub rejections: u64,
    /// Failed accepts in the window, unweighted.
    pub accept_errors: u64,
}

impl WindowStats {
    /// Errors over requests (0 when there were no requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests > 0.0 {
            self.errors / self.requests
        } else {
            0.0
        }
    }
}

/// The decaying window.
#[derive(Debug)]
pub struct DecayingWindow {
    bucket_nanos: AtomicU64,
    /// The period last recorded in (`EMPTY` before any).
    current: AtomicU64,
    buckets: [Bucket; BUCKETS],
}

impl DecayingWindow {
    /// A window of the given length.
    pub fn new(window: Duration) -> Self {
        DecayingWindow {
            bucket_nanos: AtomicU64::new(Self::width(window)),
            current: AtomicU64::new(EMPTY),
            buckets: std::array::from_fn(|_| Bucket::new()),
        }
    }

    fn width(window: Duration) -> u64 {
        (window.as_nanos() / BUCKETS as u128).clamp(1, u128::from(u64::MAX)) as u64
    }

    /// Changes the window length; what was recorded so far is forgotten.
    pub fn set_window(&self, window: Duration) {
        self.bucket_nanos
            .store(Self::width(window), Ordering::Relaxed);
        for b in &self.buckets {
            b.period.store(EMPTY, Ordering::Relaxed);
        }
    }

    fn bucket(&self, elapsed: Duration) -> &Bucket {
        self.bucket_at(elapsed.as_nanos() as u64)
    }

    fn bucket_at(&self, elapsed_nanos: u64) -> &Bucket {
        let width = self.bucket_nanos.load(Ordering::Relaxed);
        // The period last computed, when `elapsed_nanos` is within it (c·w ≤ e < c·w + w holds
        // for c = e / w only, whatever width it was computed with): most requests need no
        // division, which costs tens of cycles.
        let cached = self.current.load(Ordering::Relaxed);
        let period = match cached.checked_mul(width) {
            Some(start)
                if cached != EMPTY && elapsed_nanos >= start && elapsed_nanos - start < width =>
            {
                cached
            }
            _ => {
                let period = elapsed_nanos / width;
                self.current.store(period, Ordering::Relaxed);
                period
            }
        };
        let b = &self.buckets[(period % BUCKETS as u64) as usize];
        let seen = b.period.load(Ordering::Acquire);
        if seen != period
            && b.period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.errors.store(0, Ordering::Relaxed);
            b.response_micros.store(0, Ordering::Relaxed);
            b.rejections.store(0, Ordering::Relaxed);
            b.accept_errors.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Records one finished request; `elapsed` is time since the pool's origin.
    pub fn record_request(&self, elapsed: Duration, response_time: Duration, error: bool) {
        self.record_request_nanos(
            elapsed.as_nanos() as u64,
            response_time.as_nanos() as u64,
            error,
        );
    }

    /// [`DecayingWindow::record_request`] with both times in nanoseconds.
    pub fn record_request_nanos(&self, elapsed_nanos: u64, response_nanos: u64, error: bool) {
        let b = self.bucket_at(elapsed_nanos);
        b.requests.fetch_add(1, Ordering::Relaxed);
        b.response_micros
            .fetch_add(response_nanos / 1_000, Ordering::Relaxed);
        if error {
            b.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one error outside a request (a connection error).
    pub fn record_error(&self, elapsed: Duration) {
        let b = self.bucket(elapsed);
        b.errors.fetch_add(1, Ordering::Relaxed);
        // A connection-level error counts as a failed unit of work, so the rate stays within 0–1.
        b.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one refused connection.
    pub fn record_rejection(&self, elapsed: Duration) {
        self.bucket(elapsed)
            .rejections
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Records one failed accept on the server's listening socket.
    pub fn record_accept_error(&self, elapsed: Duration) {
        self.bucket(elapsed)
            .accept_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The weighted totals as of `elapsed`.
    pub fn stats(&self, elapsed: Duration) -> WindowStats {
        let now = elapsed.as_nanos() as u64 / self.bucket_nanos.load(Ordering::Relaxed);
        let half_life = BUCKETS as f64 / 2.0;
        let mut s = WindowStats::default();
        let mut micros = 0.0;
        for b in &self.buckets {
            let period = b.period.load(Ordering::Acquire);
            if period == EMPTY || period > now || now - period >= BUCKETS as u64 {
                continue;
            }
            let weight = 0.5f64.powf((now - period) as f64 / half_life);
            let requests = b.requests.load(Ordering::Relaxed) as f64;
            s.requests += weight * requests;
            s.errors += weight * b.errors.load(Ordering::Relaxed) as f64;
            micros += weight * b.response_micros.load(Ordering::Relaxed) as f64;
            s.rejections += b.rejections.load(Ordering::Relaxed);
            s.accept_errors += b.accept_errors.load(Ordering::Relaxed);
        }
        if s.requests > 0.0 {
            s.average_response_ms = micros / s.requests / 1000.0;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn recent_errors_weigh_more_and_old_ones_expire() {
        let w = DecayingWindow::new(Duration::from_secs(10));
        for _ in 0..10 {
            w.record_request(Duration::ZERO, Duration::from_millis(10), true);
        }
        for _ in 0..10 {
            w.record_request(5 * SEC, Duration::from_millis(30), false);
        }
        let s = w.stats(5 * SEC);
        // The errors are 5 buckets old: weight 0.5, so 5 / (5 + 10).
        assert!((s.error_rate() - 1.0 / 3.0).abs() < 1e-9, "{s:?}");
        assert!((s.average_response_ms - (5.0 * 10.0 + 10.0 * 30.0) / 15.0).abs() < 1e-9);
        // Ten seconds on, the error bucket has left the window.
        let later = w.stats(10 * SEC);
        assert_eq!(later.error_rate(), 0.0);
        assert_eq!(w.stats(20 * SEC), WindowStats::default());
    }

    #[test]
    fn rejections_count_within_the_window_only() {
        let w = DecayingWindow::new(Duration::from_secs(10));
        w.record_rejection(SEC);
        w.record_rejection(SEC);
        assert_eq!(w.stats(SEC * 3).rejections, 2);
        assert_eq!(w.stats(SEC * 11).rejections, 0);
    }

    #[test]
    fn accept_errors_count_within_the_window_only() {
        let w = DecayingWindow::new(Duration::from_secs(10));
        w.record_accept_error(SEC);
        assert_eq!(w.stats(SEC * 10).accept_errors, 1);
        assert_eq!(w.stats(SEC * 11).accept_errors, 0);
    }

    #[test]
    fn a_request_stamped_before_the_last_one_lands_in_its_own_period() {
        let w = DecayingWindow::new(Duration::from_secs(10));
        w.record_request(5 * SEC, Duration::ZERO, false);
        // Recorded later, stamped earlier (another thread's request): the bucket of 1 s.
        w.record_request(SEC, Duration::ZERO, true);
        let s = w.stats(5 * SEC);
        // The error is 4 buckets old: weight 0.5^(4/5).
        let weight = 0.5f64.powf(0.8);
        assert!((s.requests - (1.0 + weight)).abs() < 1e-9, "{s:?}");
        assert!((s.errors - weight).abs() < 1e-9, "{s:?}");
        // A new length: the next request's period is computed with it.
        w.set_window(Duration::from_secs(100));
        w.record_request(25 * SEC, Duration::ZERO, true);
        let s = w.stats(25 * SEC);
        assert_eq!((s.requests, s.errors), (1.0, 1.0), "{s:?}");
    }

    #[test]
    fn recycled_bucket_starts_from_zero() {
        let w = DecayingWindow::new(Duration::from_secs(10));
        w.record_request(Duration::ZERO, SEC, true);
        w.record_request(10 * SEC, Duration::ZERO, false);
        let s = w.stats(10 * SEC);
        assert_eq!(s.errors, 0.0);
        assert_eq!(s.requests, 1.0);
    }
}
