//! Property test: random operation sequences, including restarts and expiry under a controlled
//! clock, against a simple model. Every result is compared.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use polykv_engine::store::{LogStore, LogStoreConfig, MemoryStore, Store};
use polykv_engine::{
    Command, Condition, Durability, Engine, EngineConfig, ManualClock, Outcome, Value,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: u8,
        value: u8,
        ttl: Option<u8>,
        memory: bool,
    },
    Delete {
        key: u8,
    },
    Cas {
        key: u8,
        expected: u8,
        new: u8,
    },
    Incr {
        key: u8,
        delta: i8,
    },
    PutInt {
        key: u8,
        value: i8,
    },
    Get {
        key: u8,
    },
    Next {
        after: Option<u8>,
    },
    Advance {
        ms: u8,
    },
    Reap,
    Restart,
    /// A crash: the log-first store stops where it is (no final checkpoint) and is reopened.
    Crash,
    /// A checkpoint of the log-first store, at this point.
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..8;
    prop_oneof![
        4 => (key.clone(), any::<u8>(), proptest::option::weighted(0.3, 1u8..50), proptest::bool::weighted(0.15))
            .prop_map(|(key, value, ttl, memory)| Op::Put { key, value, ttl, memory }),
        2 => key.clone().prop_map(|key| Op::Delete { key }),
        2 => (key.clone(), 0u8..4, any::<u8>()).prop_map(|(key, expected, new)| Op::Cas { key, expected, new }),
        1 => (key.clone(), any::<i8>()).prop_map(|(key, delta)| Op::Incr { key, delta }),
        1 => (key.clone(), any::<i8>()).prop_map(|(key, value)| Op::PutInt { key, value }),
        4 => key.clone().prop_map(|key| Op::Get { key }),
        2 => proptest::option::of(key).prop_map(|after| Op::Next { after }),
        1 => (1u8..40).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Reap),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
        1 => Just(Op::Checkpoint),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct ModelEntry {
    value: Value,
    expires_at: Option<u64>,
}

#[derive(Default)]
struct Model {
    durable: BTreeMap<u8, ModelEntry>,
    memory: BTreeMap<u8, ModelEntry>,
}

impl Model {
    fn live(map: &BTreeMap<u8, ModelEntry>, key: u8, now: u64) -> Option<&ModelEntry> {
        map.get(&key)
            .filter(|e| e.expires_at.is_none_or(|at| at > now))
    }
}

fn val(v: u8) -> Value {
    Value::Bytes(Bytes::from(vec![v % 4]))
}

/// The stack under test: the memory store alone, or the log-first store over it.
struct Stack {
    inner: Arc<dyn Store>,
    log: Option<(tempfile::TempDir, Arc<LogStore>)>,
}

impl Stack {
    fn new(with_log: bool) -> Stack {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut stack = Stack { inner, log: None };
        if with_log {
            let dir = tempfile::tempdir().unwrap();
            let log = stack.open_log(dir.path());
            stack.log = Some((dir, log));
        }
        stack
    }

    fn open_log(&self, dir: &std::path::Path) -> Arc<LogStore> {
        // Tiny checkpoints, so background ones land between the explicit ones too.
        let config = LogStoreConfig {
            checkpoint_bytes: 512,
            max_backlog_bytes: 1 << 20,
            segment_bytes: 4096,
            ..LogStoreConfig::default()
        };
        Arc::new(LogStore::open(self.inner.clone(), dir, config).unwrap())
    }

    fn store(&self) -> Arc<dyn Store> {
        match &self.log {
            Some((_, log)) => log.clone(),
            None => self.inner.clone(),
        }
    }

    /// After the engine is gone: a crash halts the log-first store first; either way it is
    /// opened again from what it left on disk.
    fn reopen(&mut self, crash: bool) {
        if let Some((dir, log)) = self.log.take() {
            if crash {
                log.halt();
            }
            drop(log);
            let log = self.open_log(dir.path());
            self.log = Some((dir, log));
        }
    }
}

fn run(ops: Vec<Op>, with_log: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut stack = Stack::new(with_log);
        let clock = Arc::new(ManualClock::new(10_000));
        let config = EngineConfig { reaper_interval: Duration::from_secs(3600), cache_bytes: 4096, cache_shards: 2, ..EngineConfig::default() };
        let mut engine = Engine::open(stack.store(), config.clone(), clock.clone()).unwrap();
        let mut ks = engine.keyspace("p").unwrap();
        let mut model = Model::default();
        let mut last_version = 0u64;
        let mut check_version = |outcome: &Outcome| {
            let v = match outcome {
                Outcome::Written { version } | Outcome::Deleted { version } | Outcome::Incremented { version, .. } => *version,
                _ => return,
            };
            if v != 0 {
                assert!(v > last_version, "version {v} after {last_version}");
                last_version = v;
            }
        };
        for op in ops {
            let now = clock.now_ms_for_test();
            match op {
                Op::Put { key, value, ttl, memory } => {
                    let expires_at = ttl.map(|t| now + t as u64);
                    let durability = if memory { Durability::Memory } else { Durability::Async };
                    let cmd = Command::Put { ks, key: Bytes::from(vec![key]), value: val(value), expires_at, owner: None, label: None, condition: Condition::Always };
                    let outcome = engine.execute(cmd, durability).await.unwrap();
                    check_version(&outcome);
                    let entry = ModelEntry { value: val(value), expires_at };
                    if memory {
                        model.memory.insert(key, entry);
                    } else {
                        model.memory.remove(&key);
                        model.durable.insert(key, entry);
                    }
                }
                Op::PutInt { key, value } => {
                    let outcome = engine.set(ks, vec![key], Value::I64(value as i64), Durability::Sync).await.unwrap();
                    check_version(&outcome);
                    model.memory.remove(&key);
                    model.durable.insert(key, ModelEntry { value: Value::I64(value as i64), expires_at: None });
                }
                Op::Delete { key } => {
                    let outcome = engine.delete(ks, vec![key], Durability::Async).await.unwrap();
                    check_version(&outcome);
                    model.memory.remove(&key);
                    let existed = Model::live(&model.durable, key, now).is_some();
                    model.durable.remove(&key);
                    assert_eq!(matches!(outcome, Outcome::Deleted { .. }), existed, "delete {key}");
                }
                Op::Cas { key, expected, new } => {
                    let cmd = Command::Put { ks, key: Bytes::from(vec![key]), value: val(new), expires_at: None, owner: None, label: None, condition: Condition::ValueIs(val(expected)) };
                    let outcome = engine.execute(cmd, Durability::Async).await.unwrap();
                    check_version(&outcome);
                    let current = Model::live(&model.durable, key, now).cloned();
                    match current {
                        None => assert_eq!(outcome, Outcome::NotFound),
                        Some(e) if e.value != val(expected) => assert!(matches!(outcome, Outcome::Mismatch { .. })),
                        Some(_) => {
                            assert!(matches!(outcome, Outcome::Written { .. }));
                            model.memory.remove(&key);
                            model.durable.insert(key, ModelEntry { value: val(new), expires_at: None });
                        }
                    }
                }
                Op::Incr { key, delta } => {
                    let outcome = engine.execute(Command::Incr { ks, key: Bytes::from(vec![key]), delta: delta as i64 }, Durability::Async).await.unwrap();
                    check_version(&outcome);
                    match Model::live(&model.durable, key, now).cloned() {
                        None => assert_eq!(outcome, Outcome::NotFound),
                        Some(ModelEntry { value: Value::I64(v), expires_at }) => {
                            let new = v.wrapping_add(delta as i64);
                            assert!(matches!(outcome, Outcome::Incremented { value, .. } if value == new));
                            model.memory.remove(&key);
                            model.durable.insert(key, ModelEntry { value: Value::I64(new), expires_at });
                        }
                        Some(_) => assert_eq!(outcome, Outcome::WrongType),
                    }
                }
                Op::Get { key } => {
                    let got = engine.get(ks, &[key]).unwrap().map(|r| r.entry.value);
                    // Memory-only data may have been evicted: then the store's value (if any)
                    // is what a read returns... only when nothing shadows it. With a memory entry
                    // present we accept either the memory value or a miss.
                    match Model::live(&model.memory, key, now) {
                        Some(m) => assert!(got.is_none() || got == Some(m.value.clone()), "get {key}: {got:?} vs memory {m:?}"),
                        None => assert_eq!(got, Model::live(&model.durable, key, now).map(|e| e.value.clone()), "get {key}"),
                    }
                }
                Op::Next { after } => {
                    let got = match after {
                        None => engine.first(ks).unwrap(),
                        Some(k) => engine.next_after(ks, &[k]).unwrap(),
                    }
                    .map(|(k, _)| k[0]);
                    let expected = model
                        .durable
                        .iter()
                        .filter(|(k, e)| after.is_none_or(|a| **k > a) && e.expires_at.is_none_or(|at| at > now))
                        .map(|(k, _)| *k)
                        .next();
                    assert_eq!(got, expected, "next after {after:?}");
                }
                Op::Advance { ms } => clock.advance(ms as u64),
                Op::Reap => {
                    engine.reap_expired().unwrap();
                    model.durable.retain(|_, e| e.expires_at.is_none_or(|at| at > now));
                }
                Op::Restart | Op::Crash => {
                    let crash = matches!(op, Op::Crash);
                    if !crash {
                        engine.close();
                    }
                    if crash {
                        // Halt the store before the engine's last sync can reach it.
                        if let Some((_, log)) = &stack.log {
                            log.halt();
                        }
                    }
                    drop(engine);
                    stack.reopen(crash);
                    engine = Engine::open(stack.store(), config.clone(), clock.clone()).unwrap();
                    ks = engine.keyspace("p").unwrap();
                    model.memory.clear();
                }
                Op::Checkpoint => {
                    if let Some((_, log)) = &stack.log {
                        log.checkpoint().unwrap();
                    }
                }
            }
        }
        engine.close();
    });
}

trait NowForTest {
    fn now_ms_for_test(&self) -> u64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> u64 {
        polykv_engine::Clock::now_ms(self)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]
    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, false);
    }

    /// The same over the log-first store, with checkpoints and crashes at random points.
    #[test]
    fn log_first_engine_matches_model_across_checkpoints_and_crashes(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, true);
    }
}
