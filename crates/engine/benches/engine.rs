//! Hot paths of the engine: cache-hit get, Memory/Async set, and the group-commit curve of Sync
//! set with 1, 16 and 64 concurrent writers. Results: docs/performance.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use polykv_engine::{Durability, Engine, EngineConfig, Value};

fn keys(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("key:{i:012}")))
        .collect()
}

fn bench_get_and_set(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_dir(dir.path(), EngineConfig::default()).unwrap();
    let ks = engine.keyspace("bench").unwrap();
    let keys = keys(10_000);
    let value = Value::Bytes(Bytes::from(vec![b'x'; 100]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for key in &keys {
        rt.block_on(engine.set(ks, key.clone(), value.clone(), Durability::Async))
            .unwrap();
    }
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("get_cache_hit", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            engine.get(ks, &keys[i]).unwrap()
        })
    });
    for (name, durability) in [
        ("set_memory", Durability::Memory),
        ("set_async", Durability::Async),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                let pending = engine
                    .submit(
                        polykv_engine::Command::put(ks, keys[i].clone(), value.clone()),
                        durability,
                    )
                    .unwrap();
                assert!(!pending.needs_sync());
            })
        });
    }
    group.finish();
    engine.close();
}

/// Sync writes from `writers` concurrent tasks; returns the time for `per_writer` writes each.
fn sync_writers(engine: &Engine, ks: u32, writers: usize, per_writer: u64) -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let value = Value::Bytes(Bytes::from(vec![b'x'; 100]));
    rt.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let engine = engine.clone();
                let value = value.clone();
                tokio::spawn(async move {
                    for i in 0..per_writer {
                        let key = Bytes::from(format!("w{w}:{}", i % 1000));
                        engine
                            .set(ks, key, value.clone(), Durability::Sync)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        started.elapsed()
    })
}

fn bench_sync(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open_dir(dir.path(), EngineConfig::default()).unwrap());
    let ks = engine.keyspace("bench").unwrap();
    let mut group = c.benchmark_group("engine_sync_set");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for writers in [1usize, 16, 64] {
        group.throughput(Throughput::Elements(writers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(writers),
            &writers,
            |b, &writers| b.iter_custom(|iters| sync_writers(&engine, ks, writers, iters)),
        );
    }
    group.finish();
    engine.close();
}

criterion_group!(benches, bench_get_and_set, bench_sync);
criterion_main!(benches);
