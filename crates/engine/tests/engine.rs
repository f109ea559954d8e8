//! Behaviour of the engine on the real fjall store: operations, restarts, expiry, locks, watch.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use polykv_engine::store::{FjallStore, Store};
use polykv_engine::{
    Change, Command, Condition, Durability, Engine, EngineConfig, LockOutcome, ManualClock,
    Outcome, Source, Value,
};

fn open(dir: &std::path::Path) -> Engine {
    Engine::open_dir(dir, EngineConfig::default()).unwrap()
}

/// An engine whose log is written through a mapped segment or with `write(2)`, whatever the
/// default.
fn open_with_mapped_log(dir: &std::path::Path, mapped_log: bool) -> Engine {
    let config = EngineConfig {
        log: polykv_engine::store::LogStoreConfig {
            mapped_log,
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    Engine::open_dir(dir, config).unwrap()
}

fn bytes(v: &str) -> Value {
    Value::Bytes(Bytes::copy_from_slice(v.as_bytes()))
}

#[tokio::test]
async fn set_get_delete_and_sources() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let ks = engine.keyspace("nmdb").unwrap();
    assert_eq!(engine.keyspace("nmdb").unwrap(), ks);
    assert!(engine.get(ks, b"k").unwrap().is_none());
    let Outcome::Written { version: v1 } = engine
        .set(ks, "k", bytes("v"), Durability::Sync)
        .await
        .unwrap()
    else {
        panic!("set failed")
    };
    let read = engine.get(ks, b"k").unwrap().unwrap();
    assert_eq!(read.entry.value, bytes("v"));
    assert_eq!(read.entry.version, v1);
    assert_eq!(read.source, Source::Cache);
    let Outcome::Written { version: v2 } = engine
        .set(ks, "k", bytes("w"), Durability::Async)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(v2 > v1);
    assert!(
        matches!(engine.delete(ks, "k", Durability::Sync).await.unwrap(), Outcome::Deleted { version } if version > v2)
    );
    assert_eq!(
        engine.delete(ks, "k", Durability::Sync).await.unwrap(),
        Outcome::NotFound
    );
    assert!(engine.get(ks, b"k").unwrap().is_none());
    engine.close();
}

#[tokio::test]
async fn reads_after_restart_come_from_the_store_then_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let last_version;
    {
        let engine = open(dir.path());
        let ks = engine.keyspace("a").unwrap();
        for i in 0..100u32 {
            engine
                .set(
                    ks,
                    i.to_be_bytes().to_vec(),
                    Value::I64(i as i64),
                    Durability::Async,
                )
                .await
                .unwrap();
        }
        let Outcome::Written { version } = engine
            .set(ks, "last", Value::I32(1), Durability::Sync)
            .await
            .unwrap()
        else {
            panic!()
        };
        last_version = version;
        engine.close();
    }
    let engine = open(dir.path());
    let ks = engine.keyspace("a").unwrap();
    let read = engine.get(ks, &7u32.to_be_bytes()).unwrap().unwrap();
    assert_eq!(
        (read.entry.value, read.source),
        (Value::I64(7), Source::Store)
    );
    let read = engine.get(ks, &7u32.to_be_bytes()).unwrap().unwrap();
    assert_eq!(read.source, Source::Cache, "a store read fills the cache");
    let Outcome::Written { version } = engine
        .set(ks, "after", Value::I32(2), Durability::Sync)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(
        version > last_version,
        "versions keep increasing across restarts"
    );
    assert_eq!(engine.stats().keyspaces[0].name, "a");
    engine.close();
}

#[tokio::test]
async fn compare_and_swap_by_value_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let ks = engine.keyspace("c").unwrap();
    let cas = |expected: Condition, new: &str| Command::Put {
        ks,
        key: Bytes::from("k"),
        value: bytes(new),
        expires_at: None,
        owner: None,
        label: None,
        condition: expected,
    };
    assert_eq!(
        engine
            .execute(cas(Condition::ValueIs(bytes("a")), "b"), Durability::Async)
            .await
            .unwrap(),
        Outcome::NotFound
    );
    let Outcome::Written { version } = engine
        .execute(cas(Condition::Absent, "a"), Durability::Async)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(matches!(
        engine
            .execute(cas(Condition::Absent, "x"), Durability::Async)
            .await
            .unwrap(),
        Outcome::Mismatch { .. }
    ));
    assert!(matches!(
        engine
            .execute(cas(Condition::ValueIs(bytes("z")), "b"), Durability::Async)
            .await
            .unwrap(),
        Outcome::Mismatch { .. }
    ));
    assert!(matches!(
        engine
            .execute(cas(Condition::ValueIs(bytes("a")), "b"), Durability::Async)
            .await
            .unwrap(),
        Outcome::Written { .. }
    ));
    assert!(matches!(
        engine
            .execute(cas(Condition::VersionIs(version), "c"), Durability::Async)
            .await
            .unwrap(),
        Outcome::Mismatch { .. }
    ));
    let current = engine.get(ks, b"k").unwrap().unwrap().entry;
    assert!(matches!(
        engine
            .execute(
                cas(Condition::VersionIs(current.version), "c"),
                Durability::Async
            )
            .await
            .unwrap(),
        Outcome::Written { .. }
    ));
    assert_eq!(
        engine.get(ks, b"k").unwrap().unwrap().entry.value,
        bytes("c")
    );
}

#[tokio::test]
async fn incr_and_update() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let ks = engine.keyspace("i").unwrap();
    assert_eq!(
        engine
            .execute(
                Command::Incr {
                    ks,
                    key: "n".into(),
                    delta: 1
                },
                Durability::Async
            )
            .await
            .unwrap(),
        Outcome::NotFound
    );
    engine
        .set(ks, "n", Value::I64(i64::MAX), Durability::Async)
        .await
        .unwrap();
    assert!(matches!(
        engine
            .execute(
                Command::Incr {
                    ks,
                    key: "n".into(),
                    delta: 1
                },
                Durability::Async
            )
            .await
            .unwrap(),
        Outcome::Incremented {
            value: i64::MIN,
            ..
        }
    ));
    engine
        .set(ks, "s", bytes("x"), Durability::Async)
        .await
        .unwrap();
    assert_eq!(
        engine
            .execute(
                Command::Incr {
                    ks,
                    key: "s".into(),
                    delta: 1
                },
                Durability::Async
            )
            .await
            .unwrap(),
        Outcome::WrongType
    );
    let (before, pending) = engine
        .submit_update(ks, "s".into(), Durability::Sync, |e| {
            let mut v = e.unwrap().value.to_bytes().to_vec();
            v.push(b'!');
            Some(Value::Bytes(v.into()))
        })
        .unwrap();
    assert_eq!(before.unwrap().value, bytes("x"));
    assert!(matches!(
        pending.unwrap().durable().await.unwrap(),
        Outcome::Written { .. }
    ));
    assert_eq!(
        engine.get(ks, b"s").unwrap().unwrap().entry.value,
        bytes("x!")
    );
}

#[tokio::test]
async fn memory_durability_stays_in_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let ks = engine.keyspace("m").unwrap();
    engine
        .set(ks, "k", bytes("mem"), Durability::Memory)
        .await
        .unwrap();
    assert_eq!(engine.get_cached(ks, b"k").unwrap().value, bytes("mem"));
    assert_eq!(engine.get(ks, b"k").unwrap().unwrap().source, Source::Cache);
    assert!(
        engine.first(ks).unwrap().is_none(),
        "iteration comes from the store only"
    );
    // A normal write through another path replaces it; a normal CAS ignores memory-only data.
    let cas = Command::Put {
        ks,
        key: "k".into(),
        value: bytes("x"),
        expires_at: None,
        owner: None,
        label: None,
        condition: Condition::ValueIs(bytes("mem")),
    };
    assert_eq!(
        engine.execute(cas, Durability::Async).await.unwrap(),
        Outcome::NotFound
    );
    engine.close();
    drop(engine);
    let engine = open(dir.path());
    let ks = engine.keyspace("m").unwrap();
    assert!(
        engine.get(ks, b"k").unwrap().is_none(),
        "memory data does not survive a restart"
    );
    let big = Value::Bytes(vec![0u8; 1 << 20].into());
    let small_cache = Engine::open(
        Arc::new(polykv_engine::store::MemoryStore::new()),
        EngineConfig {
            cache_bytes: 64 << 10,
            ..EngineConfig::default()
        },
        Arc::new(polykv_engine::SystemClock),
    )
    .unwrap();
    let ks2 = small_cache.keyspace("m").unwrap();
    assert_eq!(
        small_cache
            .set(ks2, "big", big.clone(), Durability::Memory)
            .await
            .unwrap(),
        Outcome::TooLarge
    );
    assert!(matches!(
        small_cache
            .set(ks2, "big", big, Durability::Async)
            .await
            .unwrap(),
        Outcome::Written { .. }
    ));
    assert_eq!(
        small_cache.get(ks2, b"big").unwrap().unwrap().source,
        Source::Store
    );
}

#[tokio::test]
async fn ordered_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let ks = engine.keyspace("it").unwrap();
    for key in ["b", "a", "c/2", "c/1", "d", "\u{ff}"] {
        engine
            .set(ks, key.as_bytes().to_vec(), bytes(key), Durability::Async)
            .await
            .unwrap();
    }
    let first = engine.first(ks).unwrap().unwrap();
    assert_eq!(first.0, Bytes::from("a"));
    assert_eq!(
        engine.next_after(ks, b"a").unwrap().unwrap().0,
        Bytes::from("b")
    );
    assert_eq!(
        engine.next_after(ks, b"bb").unwrap().unwrap().0,
        Bytes::from("c/1"),
        "absent key"
    );
    assert!(engine
        .next_after(ks, "\u{ff}".as_bytes())
        .unwrap()
        .is_none());
    let prefixed: Vec<_> = engine
        .prefix(ks, b"c/", None, 10)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(prefixed, vec![Bytes::from("c/1"), Bytes::from("c/2")]);
    let after: Vec<_> = engine
        .prefix(ks, b"c/", Some(b"c/1"), 10)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(after, vec![Bytes::from("c/2")]);
    let range = engine
        .scan(ks, Bound::Included(b"b"), Bound::Excluded(b"d"), 10)
        .unwrap();
    assert_eq!(range.len(), 3);
    let mut walked = 0;
    let mut cursor = engine.first(ks).unwrap();
    while let Some((key, _)) = cursor {
        walked += 1;
        cursor = engine.next_after(ks, &key).unwrap();
    }
    assert_eq!(walked, 6);
}

#[tokio::test]
async fn expiry_is_invisible_at_once_and_reaped_and_survives_restart() {
    let store: Arc<dyn Store> = Arc::new(polykv_engine::store::MemoryStore::new());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let config = EngineConfig {
        reaper_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    let engine = Engine::open(store.clone(), config.clone(), clock.clone()).unwrap();
    let ks = engine.keyspace("ttl").unwrap();
    let put = |key: &str, at: Option<u64>| Command::Put {
        ks,
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: bytes("v"),
        expires_at: at,
        owner: None,
        label: None,
        condition: Condition::Always,
    };
    engine
        .execute(put("short", Some(1_000_500)), Durability::Async)
        .await
        .unwrap();
    engine
        .execute(put("long", Some(2_000_000)), Durability::Async)
        .await
        .unwrap();
    engine
        .execute(put("renewed", Some(1_000_500)), Durability::Async)
        .await
        .unwrap();
    engine
        .execute(put("renewed", None), Durability::Async)
        .await
        .unwrap();
    clock.advance(500);
    assert!(
        engine.get(ks, b"short").unwrap().is_none(),
        "expired: invisible at once"
    );
    assert!(engine
        .first(ks)
        .unwrap()
        .is_some_and(|(k, _)| k.as_ref() == b"long"));
    assert_eq!(engine.reap_expired().unwrap(), 1);
    assert!(
        engine.get(ks, b"renewed").unwrap().is_some(),
        "a later put without TTL clears it"
    );
    engine.close();
    drop(engine);
    let engine = Engine::open(store, config, clock.clone()).unwrap();
    let ks = engine.keyspace("ttl").unwrap();
    assert!(engine.get(ks, b"long").unwrap().is_some());
    clock.advance(1_000_000);
    assert!(
        engine.get(ks, b"long").unwrap().is_none(),
        "expiry survives restart"
    );
    assert_eq!(engine.reap_expired().unwrap(), 1);
    assert_eq!(engine.stats().keyspaces[0].expired, 1);
}

#[tokio::test]
async fn locks_through_apply() {
    let clock = Arc::new(ManualClock::new(0));
    let engine = Engine::open(
        Arc::new(polykv_engine::store::MemoryStore::new()),
        EngineConfig::default(),
        clock.clone(),
    )
    .unwrap();
    let lock = |holder, deadline| Command::Lock {
        name: "L".into(),
        holder,
        deadline,
    };
    assert_eq!(
        engine
            .execute(lock(1, Some(100)), Durability::Memory)
            .await
            .unwrap(),
        Outcome::Lock(LockOutcome::Acquired)
    );
    assert_eq!(
        engine
            .execute(lock(2, None), Durability::Memory)
            .await
            .unwrap(),
        Outcome::Lock(LockOutcome::Busy { holder: 1 })
    );
    assert_eq!(engine.locks_held_by(1), 1);
    clock.advance(100);
    assert_eq!(
        engine
            .execute(lock(2, None), Durability::Memory)
            .await
            .unwrap(),
        Outcome::Lock(LockOutcome::Acquired)
    );
    assert_eq!(
        engine
            .execute(Command::ReleaseHolder { holder: 2 }, Durability::Memory)
            .await
            .unwrap(),
        Outcome::LocksReleased(1)
    );
    assert_eq!(
        engine
            .execute(
                Command::Unlock {
                    name: "L".into(),
                    holder: 2
                },
                Durability::Memory
            )
            .await
            .unwrap(),
        Outcome::Unlocked { released: false }
    );
}

#[tokio::test]
async fn watch_key_and_prefix_from_a_consistent_point() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let ks = engine.keyspace("w").unwrap();
    engine
        .set(ks, "cfg/a", bytes("1"), Durability::Sync)
        .await
        .unwrap();
    let (key_sub, current) = engine.watch_key(ks, "cfg/a".into(), None).unwrap();
    assert_eq!(current.unwrap().value, bytes("1"));
    let (prefix_sub, snapshot) = engine.watch_prefix(ks, "cfg/".into(), None, 100).unwrap();
    assert_eq!(snapshot.len(), 1);
    engine
        .set(ks, "cfg/a", bytes("2"), Durability::Sync)
        .await
        .unwrap();
    engine
        .set(ks, "cfg/b", bytes("3"), Durability::Memory)
        .await
        .unwrap();
    engine
        .set(ks, "other", bytes("4"), Durability::Async)
        .await
        .unwrap();
    engine.delete(ks, "cfg/a", Durability::Async).await.unwrap();
    let e = key_sub.recv().await.unwrap();
    assert!(matches!(e.change, Change::Set(ref entry) if entry.value == bytes("2")));
    assert_eq!(key_sub.recv().await.unwrap().change, Change::Deleted);
    assert!(key_sub.try_recv().is_none());
    let events: Vec<_> = std::iter::from_fn(|| prefix_sub.try_recv()).collect();
    assert_eq!(
        events.len(),
        2,
        "memory writes and other keys are not published: {events:?}"
    );
    assert!(events[0].version < events[1].version);
}

#[test]
fn data_dir_is_locked_by_fjall_or_reopened_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = FjallStore::open(dir.path()).unwrap();
    drop(store);
    assert!(FjallStore::open(dir.path()).is_ok());
}

#[tokio::test]
async fn empty_and_overlong_keys() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let ks = engine.keyspace("k").unwrap();
    engine
        .set(ks, Bytes::new(), bytes("empty key"), Durability::Sync)
        .await
        .unwrap();
    assert_eq!(engine.first(ks).unwrap().unwrap().0, Bytes::new());
    let longest = Bytes::from(vec![7u8; polykv_engine::MAX_KEY_LEN]);
    engine
        .set(ks, longest.clone(), bytes("v"), Durability::Sync)
        .await
        .unwrap();
    let too_long = Bytes::from(vec![7u8; polykv_engine::MAX_KEY_LEN + 1]);
    let err = engine
        .set(ks, too_long.clone(), bytes("v"), Durability::Sync)
        .await
        .unwrap_err();
    assert!(matches!(err, polykv_engine::Error::Invalid(_)), "{err}");
    assert!(engine.get(ks, &too_long).is_err());
    // A refused key does not poison the store.
    engine
        .set(ks, "after", bytes("v"), Durability::Sync)
        .await
        .unwrap();
    assert!(engine.stats().poisoned.is_none());
}

/// A dataset four times the cache budget, written through the log and checkpointed into fjall
/// while it is written, reads back whole: by key, in key order, and again after a restart.
#[tokio::test]
async fn a_dataset_four_times_the_cache_reads_back_through_checkpoints_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        cache_bytes: 256 << 10,
        log: polykv_engine::store::LogStoreConfig {
            checkpoint_bytes: 64 << 10,
            max_backlog_bytes: 256 << 10,
            segment_bytes: 64 << 10,
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    let count = 4 * (256 << 10) / 100;
    let value = |i: usize| Value::Bytes(format!("{i:0100}").into());
    let key = |i: usize| format!("key{i:08}").into_bytes();
    let engine = Engine::open_dir(dir.path(), config.clone()).unwrap();
    let ks = engine.keyspace("big").unwrap();
    for i in 0..count {
        engine
            .set(ks, key(i), value(i), Durability::Async)
            .await
            .unwrap();
    }
    let check = |engine: &Engine| {
        for i in 0..count {
            let read = engine
                .get(ks, &key(i))
                .unwrap()
                .expect("every key reads back");
            assert_eq!(read.entry.value, value(i));
        }
        let all = engine
            .scan(
                ks,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                usize::MAX,
            )
            .unwrap();
        assert_eq!(all.len(), count);
        assert!(
            all.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "key order"
        );
    };
    check(&engine);
    let stats = engine.stats();
    assert!(
        stats.cache.evictions > 0,
        "the cache was too small to hold it all"
    );
    assert!(stats.log.expect("log stats").checkpoints > 0);
    engine.close();
    drop(engine);
    let engine = Engine::open_dir(dir.path(), config).unwrap();
    check(&engine);
}

/// A hot upgrade's old process releases the store while its parked sessions still hold engine
/// handles: the directory opens at once elsewhere (fjall's lock is a file lock, so a second
/// open in this process stands for the new process), with everything written; the remaining
/// handles get errors, not panics.
#[tokio::test]
async fn a_released_store_opens_again_while_handles_remain() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let ks = engine.keyspace("up").unwrap();
    engine
        .set(ks, "before", bytes("checkpointed"), Durability::Sync)
        .await
        .unwrap();
    engine.checkpoint().unwrap();
    engine
        .set(ks, "after", bytes("in the log"), Durability::Sync)
        .await
        .unwrap();
    let held = engine.clone();
    assert!(
        Engine::open_dir(dir.path(), EngineConfig::default()).is_err(),
        "held: the directory is locked"
    );

    assert!(engine.release());
    drop(engine);
    let reopened = Engine::open_dir(dir.path(), EngineConfig::default())
        .expect("released: opens while a handle remains");
    let ks = reopened.keyspace("up").unwrap();
    for (key, value) in [("before", "checkpointed"), ("after", "in the log")] {
        let read = reopened.get(ks, key.as_bytes()).unwrap().expect(key);
        assert_eq!(read.entry.value, bytes(value));
    }
    assert!(held.get(ks, b"never written").is_err());
    drop(held);
    reopened.close();
}

/// Async writes that are ready together are flushed together: each writer steps behind the
/// others that are ready, and one `write(2)` of the log covers the group.
#[tokio::test]
async fn async_writes_ready_together_share_one_log_write() {
    // Where the log is written with write(2) (its segment not mapped), ready writers gather
    // into one flush.
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_mapped_log(dir.path(), false);
    let ks = engine.keyspace("group").unwrap();
    engine
        .set(ks, "first", bytes("x"), Durability::Async)
        .await
        .unwrap();
    let log_writes = |engine: &Engine| engine.stats().log.unwrap().log_writes;
    let before = log_writes(&engine);
    let writers: Vec<_> = (0..50)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .set(
                        ks,
                        format!("k{i}").into_bytes(),
                        bytes("v"),
                        Durability::Async,
                    )
                    .await
            })
        })
        .collect();
    for writer in writers {
        assert!(matches!(writer.await.unwrap(), Ok(Outcome::Written { .. })));
    }
    let writes = log_writes(&engine) - before;
    assert!(
        (1..=2).contains(&writes),
        "50 writes ready together took {writes} log writes"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn async_writes_into_the_mapped_log_need_no_log_write_and_no_wait() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_mapped_log(dir.path(), true);
    let ks = engine.keyspace("mapped").unwrap();
    let stats = |engine: &Engine| engine.stats().log.unwrap();
    let before = stats(&engine);
    for i in 0..50 {
        let pending = engine
            .submit(
                polykv_engine::Command::Put {
                    ks,
                    key: format!("k{i}").into(),
                    value: bytes("v"),
                    expires_at: None,
                    owner: None,
                    label: None,
                    condition: polykv_engine::Condition::Always,
                },
                Durability::Async,
            )
            .unwrap();
        // Answered at once, with the flush it owes: a copy, not a write(2).
        let (outcome, due) = match pending.flush_due() {
            Ok(ready) => ready,
            Err(_) => panic!("an Async write into the mapped log waited"),
        };
        assert!(matches!(outcome, Outcome::Written { .. }));
        due.expect("a write owes its flush").flush().unwrap();
    }
    let after = stats(&engine);
    assert_eq!(
        after.log_writes, before.log_writes,
        "no write(2) for the records"
    );
    assert!(after.log_copies >= before.log_copies + 50);
    // Everything flushed is in the log's files: a second engine on a copy of them reads it.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    drop(engine);
    let reopened = open(copy.path());
    let ks = reopened.keyspace("mapped").unwrap();
    for i in 0..50 {
        assert!(reopened
            .get(ks, format!("k{i}").as_bytes())
            .unwrap()
            .is_some());
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
