//! The cost of recording one finished request on a worker: adding it to the
//! core's accumulator (warm: the key, model and day were seen before), and
//! the day string it is filed under.

use std::hint::black_box;

use ai_gateway::accounting::usage::{UsageAccumulator, UsageRecord};
use ai_gateway::clock::today;
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let acc = UsageAccumulator::default();
    let keys: Vec<String> = (0..100).map(|i| format!("key_{i:012}")).collect();
    let models = ["llama3:latest", "qwen3:8b", "mistral:7b"];
    let day = today();
    for k in &keys {
        for m in models {
            acc.record(&UsageRecord { key_id: k, model: m, status: 200, ..Default::default() }, &day);
        }
    }
    let mut i = 0usize;
    let mut g = c.benchmark_group("usage");
    g.bench_function("record_warm", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let r = UsageRecord {
                key_id: &keys[i % keys.len()],
                model: models[i % 3],
                status: 200,
                stream: true,
                prompt_tokens: 26,
                completion_tokens: 512,
                first_token_us: 80_000,
                total_us: 2_000_000,
                ..Default::default()
            };
            acc.record(black_box(&r), black_box(&day));
        })
    });
    g.bench_function("record_warm_with_today", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let r =
                UsageRecord { key_id: &keys[i % keys.len()], model: models[i % 3], status: 200, ..Default::default() };
            acc.record(black_box(&r), &today());
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
