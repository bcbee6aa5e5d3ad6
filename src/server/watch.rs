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

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use monoio::buf::IoBufMut;
use monoio::io::{CancelHandle, CancelableAsyncReadRent, Canceller};
use monoio::net::tcp::TcpOwnedReadHalf;

/// Why the watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// The client closed its side or the socket failed.
    Gone,
    /// The watch was cancelled by the gateway (the normal end).
    Cancelled,
    /// The client pipelined more than the buffer limit; nothing more is read.
    Full,
}

type WatchOutput = (TcpOwnedReadHalf, Vec<u8>, WatchEnd);

/// A parked read on the client's half of a connection.
pub struct ClientWatch {
    fut: Option<Pin<Box<dyn Future<Output = WatchOutput>>>>,
    done: Option<WatchOutput>,
    canceller: Canceller,
}

impl ClientWatch {
    /// Starts watching. `buf` holds bytes already read from the client that
    /// are not consumed yet; new bytes are appended, up to `limit` in all.
    pub fn start(rd: TcpOwnedReadHalf, buf: Vec<u8>, limit: usize) -> Self {
        let canceller = Canceller::new();
        let fut = Box::pin(watch(rd, buf, limit, canceller.handle()));
        Self { fut: Some(fut), done: None, canceller }
    }

    /// True once the client is known to be gone.
    pub fn client_gone(&self) -> bool {
        matches!(self.done, Some((_, _, WatchEnd::Gone)))
    }

    /// Polls the watch once, without waiting. Returns true if the client is gone.
    fn poll_gone(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if let Some(fut) = self.fut.as_mut()
            && let Poll::Ready(out) = fut.as_mut().poll(cx)
        {
            self.fut = None;
            self.done = Some(out);
        }
        self.client_gone()
    }

    /// Runs `op` until it completes or the client goes away (`None`).
    /// Dropping `op` on a disconnect is intended: it owns the upstream
    /// connection, and closing that is how Ollama learns to stop.
    pub async fn race<F: Future>(&mut self, op: F) -> Option<F::Output> {
        let mut op = std::pin::pin!(op);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = op.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            if self.poll_gone(cx) { Poll::Ready(None) } else { Poll::Pending }
        })
        .await
    }

    /// Stops watching and returns the read half, the buffer (with any bytes
    /// the client pipelined) and how the watch ended.
    pub async fn finish(mut self) -> WatchOutput {
        if let Some(done) = self.done.take() {
            return done;
        }
        let _ = self.canceller.cancel();
        match self.fut.take() {
            Some(fut) => fut.await,
            None => unreachable!("a watch holds either its future or its result"),
        }
    }
}

async fn watch(mut rd: TcpOwnedReadHalf, mut buf: Vec<u8>, limit: usize, cancel: CancelHandle) -> WatchOutput {
    loop {
        if buf.len() >= limit {
            return (rd, buf, WatchEnd::Full);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let len = buf.len();
        let (res, slice) = rd.cancelable_read(buf.slice_mut(len..), cancel.clone()).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => return (rd, buf, WatchEnd::Gone),
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) || e.kind() == std::io::ErrorKind::Interrupted => {
                return (rd, buf, WatchEnd::Cancelled);
            }
            Err(_) => return (rd, buf, WatchEnd::Gone),
        }
    }
}
