//! How long eviction of stored responses holds the store's only writer: a
//! store of small responses at its bound takes one large response, and
//! another thread meanwhile changes a key again and again (what `keys
//! revoke` does), timing each change. Prints the eviction's time and the
//! longest a key change waited.
//!
//! usage: responses_evict <data-dir> [records] [record-bytes] [large-bytes]
//! (defaults: 20,000 records of 2 KiB, then one of 3.2 MB, bound 40 MB)

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ai_gateway::store::Store;
use ai_gateway::store::keys::{KeyUpdate, NewKey, Role};
use ai_gateway::store::responses::StoredResponse;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1) else {
        eprintln!("usage: responses_evict <data-dir> [records] [record-bytes] [large-bytes]");
        std::process::exit(2);
    };
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (records, size, large) = (arg(2, 20_000), arg(3, 2048), arg(4, 3_200_000));
    let bound = (records * size) as u64;
    let store = Store::open(std::path::Path::new(dir)).unwrap_or_else(|e| panic!("{e}"));
    let new = NewKey {
        name: "changed".into(),
        role: Role::User,
        models: vec![],
        expires: None,
        limits: Default::default(),
        priority: Default::default(),
        grants: Default::default(),
        secret: None,
    };
    store.create_key(new).unwrap_or_else(|e| panic!("{e}"));
    let record = |i: usize, bytes: usize| StoredResponse {
        id: format!("resp_{i:08}"),
        key_id: format!("key_{:02}", i % 4),
        expires_at: 2_000_000_000 + i as u64,
        history: b"{\"role\":\"user\",\"content\":\"hi\"}".to_vec(),
        response: vec![b'x'; bytes],
        session: String::new(),
    };
    for i in 0..records {
        store.put_response(&record(i, size), u64::MAX).unwrap_or_else(|e| panic!("{e}"));
    }
    let stop = AtomicBool::new(false);
    let (evict, longest) = std::thread::scope(|s| {
        let changes = s.spawn(|| {
            let mut longest = Duration::ZERO;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let update = KeyUpdate { rpm: Some(Some(n % 100 + 1)), ..Default::default() };
                store.update_key("changed", &update).unwrap_or_else(|e| panic!("{e}"));
                longest = longest.max(started.elapsed());
                n += 1;
            }
            (longest, n)
        });
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        store.put_response(&record(records, large), bound).unwrap_or_else(|e| panic!("{e}"));
        let evict = started.elapsed();
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        (evict, changes.join().unwrap_or_default())
    });
    println!(
        "put of {large} bytes over a bound of {bound} bytes ({records} records of {size}): {:.1} ms; \
         key changes meanwhile: {}, the longest {:.2} ms",
        evict.as_secs_f64() * 1e3,
        longest.1,
        longest.0.as_secs_f64() * 1e3
    );
}
