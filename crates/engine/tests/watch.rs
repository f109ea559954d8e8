//! Watch guarantees under concurrent writers: version order, no gaps, no duplicates, and
//! coalescing to the final state for a slow subscriber.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use polykv_engine::store::MemoryStore;
use polykv_engine::{Change, Durability, Engine, EngineConfig, Outcome, SystemClock, Value};

fn engine() -> Engine {
    Engine::open(
        Arc::new(MemoryStore::new()),
        EngineConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_ordered_without_gaps_or_duplicates() {
    let engine = engine();
    let ks = engine.keyspace("w").unwrap();
    let (sub, _) = engine
        .watch_prefix(ks, Bytes::new(), Some(1_000_000), 0)
        .unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..500 {
                    let key = format!("{w}/{}", i % 7).into_bytes();
                    let outcome = if i % 5 == 4 {
                        engine.delete(ks, key, Durability::Async).await.unwrap()
                    } else {
                        engine
                            .set(ks, key, Value::I64(i), Durability::Async)
                            .await
                            .unwrap()
                    };
                    match outcome {
                        Outcome::Written { version } | Outcome::Deleted { version } => {
                            versions.push(version)
                        }
                        _ => {}
                    }
                }
                versions
            })
        })
        .collect();
    let mut committed = BTreeSet::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    let mut seen = Vec::new();
    while let Some(event) = sub.try_recv() {
        seen.push(event.version);
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing, so no duplicates"
    );
    assert_eq!(
        seen.into_iter().collect::<BTreeSet<_>>(),
        committed,
        "no gaps"
    );
    assert_eq!(sub.coalesced(), 0);
}

#[tokio::test]
async fn slow_subscriber_gets_final_state_and_writers_never_wait() {
    let engine = engine();
    let ks = engine.keyspace("w").unwrap();
    let (sub, _) = engine.watch_prefix(ks, Bytes::new(), Some(16), 0).unwrap();
    let mut last = HashMap::new();
    for i in 0..100_000i64 {
        let key = Bytes::from(format!("key{}", i % 1000));
        engine
            .set(ks, key.clone(), Value::I64(i), Durability::Memory)
            .await
            .unwrap();
        engine
            .set(ks, key.clone(), Value::I64(i), Durability::Async)
            .await
            .unwrap();
        last.insert(key, i);
    }
    assert!(
        sub.pending() <= 16 + 1000,
        "bounded by queue + distinct keys: {}",
        sub.pending()
    );
    let mut state = HashMap::new();
    let mut previous = 0;
    while let Some(event) = sub.try_recv() {
        assert!(event.version > previous);
        previous = event.version;
        if let Change::Set(entry) = event.change {
            let Value::I64(v) = entry.value else { panic!() };
            state.insert(event.key, v);
        }
    }
    assert_eq!(state, last, "the final value of every key arrives");
    assert!(sub.coalesced() > 90_000);
}
