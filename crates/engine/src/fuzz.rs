//! Fuzz body for the engine: arbitrary bytes become a sequence of commands (put, delete, CAS,
//! get, next, restart) run against the engine on the in-memory store and against a `BTreeMap`
//! model; every result must match and versions must keep increasing. The default test run calls
//! it on random input (a property test); `fuzz/` runs it under cargo-fuzz.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::store::{MemoryStore, Store};
use crate::{Command, Condition, Durability, Engine, EngineConfig, ManualClock, Outcome, Value};

fn value(byte: u8) -> Value {
    Value::Bytes(Bytes::from(vec![byte % 4]))
}

/// Runs the command sequence encoded in `data` (3 bytes a command). Panics on any divergence.
pub fn fuzz_commands(data: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(1_000));
        let config = EngineConfig {
            reaper_interval: Duration::from_secs(3600),
            cache_bytes: 2048,
            cache_shards: 2,
            ..EngineConfig::default()
        };
        let open = |store: Arc<dyn Store>| Engine::open(store, config.clone(), clock.clone());
        let mut engine = open(store.clone()).expect("open");
        let mut ks = engine.keyspace("f").expect("keyspace");
        let mut model: BTreeMap<u8, Value> = BTreeMap::new();
        let mut last_version = 0u64;
        for op in data.chunks_exact(3).take(200) {
            let (kind, key, byte) = (op[0] % 6, op[1] % 8, op[2]);
            let k = Bytes::from(vec![key]);
            let outcome = match kind {
                0 => {
                    let outcome = engine
                        .set(ks, k, value(byte), Durability::Async)
                        .await
                        .expect("put");
                    model.insert(key, value(byte));
                    Some(outcome)
                }
                1 => {
                    let outcome = engine
                        .delete(ks, k, Durability::Async)
                        .await
                        .expect("delete");
                    let existed = model.remove(&key).is_some();
                    assert_eq!(matches!(outcome, Outcome::Deleted { .. }), existed);
                    Some(outcome)
                }
                2 => {
                    let expected = value(byte / 4);
                    let command = Command::Put {
                        ks,
                        key: k,
                        value: value(byte),
                        expires_at: None,
                        owner: None,
                        label: None,
                        condition: Condition::ValueIs(expected.clone()),
                    };
                    let outcome = engine
                        .execute(command, Durability::Async)
                        .await
                        .expect("cas");
                    match model.get(&key) {
                        None => assert_eq!(outcome, Outcome::NotFound),
                        Some(current) if *current != expected => {
                            assert!(matches!(outcome, Outcome::Mismatch { .. }))
                        }
                        Some(_) => {
                            assert!(matches!(outcome, Outcome::Written { .. }));
                            model.insert(key, value(byte));
                        }
                    }
                    Some(outcome)
                }
                3 => {
                    let got = engine.get(ks, &[key]).expect("get").map(|r| r.entry.value);
                    assert_eq!(got.as_ref(), model.get(&key));
                    None
                }
                4 => {
                    let got = engine
                        .next_after(ks, &[key])
                        .expect("next")
                        .map(|(k, _)| k[0]);
                    assert_eq!(got, model.range(key + 1..).next().map(|(k, _)| *k));
                    None
                }
                _ => {
                    engine.close();
                    drop(engine);
                    engine = open(store.clone()).expect("reopen");
                    ks = engine.keyspace("f").expect("keyspace");
                    None
                }
            };
            if let Some(Outcome::Written { version } | Outcome::Deleted { version }) = outcome {
                assert!(version > last_version, "versions increase");
                last_version = version;
            }
        }
        engine.close();
    });
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
        #[test]
        fn command_sequences_match_the_model(data in proptest::collection::vec(any::<u8>(), 0..240)) {
            super::fuzz_commands(&data);
        }
    }
}
