//! The admission check of a key with every limit set (requests per minute,
//! tokens per minute with a reservation, requests in flight), on a worker
//! whose cache already holds the key's limiter.

use std::hint::black_box;
use std::sync::Arc;

use ai_gateway::policy::limits::{LimiterBook, Limiters, now_ns};
use ai_gateway::store::keys::{KeyRecord, Limits, Role};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let key = KeyRecord {
        id: "key_0123456789ab".into(),
        name: "bench".into(),
        prefix: "sk_abcd…wxyz".into(),
        role: Role::User,
        models: vec![],
        created: 0,
        expires: None,
        revoked_at: None,
        priority: Default::default(),
        grants: Default::default(),
        limits: Limits {
            rpm: Some(u64::MAX / 4),
            tpm: Some(u64::MAX / 4),
            max_concurrent: Some(1_000_000),
            daily_tokens: None,
            monthly_tokens: None,
        },
        version: 0,
    };
    let limiters = Limiters::new(Arc::new(LimiterBook::default()));
    let mut g = c.benchmark_group("limits");
    g.bench_function("admit_all_limits", |b| {
        b.iter(|| {
            let now = now_ns();
            let mut a = limiters.admit(black_box(&key), now).unwrap();
            Limiters::admit_tokens(&key, &mut a, 512, now).unwrap();
            black_box(&a);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
