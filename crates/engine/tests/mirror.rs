//! The log's direct mirror on a real file system and io_uring: Sync writes are made durable
//! without an fdatasync of the log, in groups, and survive the loss of the log's page cache.

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
