//! Fault injection: a failed store write or sync reaches exactly the affected callers and poisons
//! the engine; group commit releases every waiter of one sync together.

use std::sync::Arc;
use std::time::Duration;

use polykv_engine::store::{FaultPlan, FaultyStore, MemoryStore};
use polykv_engine::{Durability, Engine, EngineConfig, Error, Outcome, SystemClock, Value};

fn setup() -> (Arc<FaultyStore<MemoryStore>>, Engine, u32) {
    let store = Arc::new(FaultyStore::new(
        Arc::new(MemoryStore::new()),
        FaultPlan::default(),
    ));
    let config = EngineConfig {
        sync_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    let engine = Engine::open(store.clone(), config, Arc::new(SystemClock)).unwrap();
    let ks = engine.keyspace("f").unwrap();
    (store, engine, ks)
}

#[tokio::test]
async fn failed_write_errors_that_caller_and_poisons() {
    let (store, engine, ks) = setup();
    engine
        .set(ks, "before", Value::I32(1), Durability::Async)
        .await
        .unwrap();
    let (writes, _) = store.counts();
    store.set_plan(FaultPlan {
        fail_write: writes + 1,
        ..FaultPlan::default()
    });
    let err = engine
        .set(ks, "k", Value::I32(2), Durability::Async)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err}");
    assert!(
        engine.get(ks, b"k").unwrap().is_none(),
        "a failed write is not visible"
    );
    let err = engine
        .set(ks, "later", Value::I32(3), Durability::Async)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "{err}");
    assert!(err.to_string().contains("restart"));
    assert!(engine.stats().poisoned.is_some());
    assert!(
        engine.get(ks, b"before").unwrap().is_some(),
        "reads still work"
    );
}

#[tokio::test]
async fn failed_sync_errors_exactly_the_waiters_it_covered() {
    let (store, engine, ks) = setup();
    engine
        .set(ks, "synced", Value::I32(1), Durability::Sync)
        .await
        .unwrap();
    let (_, syncs) = store.counts();
    store.set_plan(FaultPlan {
        fail_sync: syncs + 1,
        ..FaultPlan::default()
    });
    let waiters: Vec<_> = (0..8)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .set(
                        ks,
                        format!("k{i}").into_bytes(),
                        Value::I32(i),
                        Durability::Sync,
                    )
                    .await
            })
        })
        .collect();
    for waiter in waiters {
        let result = waiter.await.unwrap();
        assert!(matches!(result, Err(Error::Poisoned(_))), "{result:?}");
    }
    assert!(matches!(
        engine.set(ks, "x", Value::I32(0), Durability::Async).await,
        Err(Error::Poisoned(_))
    ));
    assert!(matches!(engine.sync().await, Err(Error::Poisoned(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_releases_a_batch_with_one_sync() {
    let (store, engine, ks) = setup();
    let (_, syncs) = store.counts();
    store.set_plan(FaultPlan {
        freeze_sync: syncs + 1,
        ..FaultPlan::default()
    });
    // The first Sync write triggers a sync, which freezes.
    let first = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .set(ks, "first", Value::I32(0), Durability::Sync)
                .await
        })
    };
    while !store.is_frozen() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // 50 more arrive while it is frozen; they must all ride on the next single sync.
    let waiters: Vec<_> = (0..50)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .set(
                        ks,
                        format!("k{i}").into_bytes(),
                        Value::I32(i),
                        Durability::Sync,
                    )
                    .await
            })
        })
        .collect();
    // Every one of them is applied (visible) before it is durable.
    while engine.stats().applied_writes < 52 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    store.thaw();
    assert!(matches!(first.await.unwrap(), Ok(Outcome::Written { .. })));
    for waiter in waiters {
        assert!(matches!(waiter.await.unwrap(), Ok(Outcome::Written { .. })));
    }
    let (_, after) = store.counts();
    assert_eq!(
        after - syncs,
        2,
        "one frozen sync and one for the whole batch"
    );
    assert_eq!(engine.stats().max_sync_batch, 50);
}
