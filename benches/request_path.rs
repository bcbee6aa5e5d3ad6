//! Everything the gateway does for a request besides I/O and JSON, together:
//! authenticate the key (SHA-256, LMDB read, checks), admit it (daily and
//! monthly quota, requests per minute, tokens per minute, concurrency), then
//! account for it (usage record, quota book, token settlement) — the steps
//! `api::handle` runs around an endpoint, in the same order, on a store of
//! 10,000 keys with every limit set. Beside it, each step alone, so the sum
//! of the parts can be read against the whole.

mod common;

use std::hint::black_box;
use std::sync::Arc;

use ai_gateway::accounting::usage::{UsageAccumulator, UsageRecord};
use ai_gateway::clock::today;
use ai_gateway::policy::auth::KeyCache;
use ai_gateway::policy::limits::{LimiterBook, Limiters, now_ns};
use ai_gateway::policy::quota::QuotaBook;
use ai_gateway::store::Store;
use ai_gateway::store::keys::{NewKey, Role};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("ai-gateway-bench-path-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).unwrap();
    let limits = common::every_limit_set();
    let mut secret = String::new();
    for i in 0..10_000 {
        let new = NewKey {
            name: format!("key-{i}"),
            role: Role::User,
            models: vec!["llama3".into(), "qwen3:8b".into()],
            expires: Some(4_102_444_800),
            limits,
            priority: Default::default(),
            grants: Default::default(),
            secret: None,
        };
        secret = store.create_key(new).unwrap().1;
    }
    let cache = KeyCache::default();
    let quota = QuotaBook::default();
    let limiters = Limiters::new(Arc::new(LimiterBook::default()));
    let usage = UsageAccumulator::default();
    let day = today();
    let now_s = ai_gateway::clock::unix_now();

    let mut g = c.benchmark_group("request_path");
    g.bench_function("auth_admission_usage", |b| {
        b.iter(|| {
            let key = cache.authenticate(store, black_box(&secret), now_s).unwrap();
            assert!(key.allows_model("llama3"));
            quota.admit(store, &key, &day).unwrap();
            let now = now_ns();
            let mut a = limiters.admit(&key, now).unwrap();
            Limiters::admit_tokens(&key, &mut a, 512, now).unwrap();
            let record = UsageRecord {
                key_id: &key.id,
                model: "llama3",
                status: 200,
                prompt_tokens: 26,
                completion_tokens: 120,
                ..Default::default()
            };
            usage.record(&record, &day);
            quota.settle(
                store,
                &key.id,
                &day,
                0,
                ai_gateway::upstream::native::Usage { prompt_tokens: 46, completion_tokens: 100, ..Default::default() },
            );
            Limiters::settle_tokens(&key, &a, 146, now);
            black_box(a);
        })
    });
    g.bench_function("auth_only", |b| b.iter(|| black_box(cache.authenticate(store, black_box(&secret), now_s))));
    let key = cache.authenticate(store, &secret, now_s).unwrap();
    g.bench_function("admission_only", |b| {
        b.iter(|| {
            quota.admit(store, &key, &day).unwrap();
            let now = now_ns();
            let mut a = limiters.admit(black_box(&key), now).unwrap();
            Limiters::admit_tokens(&key, &mut a, 512, now).unwrap();
            black_box(a)
        })
    });
    g.bench_function("usage_only", |b| {
        b.iter(|| {
            let record = UsageRecord { key_id: &key.id, model: "llama3", status: 200, ..Default::default() };
            usage.record(black_box(&record), &day);
            quota.settle(
                store,
                &key.id,
                &day,
                0,
                ai_gateway::upstream::native::Usage { prompt_tokens: 46, completion_tokens: 100, ..Default::default() },
            );
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
