//! A time limit on an await: `http::deadline::within` (the timer on the
//! heap, made at the first wait) against its plain version, monoio's
//! `timeout` (the timer inline, made with the future), for an operation done at its first poll
//! and for one that waits once; and what each adds to the size of the
//! future that awaits it (printed once: every caller up the chain carries it).

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ai_gateway::http::deadline;
use criterion::{Criterion, criterion_group, criterion_main};

/// Done at its `n`th poll, waking itself before.
struct DoneAt(u32);

impl Future for DoneAt {
    type Output = u32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        if self.0 == 0 {
            return Poll::Ready(1);
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn bench(c: &mut Criterion) {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().expect("runtime");
    let limit = Duration::from_secs(60);
    rt.block_on(async {
        let ours = std::mem::size_of_val(&deadline::within(limit, DoneAt(0)));
        let inline = std::mem::size_of_val(&monoio::time::timeout(limit, DoneAt(0)));
        println!("future size: within {ours} bytes, monoio::time::timeout {inline} bytes");
    });
    let mut g = c.benchmark_group("deadline");
    for (name, polls) in [("done_at_once", 0), ("waits_once", 1)] {
        g.bench_function(format!("within_{name}"), |b| {
            b.iter(|| rt.block_on(async { deadline::within(limit, DoneAt(black_box(polls))).await }))
        });
        g.bench_function(format!("plain_{name}"), |b| {
            b.iter(|| rt.block_on(async { deadline::plain(limit, DoneAt(black_box(polls))).await }))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
