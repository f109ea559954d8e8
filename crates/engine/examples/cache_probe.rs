//! Times cache lookups for keys shaped like the load generator's: `cache_probe N [LINES]`.
//!
//! With LINES, every lookup is preceded by reads of that many random cache lines of a 64 MiB
//! buffer, as a server's other work (the network stack, other connections' buffers) pushes the
//! cache's lines out of the CPU's caches between two requests; the time of those reads alone is
//! measured apart and taken off.
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
    let lines: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let noise = vec![1u64; (64 << 20) / 8];
    let mut position = 0x9e37_79b9_7f4a_7c15u64;
    let mut pollute = |sum: &mut u64| {
        for _ in 0..lines {
            position = position
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            *sum = sum.wrapping_add(noise[((position >> 20) % noise.len() as u64) as usize & !7]);
        }
    };
    let rounds = 2_000_000u64;
    let mut sum = 0u64;
    let started = Instant::now();
    for _ in 0..rounds {
        pollute(&mut sum);
    }
    let noise_ns = started.elapsed().as_nanos() as f64 / rounds as f64;
    let mut hits = 0;
    let started = Instant::now();
    for i in 0..rounds {
        pollute(&mut sum);
        let key = &keys[((i * 7919) % n) as usize];
        hits += u64::from(cache.get(0, key).is_some());
    }
    let ns = started.elapsed().as_nanos() as f64 / rounds as f64 - noise_ns;
    println!(
        "{n} keys, {lines} lines read between lookups: {ns:.1} ns per get, {hits} hits ({sum})"
    );
}
