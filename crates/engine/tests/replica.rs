//! The engine as a replicated state machine: the same committed proposals give the same entries
//! and versions on every replica, also across restarts; the marker travels with the effects; a
//! snapshot exported from one engine and imported into another reproduces it.

use bytes::Bytes;
use polykv_engine::{
    Command, Condition, Engine, EngineConfig, Exported, Outcome, Proposal, Value, INSTALLING,
};

fn open(dir: &std::path::Path) -> Engine {
    let engine = Engine::open_dir(dir, EngineConfig::default()).unwrap();
    engine.enable_replication();
    engine
}

fn proposals() -> Vec<Proposal> {
    let at = |at_ms, command| Proposal { at_ms, command };
    vec![
        at(1, Command::CreateKeyspace { name: "a".into() }),
        at(2, Command::put(0, "k1", Value::I64(1))),
        at(3, Command::put(0, "k2", Value::Str("two".into()))),
        at(
            4,
            Command::Incr {
                ks: 0,
                key: "k1".into(),
                delta: 5,
            },
        ),
        // A failed condition writes nothing but still moves the marker.
        at(
            5,
            Command::Put {
                ks: 0,
                key: "k2".into(),
                value: Value::I32(0),
                expires_at: None,
                owner: None,
                label: None,
                condition: Condition::VersionIs(99),
            },
        ),
        at(6, Command::delete(0, "k2")),
        at(7, Command::put(9, "unknown keyspace", Value::I32(0))),
    ]
}

fn state(engine: &Engine) -> Vec<Exported> {
    let mut out = Vec::new();
    engine
        .export(|item| {
            out.push(item);
            Ok(())
        })
        .unwrap();
    out
}

#[test]
fn replicas_applying_the_same_proposals_agree_even_across_a_restart() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    let mut b = open(b_dir.path());
    let all = proposals();
    for (i, proposal) in all.iter().enumerate() {
        let marker = Bytes::from(format!("{i}"));
        let outcome_a = a
            .apply_committed(Some(proposal.clone()), marker.clone())
            .unwrap();
        let outcome_b = b.apply_committed(Some(proposal.clone()), marker).unwrap();
        assert_eq!(outcome_a, outcome_b, "proposal {i}");
        if i == 3 {
            // Replica b restarts mid-way: it goes on from its marker with the same versions.
            drop(b);
            b = open(b_dir.path());
            assert_eq!(b.committed_marker().unwrap().as_deref(), Some(&b"3"[..]));
        }
    }
    assert_eq!(
        a.apply_committed(Some(all[4].clone()), "again".into())
            .unwrap(),
        Some(Outcome::NotFound)
    );
    b.apply_committed(Some(all[4].clone()), "again".into())
        .unwrap();
    assert_eq!(
        a.committed_marker().unwrap().as_deref(),
        Some(&b"again"[..])
    );
    assert_eq!(state(&a), state(&b));
    let k1 = a.get(0, b"k1").unwrap().unwrap().entry;
    assert_eq!(k1.value, Value::I64(6));
    assert_eq!(
        k1.version, 3,
        "versions counted exactly: put 1, put 2, incr 3"
    );
    // An entry with no command moves only the marker.
    assert_eq!(a.apply_committed(None, "m".into()).unwrap(), None);
    assert_eq!(a.committed_marker().unwrap().as_deref(), Some(&b"m"[..]));
}

#[test]
fn a_snapshot_reproduces_the_state_and_replaces_what_was_there() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    for (i, proposal) in proposals().into_iter().enumerate() {
        a.apply_committed(Some(proposal), Bytes::from(format!("{i}")))
            .unwrap();
    }
    for i in 0..1000 {
        let command = Command::Put {
            ks: 0,
            key: Bytes::from(format!("key {i:04}")),
            value: Value::I64(i),
            expires_at: (i % 10 == 0).then_some(u64::MAX - 1),
            owner: None,
            label: None,
            condition: Condition::Always,
        };
        let proposal = Proposal { at_ms: 10, command };
        a.apply_committed(Some(proposal), "a".into()).unwrap();
    }
    let exported = state(&a);
    // b has a stale key of its own in the same keyspace; the import removes it.
    let b = open(b_dir.path());
    b.apply_committed(
        Some(Proposal {
            at_ms: 1,
            command: Command::CreateKeyspace { name: "a".into() },
        }),
        "b0".into(),
    )
    .unwrap();
    b.apply_committed(
        Some(Proposal {
            at_ms: 1,
            command: Command::put(0, "stale", Value::I32(1)),
        }),
        "b1".into(),
    )
    .unwrap();
    let mut items = exported.clone().into_iter();
    b.import(|| Ok(items.next()), "snap".into()).unwrap();
    assert_eq!(state(&b), exported);
    assert_eq!(b.committed_marker().unwrap().as_deref(), Some(&b"snap"[..]));
    assert!(b.get(0, b"stale").unwrap().is_none());
    // Versions go on from the snapshot's.
    let put_after = |engine: &Engine| {
        engine
            .apply_committed(
                Some(Proposal {
                    at_ms: 20,
                    command: Command::put(0, "after", Value::I32(1)),
                }),
                "n".into(),
            )
            .unwrap()
    };
    assert_eq!(put_after(&b), put_after(&a));
}

#[test]
fn an_import_cut_short_leaves_the_installing_marker_and_foreign_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let mut n = 0;
    let failed = engine.import(
        || {
            n += 1;
            if n > 1 {
                return Err(polykv_engine::Error::ShuttingDown);
            }
            Ok(Some(Exported::Keyspace {
                id: 0,
                name: "x".into(),
                version: 5,
            }))
        },
        "done".into(),
    );
    assert!(failed.is_err());
    assert_eq!(
        engine.committed_marker().unwrap().as_deref(),
        Some(INSTALLING)
    );
    // A snapshot naming keyspace x with another id is another cluster's data.
    let mut items = vec![
        Exported::Keyspace {
            id: 0,
            name: "y".into(),
            version: 0,
        },
        Exported::Keyspace {
            id: 1,
            name: "x".into(),
            version: 0,
        },
    ]
    .into_iter();
    let err = engine.import(|| Ok(items.next()), "m".into()).unwrap_err();
    assert!(err.to_string().contains("another cluster"), "{err}");
}

#[test]
fn a_memory_only_write_on_one_replica_takes_no_replicated_version() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    let b = open(b_dir.path());
    for (i, proposal) in proposals().into_iter().take(2).enumerate() {
        let marker = Bytes::from(format!("{i}"));
        a.apply_committed(Some(proposal.clone()), marker.clone())
            .unwrap();
        b.apply_committed(Some(proposal), marker).unwrap();
    }
    // Only replica a takes a cache-only write (nmdb CACHE_ONLY stays on its node).
    let local = a
        .submit(
            Command::put(0, "cache only", Value::I32(1)),
            polykv_engine::Durability::Memory,
        )
        .unwrap();
    assert!(!local.needs_wait());
    let next = Proposal {
        at_ms: 9,
        command: Command::put(0, "k3", Value::I32(3)),
    };
    let on_a = a.apply_committed(Some(next.clone()), "n".into()).unwrap();
    let on_b = b.apply_committed(Some(next), "n".into()).unwrap();
    assert_eq!(
        on_a, on_b,
        "the replicated write got the same version on both"
    );
}

#[test]
fn a_snapshot_tells_subscribers_what_it_changed() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let apply = |engine: &Engine, command: Command| {
        engine
            .apply_committed(Some(Proposal { at_ms: 1, command }), "m".into())
            .unwrap()
    };
    let create = || Command::CreateKeyspace { name: "a".into() };
    let (a, b) = (open(a_dir.path()), open(b_dir.path()));
    for engine in [&a, &b] {
        apply(engine, create());
        apply(engine, Command::put(0, "p/same", Value::I32(1)));
        apply(engine, Command::put(0, "p/gone", Value::I32(2)));
        apply(engine, Command::put(0, "exact", Value::I32(3)));
    }
    // a moves on; b, behind, catches up by a's snapshot.
    apply(&a, Command::delete(0, "p/gone"));
    apply(&a, Command::put(0, "p/new", Value::I32(4)));
    apply(&a, Command::put(0, "exact", Value::I32(5)));
    apply(&a, Command::put(0, "unwatched", Value::I32(6)));
    let (prefix, _) = b.watch_prefix(0, "p/".into(), None, 100).unwrap();
    let (exact, _) = b.watch_key(0, "exact".into(), None).unwrap();
    let mut items = state(&a).into_iter();
    b.import(|| Ok(items.next()), "snap".into()).unwrap();

    let drain = |s: &polykv_engine::Subscription| {
        std::iter::from_fn(|| s.try_recv())
            .map(|e| (e.key, e.change))
            .collect::<Vec<_>>()
    };
    let now = |key: &str| b.get(0, key.as_bytes()).unwrap().unwrap().entry;
    assert_eq!(
        drain(&prefix),
        [
            (Bytes::from("p/gone"), polykv_engine::Change::Deleted),
            (
                Bytes::from("p/new"),
                polykv_engine::Change::Set(now("p/new"))
            ),
        ],
        "unchanged keys are not repeated"
    );
    assert_eq!(
        drain(&exact),
        [(
            Bytes::from("exact"),
            polykv_engine::Change::Set(now("exact"))
        )]
    );
}
