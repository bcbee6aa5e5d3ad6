//! Watching a client socket while the gateway waits on the upstream.
//!
//! Ollama stops generating only when its connection closes, so the gateway
//! must notice a client that goes away — while the model is still thinking,
//! or mid-stream — and close the upstream connection at once. A disconnect is
//! seen only if a read is parked on the client socket, so for the length of a
//! proxied request the connection is split: the read half goes into a
//! [`ClientWatch`], a persistent read that completes only when the client
//! closes or errors. Bytes a client pipelines meanwhile are kept in the
//! watch's buffer, not lost. When the request is done the read is cancelled
//! (not dropped, which could lose bytes that already arrived) and the buffer
//! and read half are handed back so the connection can go on.
//!
//! The read is armed only once the upstream has kept the request waiting for
//! [`ARM_AFTER`]: an answer that comes sooner (a listing, a cached or tiny
//! reply) costs no read and no cancel on the client socket: two of the six
//! io_uring operations of a small proxied request (measured: 60k → 64k tiny
//! requests per second). A client leaving within that first millisecond is
//! noticed a millisecond late.
//!
//! The end of the client's sending side (EOF) is not a departure by itself:
//! a client may half-close after its request and still read the answer.
//! Only a failed socket (a reset) is. So at EOF, while nothing of the
//! answer has been written, the watch asks: it sends an HTTP/1.1 client an
//! interim `100 Continue` (which every client must skip), a few times
//! ([`PROBES`]); a client that closed its socket altogether answers with a
//! reset, and the next probe fails. One that half-closed reads its answer.
//! Once the answer has begun, a write to a closed client fails by itself.
//!
//! A watch can also follow the worker's [`Cutoff`]: when a stop's grace
//! period runs out, every wait raced against a watch ends at once as if the
//! client had left, and [`ClientWatch::cut_off`] tells the request to end
//! properly instead (an error for its client, its usage recorded).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{CancelHandle, CancelableAsyncReadRent, Canceller};
use monoio::net::tcp::TcpOwnedReadHalf;

/// How long a request may wait on the upstream before the client's socket is watched.
pub const ARM_AFTER: Duration = Duration::from_millis(1);

/// When the interim responses that tell a half-close from a departure are
/// sent, after the client's EOF (three at most: some clients refuse more
/// than five 1xx responses before the final one).
pub const PROBES: [Duration; 3] = [Duration::ZERO, Duration::from_millis(50), Duration::from_secs(1)];

/// The interim response sent as a probe.
const PROBE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Why the watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// The socket failed (a reset): the client is gone.
    Gone,
    /// The client closed its sending side: it may still read the answer
    /// (a half-close), so this is not a departure; one that closed its
    /// socket altogether is found out when a write to it fails.
    HalfClosed,
    /// The watch was cancelled by the gateway (the normal end).
    Cancelled,
    /// The client pipelined more than the buffer limit; nothing more is read.
    Full,
}

type WatchOutput = (TcpOwnedReadHalf, Vec<u8>, WatchEnd);

enum State {
    /// Not armed yet: the read half, the buffer and its limit.
    Waiting(TcpOwnedReadHalf, Vec<u8>, usize),
    /// The parked read.
    Armed(Pin<Box<dyn Future<Output = WatchOutput>>>),
    /// The read ended (client gone, buffer full).
    Done(WatchOutput),
    /// Transient, while moving between states.
    Empty,
}

/// The end of a stop's grace period on one worker: fired once, it wakes
/// every request waiting in a [`ClientWatch::race`].
#[derive(Default)]
pub struct Cutoff {
    fired: Cell<bool>,
    /// The waiting requests' wakers, by watch.
    waiting: RefCell<HashMap<u64, Waker>>,
    next_id: Cell<u64>,
}

impl Cutoff {
    /// Ends every raced wait now and from now on.
    pub fn fire(&self) {
        self.fired.set(true);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for (_, w) in waiting {
            w.wake();
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.get()
    }
}

/// A parked read on the client's half of a connection.
pub struct ClientWatch {
    state: State,
    arm_at: Instant,
    canceller: Canceller,
    /// The worker's cutoff and this watch's place in it (once registered).
    cutoff: Option<(Rc<Cutoff>, Option<u64>)>,
    /// The end of the client's sending side counts as its departure (as
    /// Ollama takes it; the emulator's watch), not as a half-close.
    eof_is_gone: bool,
    /// Probes may be sent at EOF (an HTTP/1.1 client, nothing of the answer written yet).
    probing: bool,
    /// The client socket's descriptor, for the probes.
    fd: i32,
    /// Probes sent so far.
    probes: usize,
}

impl ClientWatch {
    /// Starts watching (from [`ARM_AFTER`] on). `buf` holds bytes already read
    /// from the client that are not consumed yet; new bytes are appended, up
    /// to `limit` in all.
    pub fn start(rd: TcpOwnedReadHalf, buf: Vec<u8>, limit: usize) -> Self {
        Self {
            state: State::Waiting(rd, buf, limit),
            arm_at: Instant::now() + ARM_AFTER,
            canceller: Canceller::new(),
            cutoff: None,
            eof_is_gone: false,
            probing: false,
            fd: -1,
            probes: 0,
        }
    }

    /// Tells a half-close from a departure with interim responses sent on
    /// `fd` (the client socket), for an HTTP/1.1 client, until
    /// [`answer_begins`](Self::answer_begins).
    pub fn probing(mut self, http11: bool, fd: i32) -> Self {
        self.probing = http11 && fd >= 0;
        self.fd = fd;
        self
    }

    /// The answer is being written: no interim response may go out now.
    pub fn answer_begins(&mut self) {
        self.probing = false;
    }

    /// Takes the end of the client's sending side for its departure (what
    /// Ollama does; the emulator's watch).
    pub fn eof_is_departure(mut self) -> Self {
        self.eof_is_gone = true;
        self
    }

    /// Also ends every race when `cutoff` fires.
    pub fn with_cutoff(mut self, cutoff: Rc<Cutoff>) -> Self {
        self.cutoff = Some((cutoff, None));
        self
    }

    /// True once the client is known to be gone.
    pub fn client_gone(&self) -> bool {
        match self.state {
            State::Done((_, _, WatchEnd::Gone)) => true,
            State::Done((_, _, WatchEnd::HalfClosed)) => self.eof_is_gone,
            _ => false,
        }
    }

    /// True once the worker's stop has cut its requests off.
    pub fn cut_off(&self) -> bool {
        self.cutoff.as_ref().is_some_and(|(c, _)| c.fired())
    }

    /// Whether the cutoff has fired; if not, makes sure it will wake this task.
    fn poll_cutoff(&mut self, waker: &Waker) -> bool {
        let Some((cutoff, id)) = &mut self.cutoff else { return false };
        if cutoff.fired() {
            return true;
        }
        // A watch lives in one task, whose waker does not change: register once.
        if id.is_none() {
            let n = cutoff.next_id.get();
            cutoff.next_id.set(n + 1);
            cutoff.waiting.borrow_mut().insert(n, waker.clone());
            *id = Some(n);
        }
        false
    }

    fn arm(&mut self) {
        if let State::Waiting(rd, buf, limit) = std::mem::replace(&mut self.state, State::Empty) {
            self.state = State::Armed(Box::pin(watch(rd, buf, limit, self.canceller.handle())));
        }
    }

    /// Polls the watch once, without waiting. Returns true if the client is gone.
    fn poll_gone(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if let State::Armed(fut) = &mut self.state
            && let Poll::Ready(out) = fut.as_mut().poll(cx)
        {
            self.state = State::Done(out);
        }
        self.client_gone()
    }

    /// Runs `op` until it completes, or the client goes away or the worker's
    /// cutoff fires (`None`; [`cut_off`](Self::cut_off) tells which). The
    /// caller then drops `op` (it owns the upstream connection, and closing
    /// that is how Ollama learns to stop): pin it in a scope that ends with
    /// the race. `op` is borrowed pinned, not moved in, so a future as large
    /// as an endpoint's is stored once (in the caller), not twice.
    pub async fn race<F: Future>(&mut self, mut op: std::pin::Pin<&mut F>) -> Option<F::Output> {
        // The timers live on the heap, made when first needed (see
        // `super::deadline`): a request done before its watch is due arms none.
        let mut arm_timer = None::<std::pin::Pin<Box<monoio::time::Sleep>>>;
        let mut probe_timer = None::<std::pin::Pin<Box<monoio::time::Sleep>>>;
        let half_closed_at = Cell::new(None::<Instant>);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = op.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            if self.poll_cutoff(cx.waker()) {
                return Poll::Ready(None);
            }
            if matches!(self.state, State::Waiting(..)) {
                let arm_at = self.arm_at;
                let t = arm_timer.get_or_insert_with(|| Box::pin(monoio::time::sleep_until(arm_at.into())));
                if t.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                arm_timer = None;
                self.arm();
            }
            if self.poll_gone(cx) {
                return Poll::Ready(None);
            }
            // At EOF: probe, at the times PROBES says, while that may be done.
            while self.probing && self.half_closed() && self.probes < PROBES.len() {
                let since = *half_closed_at.get().get_or_insert_with(Instant::now);
                half_closed_at.set(Some(since));
                let due = since + PROBES[self.probes];
                if let Some(t) = probe_timer.as_mut()
                    && t.as_mut().poll(cx).is_pending()
                {
                    return Poll::Pending;
                }
                if Instant::now() < due {
                    probe_timer = Some(Box::pin(monoio::time::sleep_until(due.into())));
                    continue;
                }
                probe_timer = None;
                self.probes += 1;
                if !self.probe() {
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Whether the watch ended at the client's EOF.
    fn half_closed(&self) -> bool {
        matches!(self.state, State::Done((_, _, WatchEnd::HalfClosed)))
    }

    /// Sends one probe; false (and the client taken for gone) when the
    /// socket refuses it: the client answered an earlier one with a reset.
    fn probe(&mut self) -> bool {
        let State::Done((_, _, end)) = &mut self.state else { return true };
        // SAFETY: send reads PROBE's bytes, a static; the descriptor is the
        // client socket, which the read half in this state keeps open.
        let n =
            unsafe { libc::send(self.fd, PROBE.as_ptr().cast(), PROBE.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            *end = WatchEnd::Gone;
            return false;
        }
        true
    }

    /// Stops watching and returns the read half, the buffer (with any bytes
    /// the client pipelined) and how the watch ended.
    pub async fn finish(mut self) -> WatchOutput {
        self.leave_cutoff();
        match std::mem::replace(&mut self.state, State::Empty) {
            State::Waiting(rd, buf, _) => (rd, buf, WatchEnd::Cancelled),
            State::Done(out) => out,
            State::Armed(fut) => {
                let _ = std::mem::replace(&mut self.canceller, Canceller::new()).cancel();
                fut.await
            }
            State::Empty => unreachable!("a watch is only empty while changing state"),
        }
    }
}

impl ClientWatch {
    fn leave_cutoff(&mut self) {
        if let Some((cutoff, Some(id))) = &mut self.cutoff {
            cutoff.waiting.borrow_mut().remove(id);
        }
        self.cutoff = self.cutoff.take().map(|(c, _)| (c, None));
    }
}

impl Drop for ClientWatch {
    fn drop(&mut self) {
        self.leave_cutoff();
    }
}

async fn watch(mut rd: TcpOwnedReadHalf, mut buf: Vec<u8>, limit: usize, cancel: CancelHandle) -> WatchOutput {
    loop {
        if buf.len() >= limit {
            return (rd, buf, WatchEnd::Full);
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(buf.capacity().max(1024));
        }
        let len = buf.len();
        let (res, slice) = rd.cancelable_read(buf.slice_mut(len..), cancel.clone()).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => return (rd, buf, WatchEnd::HalfClosed),
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) || e.kind() == std::io::ErrorKind::Interrupted => {
                return (rd, buf, WatchEnd::Cancelled);
            }
            Err(_) => return (rd, buf, WatchEnd::Gone),
        }
    }
}
