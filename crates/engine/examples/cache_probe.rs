//! Times cache lookups for keys shaped like the load generator's: `cache_probe N`.
use std::time::Instant;

use bytes::Bytes;
use polykv_engine::cache::{Cache, CachedItem};
use polykv_engine::{Entry, Value};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let cache = Cache::new(256 << 20, 64);
    let keys: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("{i:016}"))).collect();
    for key in &keys {
        let entry = Entry {
            value: Value::Bytes(Bytes::from(vec![b'v'; 100])),
            version: 1,
            expires_at: None,
            owner: None,
            label: None,
        };
        cache.insert(
            0,
            key,
            CachedItem {
                entry,
                durable: true,
            },
        );
    }
    let started = Instant::now();
    let rounds = 2_000_000u64;
    let mut hits = 0;
    for i in 0..rounds {
        let key = &keys[((i * 7919) % n) as usize];
        hits += u64::from(cache.get(0, key).is_some());
    }
    let ns = started.elapsed().as_nanos() as f64 / rounds as f64;
    println!("{n} keys: {ns:.1} ns per get, {hits} hits");
}
