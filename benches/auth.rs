//! The cost a key adds to every request: SHA-256 of the presented secret,
//! the check that no commit has landed since its record was cached (else an
//! LMDB lookup: a read transaction and a get), and the checks (revoked,
//! expiry, model allowlist), in a store holding 10,000 keys. Next to it, the
//! pieces alone: the hash, the last commit id, and the lookup of a raw record
//! (what every request paid before the commit check).

use std::hint::black_box;

use ai_gateway::policy::auth::KeyCache;
use ai_gateway::store::Store;
use ai_gateway::store::keys::{Limits, NewKey, Role};
use ai_gateway::store::secret::hash_secret;
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("ai-gateway-bench-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).unwrap();
    let mut secret = String::new();
    for i in 0..10_000 {
        let new = NewKey {
            name: format!("key-{i}"),
            role: Role::User,
            models: vec!["llama3".into(), "qwen3:8b".into()],
            expires: Some(4_102_444_800),
            limits: Limits { rpm: Some(600), tpm: Some(100_000), ..Limits::default() },
            priority: Default::default(),
            grants: Default::default(),
            secret: None,
        };
        secret = store.create_key(new).unwrap().1;
    }
    let cache = KeyCache::default();
    let now = ai_gateway::clock::unix_now();
    let mut g = c.benchmark_group("auth");
    g.bench_function("hash_lookup_and_checks", |b| {
        b.iter(|| {
            let key = cache.authenticate(store, black_box(&secret), now).unwrap();
            black_box(key.allows_model(black_box("llama3")))
        })
    });
    g.bench_function("sha256_only", |b| b.iter(|| black_box(hash_secret(black_box(&secret)))));
    g.bench_function("last_commit_only", |b| b.iter(|| black_box(store.last_commit())));
    let hash = hash_secret(&secret);
    g.bench_function("lmdb_read_txn_and_get_only", |b| {
        b.iter(|| {
            let rtxn = store.read().unwrap();
            black_box(store.keys.get(&rtxn, black_box(&hash)).unwrap().map(|v| v.len()))
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
