//! Time limits on awaits, with the timer kept off the future and armed only
//! when the await has to wait.
//!
//! `monoio::time::timeout` holds its timer inside the future it returns: a
//! timer entry of 640 bytes aligned to 128 (the wheel's entry is padded to a
//! cache line pair). Every async function that awaits one holds it in its own
//! state, and so does every caller up the chain: a request's future
//! (`server::respond::answer`) was 6,272 bytes aligned to 128 with them and is
//! 3,664 aligned to 8 without, and the whole of it is copied once when the
//! request is boxed. Here the timer lives on the heap, behind a pointer, and
//! is made on the first poll that finds the operation not done; an operation
//! done at once (a read the kernel had ready, a buffered head) reads no clock
//! and arms nothing.
//!
//! The limit counts from that first wait rather than from the call, which
//! is the same moment for every caller here: each awaits what it made at
//! once. [`within`] is what the gateway uses; [`plain`] is monoio's own,
//! beside it, which the tests hold it to.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::time::Sleep;

/// The limit passed before the operation was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// When a [`Within`]'s time runs out.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// This long after its first wait.
    For(Duration),
    /// At this instant.
    Until(Instant),
}

/// `op`, given at most `limit` from its first wait.
pub fn within<F: Future>(limit: Duration, op: F) -> Within<F> {
    Within { op, limit: Limit::For(limit), timer: None }
}

/// `op`, given until `deadline`.
pub fn until<F: Future>(deadline: Instant, op: F) -> Within<F> {
    Within { op, limit: Limit::Until(deadline), timer: None }
}

/// The plain version of [`within`]: monoio's timeout, its timer inline.
pub async fn plain<F: Future>(limit: Duration, op: F) -> Result<F::Output, Elapsed> {
    monoio::time::timeout(limit, op).await.map_err(|_| Elapsed)
}

/// An operation with a time limit (see the module's paragraph).
pub struct Within<F> {
    op: F,
    limit: Limit,
    /// Made at the first wait.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `op` is pinned with `self` (structural pinning): it is
        // never moved out or swapped, and is dropped in place with `self`;
        // `limit` and `timer` are not pinned (the timer is pinned on its own
        // allocation) and may be reached by `&mut`.
        let this = unsafe { self.get_unchecked_mut() };
        let op = unsafe { Pin::new_unchecked(&mut this.op) };
        if let Poll::Ready(out) = op.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let limit = this.limit;
        let timer = this.timer.get_or_insert_with(|| {
            Box::pin(match limit {
                Limit::For(d) => monoio::time::sleep(d),
                Limit::Until(at) => monoio::time::sleep_until(at.into()),
            })
        });
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: impl Future<Output = T>) -> T {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime").block_on(f)
    }

    /// An operation done at its first poll.
    fn at_once() -> std::future::Ready<u32> {
        std::future::ready(7)
    }

    /// An operation that waits `ms` first.
    async fn after(ms: u64) -> u32 {
        monoio::time::sleep(Duration::from_millis(ms)).await;
        7
    }

    #[test]
    fn an_operation_done_at_once_arms_no_timer() {
        run(async {
            let mut w = std::pin::pin!(within(Duration::from_secs(1), at_once()));
            let got = std::future::poll_fn(|cx| w.as_mut().poll(cx)).await;
            assert_eq!(got, Ok(7));
            assert!(w.timer.is_none());
        });
    }

    #[test]
    fn the_same_outcomes_as_monoios_timeout() {
        run(async {
            // Done in time, late, and at a deadline: as the plain version says.
            assert_eq!(within(Duration::from_secs(5), after(5)).await, Ok(7));
            assert_eq!(plain(Duration::from_secs(5), after(5)).await, Ok(7));
            let never = std::future::pending::<u32>;
            let started = Instant::now();
            assert_eq!(within(Duration::from_millis(30), never()).await, Err(Elapsed));
            let fast = started.elapsed();
            assert_eq!(plain(Duration::from_millis(30), never()).await, Err(Elapsed));
            assert!(fast >= Duration::from_millis(30), "it waited {fast:?}");
            let at = Instant::now() + Duration::from_millis(20);
            assert_eq!(until(at, never()).await, Err(Elapsed));
            assert!(Instant::now() >= at);
            // A deadline already past: the operation still gets its first poll.
            assert_eq!(until(Instant::now(), at_once()).await, Ok(7));
            assert_eq!(until(Instant::now(), never()).await, Err(Elapsed));
        });
    }

    #[test]
    fn the_timer_is_not_part_of_the_future() {
        let op = async { 1u8 };
        assert!(std::mem::size_of_val(&within(Duration::ZERO, op)) <= 48);
        assert!(std::mem::align_of::<Within<std::future::Ready<u32>>>() <= 16);
        let inline = run(async { std::mem::size_of_val(&monoio::time::timeout(Duration::ZERO, async { 1u8 })) });
        assert!(inline >= 512, "monoio's timer is inline ({inline} bytes): the reason for this module");
    }
}
