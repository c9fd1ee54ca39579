//! What a failed accept means, and how long an accept loop pauses after one.
//!
//! A failure that belongs to one connection (the peer reset or aborted it before it was
//! accepted) is skipped. Anything else means the process or the system is short of something
//! (file descriptors, socket buffers, memory): retrying at once would spin, so the loop pauses,
//! longer with each failure in a row, as Go's `net/http` and hyper's examples do.

use std::io;
use std::time::Duration;

use poolserve_pool::AcceptErrorKind;

/// The first pause after a failed accept.
pub(crate) const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause: accepting resumes within this long of resources coming back.
pub(crate) const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// What a failed accept was, or `None` for a failure of that one connection, which is not
/// counted and needs no pause.
pub(crate) fn kind(e: &io::Error) -> Option<AcceptErrorKind> {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return None;
    }
    // Linux's numbers (asm-generic/errno-base.h, errno.h); elsewhere only ENOMEM is told apart.
    Some(match e.raw_os_error() {
        #[cfg(target_os = "linux")]
        Some(24) => AcceptErrorKind::Emfile,
        #[cfg(target_os = "linux")]
        Some(23) => AcceptErrorKind::Enfile,
        #[cfg(target_os = "linux")]
        Some(105) => AcceptErrorKind::Enobufs,
        _ if e.kind() == io::ErrorKind::OutOfMemory => AcceptErrorKind::Enomem,
        _ => AcceptErrorKind::Other,
    })
}

/// Whether `e` is a shortage of file descriptors (`EMFILE`, `ENFILE`).
pub(crate) fn is_descriptor_shortage(e: &io::Error) -> bool {
    kind(e).is_some_and(|k| k.is_descriptor_shortage())
}

/// The pause after each failed accept in a row: [`FIRST_PAUSE`], doubling up to
/// [`LONGEST_PAUSE`], back to the first once an accept succeeds.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_PAUSE }
    }
}

impl Backoff {
    /// The pause after one more failure in a row.
    pub(crate) fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(LONGEST_PAUSE);
        pause
    }

    /// An accept succeeded: the next failure pauses briefly again.
    pub(crate) fn succeeded(&mut self) {
        self.next = FIRST_PAUSE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_apart_and_the_peers_own_are_skipped() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(kind(&os(24)), Some(AcceptErrorKind::Emfile));
        assert_eq!(kind(&os(23)), Some(AcceptErrorKind::Enfile));
        assert_eq!(kind(&os(105)), Some(AcceptErrorKind::Enobufs));
        assert_eq!(kind(&os(12)), Some(AcceptErrorKind::Enomem));
        assert_eq!(kind(&os(1)), Some(AcceptErrorKind::Other));
        assert!(is_descriptor_shortage(&os(24)) && is_descriptor_shortage(&os(23)));
        assert!(!is_descriptor_shortage(&os(105)));
        for skipped in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionRefused,
        ] {
            assert_eq!(kind(&skipped.into()), None);
        }
    }

    #[test]
    fn the_pause_doubles_up_to_its_bound_and_resets_after_a_success() {
        let mut b = Backoff::default();
        let pauses: Vec<u128> = (0..10).map(|_| b.failed().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), FIRST_PAUSE);
    }
}
