//! The log's direct mirror on a real file system and io_uring: Sync writes are made durable
//! without an fdatasync of the log, in groups, and survive the loss of the log's page cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use polykv_engine::log::mirror::{self, Mirror};
use polykv_engine::log::Log;

const SEGMENT_BYTES: u64 = 1 << 20;

fn segment(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join(format!("{:020}.log", 1))
}

fn replayed(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    Log::open(dir, SEGMENT_BYTES, 0, |_, payload| {
        payloads.push(payload.to_vec());
        Ok(())
    })
    .unwrap();
    payloads
}

/// On the target directory's file system (a real disk, where `O_DIRECT` works).
fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn start(dir: &std::path::Path, log: &Arc<Log>, applied: &Arc<AtomicU64>) -> Arc<Mirror> {
    let generation = mirror::recover(dir).unwrap();
    Mirror::start(dir, generation, log.clone(), applied.clone())
        .expect("the mirror needs io_uring and O_DIRECT, which this machine image has")
}

#[tokio::test]
async fn acknowledged_sync_writes_survive_the_loss_of_the_logs_page_cache() {
    let dir = tempdir();
    let log = Arc::new(Log::open(dir.path(), SEGMENT_BYTES, 0, |_, _| Ok(())).unwrap());
    let applied = Arc::new(AtomicU64::new(0));
    log.append(|buf| buf.extend_from_slice(b"before the mirror"));
    applied.store(1, Ordering::SeqCst);
    let mirror = start(dir.path(), &log, &applied);
    // Starting the mirror synced the log once: this is what the disk holds now.
    let on_disk = std::fs::read(segment(dir.path())).unwrap();
    let syncs = log.counters().syncs.load(Ordering::Relaxed);
    for i in 2..=40u64 {
        log.append(|buf| buf.extend_from_slice(format!("write {i}").as_bytes()));
        applied.store(i, Ordering::SeqCst);
        mirror.wait_durable(i).await.unwrap();
    }
    assert_eq!(
        log.counters().syncs.load(Ordering::Relaxed),
        syncs,
        "no fdatasync of the log"
    );
    assert!(
        mirror.writes() >= 39,
        "one direct write per lone Sync write"
    );
    drop(mirror);
    drop(log);
    // A power cut: the log loses everything only its page cache held.
    std::fs::write(segment(dir.path()), &on_disk).unwrap();
    assert_eq!(replayed(dir.path()).len(), 1, "the loss is real");
    std::fs::write(segment(dir.path()), &on_disk).unwrap();
    mirror::recover(dir.path()).unwrap();
    let payloads = replayed(dir.path());
    assert_eq!(payloads.len(), 40);
    assert_eq!(payloads[39], b"write 40");
}

#[tokio::test]
async fn sync_writers_ready_together_share_one_direct_write() {
    let dir = tempdir();
    let log = Arc::new(Log::open(dir.path(), SEGMENT_BYTES, 0, |_, _| Ok(())).unwrap());
    let applied = Arc::new(AtomicU64::new(0));
    let mirror = start(dir.path(), &log, &applied);
    let writers: Vec<_> = (1..=50u64)
        .map(|i| {
            let (log, applied, mirror) = (log.clone(), applied.clone(), mirror.clone());
            tokio::spawn(async move {
                log.append(|buf| buf.extend_from_slice(format!("write {i}").as_bytes()));
                applied.fetch_add(1, Ordering::SeqCst);
                mirror.wait_durable(i).await
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    assert!(
        mirror.writes() <= 2,
        "50 Sync writes ready together took {} direct writes",
        mirror.writes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sync_writes_from_concurrent_writers_survive_with_writes_in_flight() {
    let dir = tempdir();
    let log = Arc::new(Log::open(dir.path(), SEGMENT_BYTES, 0, |_, _| Ok(())).unwrap());
    let applied = Arc::new(AtomicU64::new(0));
    let mirror = start(dir.path(), &log, &applied);
    let on_disk = std::fs::read(segment(dir.path())).unwrap();
    // Eight writers, each waiting for its write before the next: groups form while earlier
    // direct writes are in flight, so two overlap.
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let (log, applied, mirror) = (log.clone(), applied.clone(), mirror.clone());
            tokio::spawn(async move {
                for i in 0..25u64 {
                    log.append(|buf| buf.extend_from_slice(format!("w{w} {i:03}").as_bytes()));
                    let number = applied.fetch_add(1, Ordering::SeqCst) + 1;
                    mirror.wait_durable(number).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(mirror.writes() > 1, "{} direct writes", mirror.writes());
    drop(mirror);
    drop(log);
    // A power cut: only what the mirror holds brings the 200 acknowledged writes back.
    std::fs::write(segment(dir.path()), &on_disk).unwrap();
    mirror::recover(dir.path()).unwrap();
    let mut payloads = replayed(dir.path());
    payloads.sort();
    let mut expected: Vec<Vec<u8>> = (0..8u64)
        .flat_map(|w| (0..25u64).map(move |i| format!("w{w} {i:03}").into_bytes()))
        .collect();
    expected.sort();
    assert_eq!(payloads, expected);
}

/// The `.log` files in `dir` with their contents.
fn segment_files(dir: &std::path::Path) -> HashMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

#[tokio::test]
async fn acknowledged_sync_writes_survive_a_power_cut_across_segment_changes() {
    const SMALL: u64 = 4096;
    let dir = tempdir();
    let log = Arc::new(Log::open(dir.path(), SMALL, 0, |_, _| Ok(())).unwrap());
    let applied = Arc::new(AtomicU64::new(0));
    let mirror = start(dir.path(), &log, &applied);
    let counter = |c: &AtomicU64| c.load(Ordering::Relaxed);
    // What the disk holds: each segment as the last sync of the log left it. The writes are one
    // at a time, so a file read right after a sync holds exactly what the sync covered.
    let mut durable = segment_files(dir.path());
    let mut syncs = counter(&log.counters().syncs);
    let mut write = 0u64;
    let sync_write = |log: &Arc<Log>, write: &mut u64| {
        *write += 1;
        let i = *write;
        log.append(|buf| {
            buf.extend_from_slice(format!("write {i:04} {}", "x".repeat(40)).as_bytes())
        });
        applied.store(i, Ordering::SeqCst);
        mirror.wait_durable(i)
    };
    for _ in 0..600 {
        sync_write(&log, &mut write).await.unwrap();
        // The persister's sync, now and then: it makes the next segment ahead.
        if write.is_multiple_of(7) {
            log.sync().unwrap();
        }
        if counter(&log.counters().syncs) != syncs {
            syncs = counter(&log.counters().syncs);
            durable = segment_files(dir.path());
        }
    }
    // End right after a change to a segment made ahead, with two Sync writes in the new segment.
    let sealed = counter(&log.counters().segments_sealed);
    while counter(&log.counters().segments_sealed) == sealed {
        sync_write(&log, &mut write).await.unwrap();
    }
    for _ in 0..2 {
        sync_write(&log, &mut write).await.unwrap();
    }
    if counter(&log.counters().syncs) != syncs {
        durable = segment_files(dir.path());
    }
    let (sealed, inline) = (
        counter(&log.counters().segments_sealed),
        counter(&log.counters().rotations_inline),
    );
    assert!(sealed > 5, "{sealed} segment changes");
    assert!(inline < sealed / 2, "{inline} of {sealed} changes inline");
    assert!(mirror.writes() > 400, "{} direct writes", mirror.writes());
    drop(mirror);
    drop(log);
    // A power cut: every file loses what no sync of the log covered (a segment no sync named or
    // wrote, and the segment made ahead, hold only zeros).
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let is_segment = path
            .extension()
            .is_some_and(|e| e == "log" || e == "segment");
        if is_segment {
            let bytes = durable.get(&path).cloned().unwrap_or_default();
            std::fs::write(&path, &bytes).unwrap();
        }
    }
    mirror::recover(dir.path()).unwrap();
    let mut payloads = Vec::new();
    Log::open(dir.path(), SMALL, 0, |_, payload| {
        payloads.push(payload.to_vec());
        Ok(())
    })
    .unwrap();
    assert_eq!(payloads.len() as u64, write);
    for (i, payload) in payloads.iter().enumerate() {
        assert!(payload.starts_with(format!("write {:04} ", i + 1).as_bytes()));
    }
}
