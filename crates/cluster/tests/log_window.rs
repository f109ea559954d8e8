//! The Raft log keeps only its newest entries in memory: every entry not yet applied and
//! applied ones up to a byte budget. Older ones are read back from its files, in any range,
//! across segments, restarts, purges and cut-backs, exactly as a log that kept everything
//! would return them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use polykv_cluster::log_store::LogStore;
use polykv_cluster::{Entry, LogId, Request};
use polykv_engine::{Command, Proposal, Value};

/// Small segments, so that the log spans many.
const SEGMENT_BYTES: u64 = 4096;

fn open(dir: &Path, applied: &Arc<AtomicU64>, window: usize) -> LogStore {
    let store = LogStore::open(1, dir, SEGMENT_BYTES, applied.clone(), false).unwrap();
    store.set_window_bytes(window);
    store
}

/// Entry `index` of `term`, carrying a value that names both, so a read shows which it got.
fn entry(term: u64, index: u64) -> Entry {
    let value = format!("value of entry {index} in term {term}");
    let proposal = Proposal {
        at_ms: index,
        command: Command::put(0, format!("key {index}"), Value::Bytes(value.into())),
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Request {
            proposals: vec![proposal],
            sync: false,
        }),
    }
}

fn append(store: &LogStore, entries: impl IntoIterator<Item = Entry>) {
    let (tx, rx) = mpsc::channel();
    store
        .append_then(entries, move |result| {
            let _ = tx.send(result);
        })
        .unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the flusher answers")
        .expect("written");
}

async fn ids(store: &mut LogStore, range: std::ops::Range<u64>) -> Vec<(u64, u64)> {
    store
        .try_get_log_entries(range)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

fn expected(range: std::ops::Range<u64>, term_of: impl Fn(u64) -> u64) -> Vec<(u64, u64)> {
    range.map(|i| (term_of(i), i)).collect()
}

#[tokio::test]
async fn entries_beyond_the_window_are_read_back_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let applied = Arc::new(AtomicU64::new(0));
    let mut store = open(dir.path(), &applied, 2000);
    for from in (0..600).step_by(10) {
        append(&store, (from..from + 10).map(|i| entry(1, i)));
    }
    // Nothing applied: everything stays in memory, whatever the budget.
    assert_eq!(store.in_memory().0, 600);
    applied.store(500, Ordering::SeqCst);
    store.trim();
    let (kept, bytes) = store.in_memory();
    assert!(
        (100..150).contains(&kept),
        "kept {kept} entries, {bytes} bytes"
    );
    assert!(bytes <= 2000 + 100 * 70, "{bytes}");
    // One range after the next, as replication reads, and across the window's edge.
    let mut all = Vec::new();
    for from in (0..600).step_by(37) {
        all.extend(ids(&mut store, from..(from + 37).min(600)).await);
    }
    assert_eq!(all, expected(0..600, |_| 1));
    assert_eq!(ids(&mut store, 120..140).await, expected(120..140, |_| 1));
    assert_eq!(ids(&mut store, 590..700).await, expected(590..600, |_| 1));
    // The window's content does not change what a read returns.
    store.set_window_bytes(usize::MAX);
    assert_eq!(ids(&mut store, 0..600).await, expected(0..600, |_| 1));
    let values = store.try_get_log_entries(42..43).await.unwrap();
    let EntryPayload::Normal(request) = &values[0].payload else {
        panic!("a normal entry")
    };
    let EntryPayload::Normal(written) = entry(1, 42).payload else {
        unreachable!()
    };
    assert_eq!(request.proposals, written.proposals);
}

#[tokio::test]
async fn a_restart_keeps_only_the_window_and_purges_and_cuts_are_respected() {
    let dir = tempfile::tempdir().unwrap();
    let applied = Arc::new(AtomicU64::new(0));
    {
        let store = open(dir.path(), &applied, usize::MAX);
        append(&store, (0..400).map(|i| entry(1, i)));
    }
    applied.store(380, Ordering::SeqCst);
    let mut store = open(dir.path(), &applied, 1000);
    assert!(store.in_memory().0 < 100, "{:?}", store.in_memory());
    assert_eq!(ids(&mut store, 0..400).await, expected(0..400, |_| 1));
    // Purged behind a snapshot: reads start after it.
    store
        .purge(LogId::new(CommittedLeaderId::new(1, 1), 99))
        .await
        .unwrap();
    let after_purge = ids(&mut store, 0..400).await;
    assert_eq!(after_purge.first().map(|id| id.1), Some(100));
    assert_eq!(after_purge, expected(100..400, |_| 1));
    // A conflicting suffix cut and written again in a new term: reads see the new entries,
    // from memory and, once the window moved past them, from the files.
    store
        .truncate(LogId::new(CommittedLeaderId::new(1, 1), 390))
        .await
        .unwrap();
    append(&store, (390..420).map(|i| entry(2, i)));
    let term_of = |i: u64| if i < 390 { 1 } else { 2 };
    assert_eq!(ids(&mut store, 370..420).await, expected(370..420, term_of));
    applied.store(420, Ordering::SeqCst);
    store.set_window_bytes(0);
    assert_eq!(store.in_memory().0, 1, "the last applied entry stays");
    assert_eq!(ids(&mut store, 100..420).await, expected(100..420, term_of));
    assert_eq!(
        store
            .get_log_state()
            .await
            .unwrap()
            .last_log_id
            .map(|id| id.index),
        Some(419)
    );
}
