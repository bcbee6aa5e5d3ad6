//! Fills a data directory with a key and a large usage history, for probes
//! of how reports over a big store behave (`perf/hostile`).
//!
//! usage: seed_usage <data-dir> <admin-secret> <days> <models>
//! Prints the user key's secret. The admin key gets `admin-secret`.

use ai_gateway::clock::day_of;
use ai_gateway::store::Store;
use ai_gateway::store::keys::{Limits, NewKey, Role};
use ai_gateway::store::usage::Rollup;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: seed_usage <data-dir> <admin-secret> <days> <models>");
        std::process::exit(2);
    }
    let (days, models): (i64, usize) = (args[3].parse().unwrap_or(400), args[4].parse().unwrap_or(600));
    let store = Store::open(std::path::Path::new(&args[1])).unwrap_or_else(|e| panic!("{e}"));
    let key = |name: &str, role, secret: Option<String>| NewKey {
        name: name.into(),
        role,
        models: vec![],
        expires: None,
        limits: Limits::default(),
        priority: Default::default(),
        grants: Default::default(),
        secret,
    };
    store.create_key(key("admin", Role::Admin, Some(args[2].clone()))).unwrap_or_else(|e| panic!("{e}"));
    let (user, secret) = store.create_key(key("heavy-user", Role::User, None)).unwrap_or_else(|e| panic!("{e}"));
    let now = ai_gateway::clock::unix_now();
    for d in 0..days {
        let day = day_of(now - d * 86_400);
        let mut pending = std::collections::HashMap::new();
        for m in 0..models {
            let r = Rollup { requests: 1, prompt_tokens: 10, ..Default::default() };
            pending.insert((user.id.clone(), format!("model-{m}"), day.clone()), r);
        }
        store.add_usage(&pending).unwrap_or_else(|e| panic!("{e}"));
    }
    println!("{secret}");
}
