//! The fair upstream queue: at most `--upstream-max-concurrent` generations
//! in flight to Ollama, the rest waiting in a bounded queue served
//! round-robin across keys.
//!
//! A GPU host runs a few generations at a time; everything beyond that only
//! piles up in Ollama's own queue, where one client with a hundred requests
//! starves everyone behind it. Here each key has its own FIFO and a freed
//! slot goes to the next key in turn, so a key with a long backlog delays
//! another key's request by at most one slot per key ahead of it. The
//! waiting places are shared fairly too: when the queue is full, a key
//! holding fewer than its share (the places divided by the keys waiting)
//! takes the newest place of the key holding the most, if that key holds
//! more than its share; otherwise the newcomer gets a fast 503
//! (`upstream_overloaded`). So one key filling the queue cannot turn every
//! other key away. A wait longer than `--upstream-queue-timeout` is a 503
//! too; a waiting request whose client leaves is dropped from the queue. The gate is shared by all workers: its lock is
//! taken once to enter and once to leave, never per token, and a slot freed
//! on one core wakes the waiter on another (monoio's cross-thread wakers).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::client::UpstreamError;

/// Where a queued request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Waiting,
    /// A slot was handed to it.
    Granted,
    /// Its place was given to another key's request (it held more than its share).
    Evicted,
}

/// One queued request.
struct Waiter {
    standing: Standing,
    waker: Option<Waker>,
}

#[derive(Default)]
struct GateState {
    in_flight: usize,
    queued: usize,
    /// Keys with waiters, in turn order.
    turn: VecDeque<String>,
    waiters: HashMap<String, VecDeque<Arc<Mutex<Waiter>>>>,
}

/// The gate in front of the upstream.
pub struct UpstreamGate {
    max_in_flight: usize,
    queue_cap: usize,
    state: Mutex<GateState>,
}

/// A slot of the upstream; freed (and handed to the next waiter) on drop.
pub struct Permit {
    gate: Arc<UpstreamGate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// Gauges for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLoad {
    pub in_flight: usize,
    pub queued: usize,
}

fn overloaded(message: String) -> UpstreamError {
    UpstreamError::Overloaded(message)
}

impl UpstreamGate {
    pub fn new(max_in_flight: usize, queue_cap: usize) -> Arc<Self> {
        Arc::new(Self { max_in_flight: max_in_flight.max(1), queue_cap, state: Mutex::new(GateState::default()) })
    }

    pub fn load(&self) -> GateLoad {
        let s = self.state.lock();
        GateLoad { in_flight: s.in_flight, queued: s.queued }
    }

    /// Waits for a slot for a request of `key`. Dropping the future leaves the queue.
    pub fn acquire(self: &Arc<Self>, key: &str) -> Acquire {
        let mut s = self.state.lock();
        if s.in_flight < self.max_in_flight && s.queued == 0 {
            s.in_flight += 1;
            return Acquire { gate: self.clone(), waiter: None, ready: Some(Ok(())), key: String::new() };
        }
        if s.queued >= self.queue_cap && !s.evict_for(key, self.queue_cap) {
            let msg = format!(
                "The model server is busy: {} requests are running and {} waiting, the most this gateway queues. Try again shortly.",
                s.in_flight, s.queued
            );
            return Acquire { gate: self.clone(), waiter: None, ready: Some(Err(overloaded(msg))), key: String::new() };
        }
        let waiter = Arc::new(Mutex::new(Waiter { standing: Standing::Waiting, waker: None }));
        let st = &mut *s;
        let list = st.waiters.entry(key.to_owned()).or_default();
        if list.is_empty() {
            st.turn.push_back(key.to_owned());
        }
        list.push_back(waiter.clone());
        st.queued += 1;
        Acquire { gate: self.clone(), waiter: Some(waiter), ready: None, key: key.to_owned() }
    }

    /// Frees a slot and hands it to the next key in turn.
    fn release(&self) {
        let mut s = self.state.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        while s.in_flight < self.max_in_flight {
            let Some(key) = s.turn.pop_front() else { break };
            let Some(list) = s.waiters.get_mut(&key) else { continue };
            let Some(next) = list.pop_front() else {
                s.waiters.remove(&key);
                continue;
            };
            if list.is_empty() {
                s.waiters.remove(&key);
            } else {
                s.turn.push_back(key);
            }
            s.queued -= 1;
            s.in_flight += 1;
            let mut w = next.lock();
            w.standing = Standing::Granted;
            if let Some(waker) = w.waker.take() {
                waker.wake();
            }
        }
    }

    /// Takes a waiter out of the queue (its client left, or it timed out).
    /// Returns true if it had been granted a slot meanwhile (the caller then owns it).
    fn leave(&self, key: &str, waiter: &Arc<Mutex<Waiter>>) -> bool {
        let mut s = self.state.lock();
        match waiter.lock().standing {
            Standing::Granted => return true,
            Standing::Evicted => return false,
            Standing::Waiting => {}
        }
        if let Some(list) = s.waiters.get_mut(key)
            && let Some(i) = list.iter().position(|w| Arc::ptr_eq(w, waiter))
        {
            list.remove(i);
            if list.is_empty() {
                s.waiters.remove(key);
                s.turn.retain(|k| k != key);
            }
            s.queued -= 1;
        }
        false
    }
}

impl GateState {
    /// Makes room in a full queue for a request of `key`, if `key` holds less
    /// than its fair share of the `cap` places and another key holds more:
    /// that key's newest waiter loses its place. Returns whether room was made.
    fn evict_for(&mut self, key: &str, cap: usize) -> bool {
        let mine = self.waiters.get(key).map_or(0, VecDeque::len);
        let keys = self.waiters.len() + usize::from(mine == 0);
        let share = cap.div_ceil(keys.max(1));
        let Some((hog, most)) = self.waiters.iter().map(|(k, l)| (k, l.len())).max_by_key(|&(_, n)| n) else {
            return false;
        };
        if mine >= share || most <= share {
            return false;
        }
        let hog = hog.clone();
        let Some(list) = self.waiters.get_mut(&hog) else { return false };
        let Some(newest) = list.pop_back() else { return false };
        if list.is_empty() {
            self.waiters.remove(&hog);
            self.turn.retain(|k| *k != hog);
        }
        self.queued -= 1;
        let mut w = newest.lock();
        w.standing = Standing::Evicted;
        if let Some(waker) = w.waker.take() {
            waker.wake();
        }
        true
    }
}

/// The future of [`UpstreamGate::acquire`].
pub struct Acquire {
    gate: Arc<UpstreamGate>,
    waiter: Option<Arc<Mutex<Waiter>>>,
    ready: Option<Result<(), UpstreamError>>,
    key: String,
}

impl Future for Acquire {
    type Output = Result<Permit, UpstreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.ready.take() {
            return Poll::Ready(r.map(|_| Permit { gate: self.gate.clone() }));
        }
        let Some(waiter) = self.waiter.clone() else {
            return Poll::Ready(Err(overloaded("The upstream queue was left.".into())));
        };
        let mut w = waiter.lock();
        match w.standing {
            Standing::Granted => {
                drop(w);
                self.waiter = None;
                Poll::Ready(Ok(Permit { gate: self.gate.clone() }))
            }
            Standing::Evicted => {
                drop(w);
                self.waiter = None;
                Poll::Ready(Err(overloaded(
                    "The model server is busy and this key holds more than its share of the waiting places: \
                     its newest request gave its place to another key's. Try again shortly."
                        .into(),
                )))
            }
            Standing::Waiting => {
                w.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        // Left the queue before being served: give up the place, or the slot
        // if it was granted in the meantime.
        if let Some(waiter) = self.waiter.take()
            && self.gate.leave(&self.key, &waiter)
        {
            self.gate.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Acquire) -> Option<Result<Permit, UpstreamError>> {
        let waker = Waker::from(Arc::new(Flag(false.into())));
        match Pin::new(f).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    #[test]
    fn slots_go_round_robin_across_keys() {
        let gate = UpstreamGate::new(1, 100);
        let first = poll(&mut gate.acquire("heavy")).unwrap().unwrap();
        let mut heavy: Vec<Acquire> = (0..5).map(|_| gate.acquire("heavy")).collect();
        let mut light = gate.acquire("light");
        assert!(heavy.iter_mut().all(|a| poll(a).is_none()) && poll(&mut light).is_none());
        assert_eq!(gate.load(), GateLoad { in_flight: 1, queued: 6 });
        drop(first);
        // Heavy queued first, so one heavy request goes, then the light one.
        let h1 = poll(&mut heavy[0]).unwrap().unwrap();
        assert!(poll(&mut light).is_none());
        drop(h1);
        let l = poll(&mut light).unwrap().unwrap();
        assert!(poll(&mut heavy[1]).is_none());
        drop(l);
        assert!(poll(&mut heavy[1]).unwrap().is_ok());
    }

    #[test]
    fn a_key_that_fills_the_queue_gives_its_newest_place_to_another_key() {
        let gate = UpstreamGate::new(2, 10);
        let running: Vec<_> = (0..2).map(|_| poll(&mut gate.acquire("hog")).unwrap().unwrap()).collect();
        let mut hog: Vec<Acquire> = (0..10).map(|_| gate.acquire("hog")).collect();
        assert!(hog.iter_mut().all(|a| poll(a).is_none()));
        assert_eq!(gate.load().queued, 10);
        // The hog cannot queue an eleventh.
        assert!(poll(&mut gate.acquire("hog")).unwrap().is_err());
        // Another key is let in; the hog's newest is refused instead.
        let mut light = gate.acquire("light");
        assert!(poll(&mut light).is_none());
        let e = poll(&mut hog[9]).unwrap().err().unwrap();
        assert!(matches!(e, UpstreamError::Overloaded(_)), "{e:?}");
        assert!(hog[..9].iter_mut().all(|a| poll(a).is_none()));
        assert_eq!(gate.load().queued, 10);
        // Keys keep their share: five each when two keys wait.
        let mut others: Vec<Acquire> = (0..4).map(|_| gate.acquire("light")).collect();
        assert!(others.iter_mut().all(|a| poll(a).is_none()));
        assert!(poll(&mut gate.acquire("light")).unwrap().is_err(), "light holds its share of five");
        assert!(hog[5..9].iter_mut().all(|a| poll(a).unwrap().is_err()), "the hog's four newest gave way");
        assert!(hog[..5].iter_mut().all(|a| poll(a).is_none()));
        drop(running);
    }

    #[test]
    fn full_queue_is_refused_and_leaving_frees_the_place() {
        let gate = UpstreamGate::new(1, 2);
        let p = poll(&mut gate.acquire("a")).unwrap().unwrap();
        let mut w1 = gate.acquire("a");
        let w2 = gate.acquire("b");
        assert!(poll(&mut w1).is_none());
        let e = poll(&mut gate.acquire("c")).unwrap().err().unwrap();
        assert!(matches!(e, UpstreamError::Overloaded(_)), "{e:?}");
        drop(w2);
        assert_eq!(gate.load().queued, 1);
        drop(p);
        assert!(poll(&mut w1).unwrap().is_ok());
        // A granted-but-abandoned slot comes back.
        let mut w3 = gate.acquire("a");
        drop(w1);
        assert!(poll(&mut w3).is_some());
    }
}
