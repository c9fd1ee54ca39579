//! A connection's budget for request bytes its handlers have been handed but not yet consumed,
//! shared by its streams.
//!
//! HTTP/2 flow control bounds only what the application has not read: a handler that reads a
//! body eagerly into a buffer of its own (a decoder that reads each message whole before
//! decoding it) takes the bytes out of the window, and the peer may send more. A protocol whose reader
//! knows when the bytes it handed on are consumed reserves them here first; a stream that
//! cannot reserve stops reading, so its data stays in the connection's flow-control window and
//! the peer waits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{AcquireError, Semaphore};

/// Bytes held for one reservation, returned to the budget when dropped.
#[derive(Debug)]
pub(crate) struct Reserved {
    budget: Arc<Budget>,
    n: u32,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.budget.bytes.add_permits(self.n as usize);
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<Reserved, AcquireError>> + Send>>;

/// One connection's read budget: `capacity` bytes, granted first come, first served. One
/// pointer, as every request body of the connection holds it (and on HTTP/1 the connection's
/// buffer for its handler's future, sized to hold such a body, lives as long as it does).
#[derive(Debug, Clone)]
pub(crate) struct ReadBudget {
    inner: Arc<Budget>,
}

#[derive(Debug)]
struct Budget {
    bytes: Semaphore,
    capacity: u32,
}

impl ReadBudget {
    /// A budget of `capacity` bytes (at least 1).
    pub fn new(capacity: u32) -> Self {
        let capacity = capacity.max(1);
        ReadBudget {
            inner: Arc::new(Budget {
                bytes: Semaphore::new(capacity as usize),
                capacity,
            }),
        }
    }

    /// Bytes free right now (none while a reservation waits at the head of the line).
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.inner.bytes.available_permits()
    }
}

/// A reservation being made: `n` bytes, or the whole budget for more than it holds, so one
/// reservation larger than the budget is granted once it is alone (the budget then bounds the
/// bytes held to the larger of its capacity and that reservation). Waiting reservations are
/// served in order, so a large one is never starved by smaller ones arriving after it.
pub(crate) struct Reservation {
    budget: ReadBudget,
    n: u32,
    waiting: Option<Acquire>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("n", &self.n)
            .field("waiting", &self.waiting.is_some())
            .finish()
    }
}

impl Reservation {
    /// Starts reserving `n` bytes of `budget`.
    pub fn new(budget: &ReadBudget, n: u64) -> Self {
        let n = u32::try_from(n)
            .unwrap_or(u32::MAX)
            .min(budget.inner.capacity);
        Reservation {
            budget: budget.clone(),
            n,
            waiting: None,
        }
    }

    /// Ready with the bytes once granted; until then the task is woken when it may be.
    pub fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<Reserved> {
        if self.waiting.is_none() {
            // The common case, free room and nobody waiting, costs no allocation. tokio hands
            // released bytes to the waiter at the head of the line first, so this fails while
            // anyone waits and the order holds.
            let (budget, n) = (&self.budget.inner, self.n);
            match budget.bytes.try_acquire_many(n) {
                Ok(permit) => {
                    // Given back by `Reserved`'s drop.
                    permit.forget();
                    return Poll::Ready(Reserved {
                        budget: budget.clone(),
                        n,
                    });
                }
                Err(_) => {
                    let budget = budget.clone();
                    self.waiting = Some(Box::pin(async move {
                        budget.bytes.acquire_many(n).await?.forget();
                        Ok(Reserved { budget, n })
                    }));
                }
            }
        }
        let Some(waiting) = self.waiting.as_mut() else {
            return Poll::Pending;
        };
        match waiting.as_mut().poll(cx) {
            Poll::Ready(Ok(reserved)) => {
                self.waiting = None;
                Poll::Ready(reserved)
            }
            // The semaphore is never closed; a closed one would grant nothing ever again, so
            // waiting on is what it would mean.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(r: &mut Reservation) -> Poll<Reserved> {
        r.poll_reserve(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn reservations_within_the_budget_are_granted_at_once() {
        let budget = ReadBudget::new(100);
        let a = poll(&mut Reservation::new(&budget, 60));
        let b = poll(&mut Reservation::new(&budget, 40));
        assert!(a.is_ready() && b.is_ready());
        assert_eq!(budget.available(), 0);
        drop((a, b));
        assert_eq!(budget.available(), 100);
    }

    #[test]
    fn a_reservation_past_the_budget_waits_for_the_bytes_to_come_back() {
        let budget = ReadBudget::new(100);
        let Poll::Ready(first) = poll(&mut Reservation::new(&budget, 70)) else {
            panic!("the first reservation fits");
        };
        let mut second = Reservation::new(&budget, 50);
        assert!(poll(&mut second).is_pending());
        // A small one arriving later waits its turn behind the larger one.
        let mut third = Reservation::new(&budget, 10);
        assert!(poll(&mut third).is_pending());
        drop(first);
        assert!(poll(&mut second).is_ready());
        assert!(poll(&mut third).is_ready());
    }

    #[test]
    fn a_reservation_larger_than_the_budget_is_granted_alone() {
        let budget = ReadBudget::new(100);
        let Poll::Ready(small) = poll(&mut Reservation::new(&budget, 1)) else {
            panic!("fits");
        };
        let mut huge = Reservation::new(&budget, 1 << 40);
        assert!(poll(&mut huge).is_pending());
        drop(small);
        let Poll::Ready(alone) = poll(&mut huge) else {
            panic!("granted once alone");
        };
        assert!(poll(&mut Reservation::new(&budget, 1)).is_pending());
        drop(alone);
        assert_eq!(budget.available(), 100);
    }

    #[test]
    fn a_waiting_reservation_dropped_gives_back_what_it_was_handed() {
        let budget = ReadBudget::new(100);
        let Poll::Ready(first) = poll(&mut Reservation::new(&budget, 60)) else {
            panic!("fits");
        };
        let mut second = Reservation::new(&budget, 80);
        assert!(poll(&mut second).is_pending());
        // The waiter took the 40 bytes free, then 40 of the 60 given back.
        drop(first);
        assert_eq!(budget.available(), 20);
        // Dropped before it was polled again, it returns all it was handed.
        drop(second);
        assert_eq!(budget.available(), 100);
    }
}
