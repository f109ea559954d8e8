//! The Raft log made durable through the engine's direct log mirror, on a real file system:
//! Sync entries are durable without an fdatasync of the log, survive the loss of the log's page
//! cache, and a tail a follower cut back is never written back by recovery.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use polykv_cluster::log_store::LogStore;
use polykv_cluster::{Entry, LogId, Request};

const SEGMENT_BYTES: u64 = 1 << 20;

/// On the target directory's file system (a real disk, where `O_DIRECT` works).
fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn open(dir: &Path) -> LogStore {
    let store = LogStore::open(1, dir, SEGMENT_BYTES, Arc::new(AtomicU64::new(0)), true).unwrap();
    assert!(
        store.uses_mirror(),
        "the mirror needs io_uring and O_DIRECT, which this machine image has"
    );
    store
}

/// The Raft log's only segment (every test stays within one).
fn segment(dir: &Path) -> PathBuf {
    dir.join("log").join(format!("{:020}.log", 1))
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Request {
            proposals: Vec::new(),
            sync: true,
        }),
    }
}

/// Appends the entries one call each and waits until each is reported durable.
fn append_durably(store: &LogStore, entries: impl IntoIterator<Item = Entry>) {
    for entry in entries {
        let (tx, rx) = mpsc::channel();
        store
            .append_then([entry], move |result| {
                let _ = tx.send(result);
            })
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the flusher answers")
            .expect("durable");
    }
}

async fn log_ids(dir: &Path) -> Vec<(u64, u64)> {
    let mut store = open(dir);
    store
        .try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

#[tokio::test]
async fn durable_entries_survive_the_loss_of_the_logs_page_cache() {
    let dir = tempdir();
    let store = open(dir.path());
    // Opening synced the (empty) log once: this is what the disk holds now.
    let on_disk = std::fs::read(segment(dir.path())).unwrap();
    let syncs = store.log_syncs();
    append_durably(&store, (0..30).map(|i| entry(1, i)));
    assert_eq!(store.log_syncs(), syncs, "no fdatasync of the log");
    assert!(
        store.direct_writes() >= 30,
        "one direct write per lone durable append, {} made",
        store.direct_writes()
    );
    drop(store);
    // A power cut: the log loses everything only its page cache held.
    let written = std::fs::read(segment(dir.path())).unwrap();
    std::fs::write(segment(dir.path()), &on_disk).unwrap();
    let mut replayed = 0;
    polykv_engine::log::Log::open(&dir.path().join("log"), SEGMENT_BYTES, 0, |_, _| {
        replayed += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(replayed, 0, "the loss is real");
    std::fs::write(segment(dir.path()), &on_disk).unwrap();

    let expected: Vec<(u64, u64)> = (0..30).map(|i| (1, i)).collect();
    assert_eq!(log_ids(dir.path()).await, expected);
    let restored = std::fs::read(segment(dir.path())).unwrap();
    assert_eq!(
        restored[..written.len()],
        written[..],
        "the log as it was written"
    );
}

#[tokio::test]
async fn a_tail_cut_back_is_not_written_back_after_a_power_cut() {
    let dir = tempdir();
    let store = open(dir.path());
    append_durably(&store, (0..10).map(|i| entry(1, i)));
    // A new leader's entries conflict from index 5 on: the follower cuts its log back there.
    store
        .truncate_from(LogId::new(CommittedLeaderId::new(1, 1), 5))
        .unwrap();
    // The cut is durable at once: this is what the disk holds now.
    let on_disk = std::fs::read(segment(dir.path())).unwrap();
    append_durably(&store, (5..8).map(|i| entry(2, i)));
    drop(store);
    // A power cut: the log loses the new entries, which only the mirror holds.
    std::fs::write(segment(dir.path()), &on_disk).unwrap();

    let mut expected: Vec<(u64, u64)> = (0..5).map(|i| (1, i)).collect();
    expected.extend((5..8).map(|i| (2, i)));
    assert_eq!(
        log_ids(dir.path()).await,
        expected,
        "the new entries are back and none of the cut ones"
    );
    // Opened again without a loss: still the same (recovery started yet another generation).
    assert_eq!(log_ids(dir.path()).await, expected);
}
