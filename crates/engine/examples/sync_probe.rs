//! Prints the group-commit figures for N concurrent Sync writers: `sync_probe N SECONDS`.
use std::time::{Duration, Instant};

use bytes::Bytes;
use polykv_engine::{Durability, Engine, EngineConfig, Value};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open_dir(dir.path(), EngineConfig::default()).expect("open");
    let ks = engine.keyspace("probe").expect("keyspace");
    let value = Value::Bytes(Bytes::from(vec![b'x'; 100]));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let engine = engine.clone();
            let value = value.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let key = Bytes::from(format!("w{w}:{}", n % 1000));
                    engine
                        .set(ks, key, value.clone(), Durability::Sync)
                        .await
                        .expect("write");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let s = engine.stats();
    println!(
        "writers={writers} durable_writes_per_s={:.0} syncs={} avg_batch={:.1} max_batch={} avg_sync_ms={:.3}",
        total as f64 / elapsed,
        s.syncs,
        s.synced_writes as f64 / s.syncs.max(1) as f64,
        s.max_sync_batch,
        s.sync_seconds_total * 1000.0 / s.syncs.max(1) as f64
    );
    engine.close();
}
