//! The engine's append-only log: numbered, checksummed records in segment files.
//!
//! Writers append records to one in-memory buffer ([`Log::append`], no system call); one
//! [`Log::flush`] moves everything buffered into the active segment (what makes an Async write
//! survive a process kill), and [`Log::sync`] adds an fdatasync (group commit). The active
//! segment is mapped where that is safe ([`map`]): the flush is then a copy into the file's
//! pages in the page cache, with no system call, cheap enough for every writer to flush its own
//! write at once; otherwise it is one `write(2)`, gathered over the ready writers.
//! Records are numbered by a sequence that never goes backwards, also across restarts and
//! purges, so a checkpoint can say "everything up to N" and a reader can start after it. The
//! one exception is for a Raft log: [`Log::truncate_from`] removes a conflicting suffix and
//! [`Log::restart_at`] jumps past a snapshot; the engine's own journal never calls them.
//!
//! Files: `<dir>/<first sequence, 20 digits>.log`. A segment is allocated at its full size when
//! it is created (fallocate), so an fdatasync only has to write data, not the file's growing size
//! (0.14 ms against 0.19 ms here); the zeros after the last record are the end of the log. A
//! segment is sealed once it passes the segment size; [`Log::purge_upto`] removes sealed
//! segments a checkpoint covers.
//!
//! The segment change stays off the request path: [`Log::sync`] (the persister's) makes the next
//! segment ahead, as `next.segment` (a name the segment list ignores), once the active one is half
//! full. The change itself only swaps the file handle; the next [`Log::sync`] fdatasyncs the
//! sealed segment, renames `next.segment` to its segment name, fsyncs the directory and only then
//! counts any of it as synced. The rename waits for the sealed segment's sync so that a segment
//! name on disk always means that every record before it reached the disk: after a power cut the
//! log is never left with a gap before a named segment. Until that sync the new segment's
//! records are in `next.segment`, which the open takes on as the newest segment where its first
//! record continues the log (a process killed in between) and removes otherwise (nothing in it
//! was ever acknowledged as durable). With no segment made ahead, or a change still waiting for
//! its sync, the change does the work inline as before ([`LogCounters::rotations_inline`]).
//!
//! Opening is strict: a record cut short at the very end of the newest segment (a crash in the
//! middle of a write) is cut off with a warning; any other damage, or a gap in the numbering,
//! stops the open with an error naming the file and offset.
//!
//! The log knows nothing of what the payloads mean, so the same log can carry the engine's
//! write batches or, in cluster mode, Raft entries.

mod clean;
mod map;
pub mod mirror;
mod read;
mod record;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::StoreError;

pub use read::ReadCursor;
pub use record::MAX_PAYLOAD;

/// Default size at which a segment is sealed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// A place in the log's files: the segment (by the sequence of its first record) and a byte
/// offset in it. Ordered as the log is written.
pub type Position = (u64, u64);

/// Counters of the log.
#[derive(Debug, Default)]
pub struct LogCounters {
    /// `write(2)` calls that carried records.
    pub writes: AtomicU64,
    /// Flushes that copied their records into the mapped segment instead.
    pub copies: AtomicU64,
    pub bytes_written: AtomicU64,
    pub syncs: AtomicU64,
    pub segments_sealed: AtomicU64,
    pub segments_purged: AtomicU64,
    /// Segment changes that synced and created files on the request path: no segment was made
    /// ahead, or the change before was still waiting for its sync.
    pub rotations_inline: AtomicU64,
}

/// The segment made ahead of the change, in the log's directory (not a `.log` name: the segment
/// list never reads it as a segment).
const NEXT_SEGMENT: &str = "next.segment";

struct Buffered {
    bytes: Vec<u8>,
    /// Sequence of the next record appended.
    next_seq: u64,
    /// Sequence of the first record in `bytes`, if any.
    first_in_buffer: Option<u64>,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
}

struct Active {
    file: Arc<File>,
    /// The active segment mapped, where that is safe ([`map::SegmentMap`]): a flush copies
    /// into it rather than making a `write(2)`.
    map: Option<map::SegmentMap>,
    /// End of the records in the active segment: where the next write goes.
    len: u64,
    /// Every segment on disk, oldest first; the last one is being written.
    segments: Vec<Segment>,
    /// The buffer swapped in at each flush, so flushing allocates nothing.
    spare: Vec<u8>,
    /// Set by a failed write or sync: nothing is written after it (the order of what reached
    /// the disk is unknown), and every later call fails with this error.
    failed: Option<StoreError>,
    /// With a mirror attached: the bytes written to the active segment that neither the mirror
    /// nor an fdatasync covers yet, and where they start.
    unmirrored: Vec<u8>,
    unmirrored_at: Position,
    /// Set when more than [`MAX_UNMIRRORED`] bytes waited: they were let go, and only an
    /// fdatasync covers them now.
    unmirrored_dropped: bool,
    /// The next segment, made ahead by [`Log::sync`] as [`NEXT_SEGMENT`].
    ready: Option<File>,
    /// How much of the next segment's start [`Log::prepare_next`] brought into the page cache.
    ready_warmed: u64,
    /// Up to where the active segment's pages are in the page cache ([`Log::warm_ahead`]).
    warmed: u64,
    /// Set while a [`Log::sync`] makes the next segment, outside the lock.
    preparing: bool,
    /// The last segment change, until a [`Log::sync`] has covered it. The active file is
    /// [`NEXT_SEGMENT`] until it is renamed.
    sealing: Option<Sealing>,
}

/// A segment change that no sync has covered yet.
struct Sealing {
    /// The sequence of the new segment's first record (its name once renamed).
    first_seq: u64,
    /// The sealed segment: its tail may not be on disk yet.
    sealed: Arc<File>,
    sealed_path: PathBuf,
    /// Whether [`NEXT_SEGMENT`] has been renamed to the new segment's name (not yet durable
    /// before the directory's fsync).
    renamed: bool,
}

/// Unmirrored bytes kept at most (the mirror's whole ring): an fdatasync is the better way past it.
const MAX_UNMIRRORED: usize = (mirror::BLOCKS as usize - 1) * 4096;

impl Active {
    fn position(&self) -> Position {
        (self.segments.last().map_or(0, |s| s.first_seq), self.len)
    }

    /// Forgets what an fdatasync up to `synced` made durable.
    fn forget_synced(&mut self, synced: Position) {
        if synced >= self.position() {
            self.restart_unmirrored();
            return;
        }
        let (segment, offset) = self.unmirrored_at;
        if synced.0 > segment {
            self.unmirrored.clear();
            self.unmirrored_at = self.position();
        } else if synced.0 == segment && synced.1 > offset {
            let covered = ((synced.1 - offset) as usize).min(self.unmirrored.len());
            self.unmirrored.drain(..covered);
            self.unmirrored_at = (segment, offset + covered as u64);
        }
    }

    /// Makes `file` the segment written from now on, its records ending at `len`, with its
    /// map and how far its pages are warm; returns the file written until now. The segment list
    /// must already end with it: the unmirrored bytes start afresh at its position.
    fn write_to(
        &mut self,
        file: File,
        map: Option<map::SegmentMap>,
        len: u64,
        warmed: u64,
    ) -> Arc<File> {
        self.map = map;
        self.len = len;
        self.warmed = warmed;
        let before = std::mem::replace(&mut self.file, Arc::new(file));
        self.restart_unmirrored();
        before
    }

    /// Starts the unmirrored bytes afresh at the end of the active segment.
    fn restart_unmirrored(&mut self) {
        self.unmirrored.clear();
        self.unmirrored_at = self.position();
        self.unmirrored_dropped = false;
    }

    /// The segment being written, for error messages.
    fn current_path(&self) -> PathBuf {
        let path = self
            .segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        match &self.sealing {
            Some(sealing) if !sealing.renamed => path.with_file_name(NEXT_SEGMENT),
            _ => path,
        }
    }
}

/// An append-only, segmented log of checksummed records.
pub struct Log {
    dir: PathBuf,
    segment_bytes: u64,
    /// Whether segments are mapped for writing ([`SegmentWrites`]), decided when the log
    /// opens.
    mapped: bool,
    buffered: Mutex<Buffered>,
    /// Held while writing to the files: one flush at a time, in order.
    active: Mutex<Active>,
    counters: LogCounters,
    /// Whether a mirror takes the written bytes ([`Log::take_unmirrored`]).
    mirrored: AtomicBool,
    /// Up to where the files are fdatasynced.
    synced: Mutex<Position>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::io(format!("{what} {}", path.display()), e)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("fsync directory", dir, e))
}

/// The segment files in `dir`, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, StoreError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error("list", dir, e))? {
        let entry = entry.map_err(|e| io_error("list", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        let first_seq = stem.parse().map_err(|_| {
            StoreError::Corrupt(format!(
                "log segment {} has no sequence number in its name",
                entry.path().display()
            ))
        })?;
        segments.push(Segment {
            first_seq,
            path: entry.path(),
        });
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// What [`NEXT_SEGMENT`] held at open.
enum NextSegment {
    None,
    /// Made ahead and never written (found after a clean close): used for the next change.
    Ready(File),
    /// Written after a change that no sync covered, and continuing the log: renamed to its
    /// segment name, to be read as the newest segment.
    Adopted(Segment),
}

/// Deals with a [`NEXT_SEGMENT`] left in `dir`. Its records were never acknowledged as durable
/// (a sync renames it before it counts, and the mirror takes none of its bytes), so it is kept
/// only where its first record continues the log (`expected`, or within the checkpoint's reach
/// when no segment is left): the process died after the change, and the segment before it is
/// whole. Otherwise (a power cut took the sealed segment's tail, or it was never written) it is
/// removed, unless a clean close left it unwritten at the size segments are made.
fn take_next_segment(
    dir: &Path,
    expected: Option<u64>,
    after: u64,
    clean: bool,
    segment_bytes: u64,
) -> Result<NextSegment, StoreError> {
    let path = dir.join(NEXT_SEGMENT);
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NextSegment::None),
        Err(e) => return Err(io_error("open", &path, e)),
    };
    let size = file
        .metadata()
        .map_err(|e| io_error("stat", &path, e))?
        .len();
    let mut header = [0u8; record::HEADER_LEN];
    let written = size >= header.len() as u64
        && file
            .read_exact_at(&mut header, 0)
            .map_err(|e| io_error("read", &path, e))
            .map(|()| header.iter().any(|b| *b != 0))?;
    // After a clean close the last sync came after the last change: the file was never written.
    if clean && !written && size == segment_bytes {
        return Ok(NextSegment::Ready(file));
    }
    if written {
        let bytes = std::fs::read(&path).map_err(|e| io_error("read", &path, e))?;
        if let record::Decoded::Record { seq, .. } = record::decode(&bytes) {
            let continues = expected.map_or(seq <= after + 1, |expected| seq == expected);
            if continues {
                let named = segment_path(dir, seq);
                std::fs::rename(&path, &named).map_err(|e| io_error("rename", &path, e))?;
                sync_dir(dir)?;
                tracing::info!(file = %named.display(), "log: took on the segment started before a crash");
                return Ok(NextSegment::Adopted(Segment {
                    first_seq: seq,
                    path: named,
                }));
            }
        }
        tracing::warn!(
            file = %path.display(),
            "log: removing a segment whose records do not continue the log (never synced)"
        );
    }
    std::fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))?;
    Ok(NextSegment::None)
}

/// How a log writes its active segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentWrites {
    /// Through a shared mapping where the file allows it: a flush is a copy. `POLYKV_LOG_MAP=0`
    /// (a measurement switch) makes it [`SegmentWrites::Calls`].
    Mapped,
    /// With one `write(2)` per flush.
    Calls,
}

impl Log {
    /// [`Log::open_with`] segments mapped.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        after: u64,
        replay: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<Log, StoreError> {
        Self::open_with(dir, segment_bytes, after, SegmentWrites::Mapped, replay)
    }

    /// Opens (creating if needed) the log in `dir` and replays it: `replay` is called, in order,
    /// for every intact record with a sequence above `after` (what a checkpoint already holds).
    /// New records are numbered from above both the last record and `after`; the active
    /// segment is written as `writes` says.
    pub fn open_with(
        dir: &Path,
        segment_bytes: u64,
        after: u64,
        writes: SegmentWrites,
        mut replay: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<Log, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let mut segments = list_segments(dir)?;
        // Removed before anything is written: a later crash never meets a stale mark.
        let clean = clean::take(dir)?;
        let mut next_seq = after + 1;
        let mut expected: Option<u64> = None;
        let mut newest_end = 0u64;
        let count = segments.len();
        for (index, segment) in segments.iter().enumerate() {
            let newest = index + 1 == count;
            if expected.is_none() && segment.first_seq > after + 1 {
                return Err(StoreError::Corrupt(format!(
                    "log segment {} starts at record {}, but the checkpoint holds only up to {after}: \
                     records are missing",
                    segment.path.display(),
                    segment.first_seq
                )));
            }
            if let Some(expected) = expected {
                if segment.first_seq != expected {
                    return Err(StoreError::Corrupt(format!(
                        "log segment {} starts at record {}, expected {expected}: records are missing",
                        segment.path.display(),
                        segment.first_seq
                    )));
                }
            }
            let clean_len = clean
                .filter(|mark| newest && mark.first_seq == segment.first_seq)
                .map(|mark| mark.len);
            let (last, end) = replay_segment(segment, newest, after, clean_len, &mut replay)?;
            let next = last.map_or(segment.first_seq, |last| last + 1);
            expected = Some(next);
            next_seq = next_seq.max(next);
            newest_end = end;
        }
        let segment_bytes = segment_bytes.max(4096);
        let ready = match take_next_segment(dir, expected, after, clean.is_some(), segment_bytes)? {
            NextSegment::Ready(file) => Some(file),
            NextSegment::Adopted(segment) => {
                let (last, end) = replay_segment(&segment, true, after, None, &mut replay)?;
                next_seq = next_seq.max(last.map_or(segment.first_seq, |last| last + 1));
                newest_end = end;
                segments.push(segment);
                None
            }
            NextSegment::None => None,
        };

        // Write on in the newest segment if there is one, else start the first.
        let (file, len) = match segments.last() {
            Some(newest) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&newest.path)
                    .map_err(|e| io_error("open", &newest.path, e))?;
                (file, newest_end)
            }
            None => {
                let path = segment_path(dir, next_seq);
                let file = create_segment(&path, segment_bytes)?;
                sync_dir(dir)?;
                segments.push(Segment {
                    first_seq: next_seq,
                    path,
                });
                (file, 0)
            }
        };
        let mapped = writes == SegmentWrites::Mapped && mapping_wanted();
        let map = mapped
            .then(|| map::SegmentMap::new(&file, segment_bytes, len))
            .flatten();
        Ok(Log {
            dir: dir.to_path_buf(),
            segment_bytes,
            mapped,
            buffered: Mutex::new(Buffered {
                bytes: Vec::with_capacity(64 << 10),
                next_seq,
                first_in_buffer: None,
            }),
            active: Mutex::new(Active {
                file: Arc::new(file),
                map,
                len,
                segments,
                spare: Vec::with_capacity(64 << 10),
                failed: None,
                unmirrored: Vec::new(),
                unmirrored_at: (0, 0),
                unmirrored_dropped: false,
                ready,
                ready_warmed: 0,
                warmed: 0,
                preparing: false,
                sealing: None,
            }),
            counters: LogCounters::default(),
            mirrored: AtomicBool::new(false),
            synced: Mutex::new((0, 0)),
        })
    }

    /// Appends one record to the buffer and returns its sequence. `write_payload` appends the
    /// payload (at most [`MAX_PAYLOAD`] bytes; the caller bounds it).
    pub fn append(&self, write_payload: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let mut buffered = self.buffered.lock();
        let seq = buffered.next_seq;
        buffered.next_seq += 1;
        buffered.first_in_buffer.get_or_insert(seq);
        record::encode(&mut buffered.bytes, seq, write_payload);
        seq
    }

    /// The sequence the next appended record will get.
    pub fn next_seq(&self) -> u64 {
        self.buffered.lock().next_seq
    }

    /// Writes every buffered record to the active segment with one `write(2)`.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut active = self.active.lock();
        self.flush_locked(&mut active)
    }

    fn flush_locked(&self, active: &mut Active) -> Result<(), StoreError> {
        if let Some(failed) = &active.failed {
            return Err(failed.clone());
        }
        let (mut bytes, first_seq) = {
            let mut buffered = self.buffered.lock();
            let Some(first_seq) = buffered.first_in_buffer.take() else {
                return Ok(());
            };
            let spare = std::mem::take(&mut active.spare);
            (std::mem::replace(&mut buffered.bytes, spare), first_seq)
        };
        let result = self.write_out(active, &bytes, first_seq);
        bytes.clear();
        active.spare = bytes;
        if let Err(e) = &result {
            active.failed = Some(e.clone());
        }
        result
    }

    fn write_out(
        &self,
        active: &mut Active,
        bytes: &[u8],
        first_seq: u64,
    ) -> Result<(), StoreError> {
        if active.len >= self.segment_bytes {
            self.change_segment(active, first_seq)?;
        }
        let copied = match active.map.as_mut() {
            Some(map) => map.write_at(active.len, bytes),
            None => false,
        };
        if copied {
            self.counters.copies.fetch_add(1, Ordering::Relaxed);
        } else {
            // The path is only named in an error: no allocation per write.
            active
                .file
                .write_all_at(bytes, active.len)
                .map_err(|e| io_error("write", &active.current_path(), e))?;
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
        }
        if self.mirrored.load(Ordering::Relaxed) && !active.unmirrored_dropped {
            if active.unmirrored.len() + bytes.len() > MAX_UNMIRRORED {
                active.unmirrored = Vec::new();
                active.unmirrored_dropped = true;
            } else {
                if active.unmirrored.is_empty() {
                    active.unmirrored_at = active.position();
                }
                active.unmirrored.extend_from_slice(bytes);
            }
        }
        active.len += bytes.len() as u64;
        self.counters
            .bytes_written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Seals the active segment and starts a new one whose first record is `first_seq`: with a
    /// segment made ahead, by swapping the file handle (the sealed segment's sync and the rename
    /// wait for [`Log::sync`]); otherwise inline, as [`Log::seal_and_start`].
    fn change_segment(&self, active: &mut Active, first_seq: u64) -> Result<(), StoreError> {
        let ready = active.ready.take();
        let Some(file) = ready.filter(|_| active.sealing.is_none()) else {
            self.counters
                .rotations_inline
                .fetch_add(1, Ordering::Relaxed);
            self.settle(active)?;
            return self.seal_and_start(active, first_seq);
        };
        let sealed_path = active.current_path();
        active.segments.push(Segment {
            first_seq,
            path: segment_path(&self.dir, first_seq),
        });
        let map = self.map(&file, 0);
        let warmed = std::mem::take(&mut active.ready_warmed);
        // The sealed tail's bytes are let go: the sync that covers the change covers them, and
        // until then the mirror takes nothing (see [`Log::take_unmirrored`]).
        let sealed = active.write_to(file, map, 0, warmed);
        active.sealing = Some(Sealing {
            first_seq,
            sealed,
            sealed_path,
            renamed: false,
        });
        self.counters
            .segments_sealed
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Seals the active segment (fdatasync, so a later sync of the newest file covers it) and
    /// starts a new one whose first record is `first_seq`, on the calling thread.
    fn seal_and_start(&self, active: &mut Active, first_seq: u64) -> Result<(), StoreError> {
        let old = active.current_path();
        active
            .file
            .sync_data()
            .map_err(|e| io_error("fdatasync", &old, e))?;
        let path = segment_path(&self.dir, first_seq);
        let file = create_segment(&path, self.segment_bytes)?;
        sync_dir(&self.dir)?;
        *self.synced.lock() = active.position();
        active.segments.push(Segment { first_seq, path });
        let map = self.map(&file, 0);
        active.write_to(file, map, 0, 0);
        self.counters
            .segments_sealed
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Completes a segment change that no sync has covered, on the calling thread: the sealed
    /// segment's fdatasync, the rename, the directory's fsync. A failure poisons the log.
    fn settle(&self, active: &mut Active) -> Result<(), StoreError> {
        let Some(sealing) = active.sealing.take() else {
            return Ok(());
        };
        let result = sealing
            .sealed
            .sync_data()
            .map_err(|e| io_error("fdatasync", &sealing.sealed_path, e))
            .and_then(|()| match sealing.renamed {
                true => Ok(()),
                false => self.rename_next(sealing.first_seq),
            })
            .and_then(|()| sync_dir(&self.dir));
        if let Err(e) = &result {
            active.failed.get_or_insert(e.clone());
        }
        result
    }

    fn rename_next(&self, first_seq: u64) -> Result<(), StoreError> {
        let from = self.dir.join(NEXT_SEGMENT);
        std::fs::rename(&from, segment_path(&self.dir, first_seq))
            .map_err(|e| io_error("rename", &from, e))
    }

    /// Flushes, then fdatasyncs: every record appended before the call is on stable storage
    /// when it returns. A segment change not yet covered is completed first (the sealed
    /// segment's fdatasync, the rename, the directory's fsync). The syncs run outside the file
    /// lock, so appends and flushes go on. Then makes the next segment ahead where it is due.
    pub fn sync(&self) -> Result<(), StoreError> {
        let (file, position, sealing) = {
            let mut active = self.active.lock();
            self.flush_locked(&mut active)?;
            let sealing = active
                .sealing
                .as_ref()
                .map(|s| (s.first_seq, s.sealed.clone(), s.sealed_path.clone()));
            (active.file.clone(), active.position(), sealing)
        };
        let result = self.sync_files(&file, sealing.as_ref());
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = result {
            self.active.lock().failed.get_or_insert(error.clone());
            return Err(error);
        }
        {
            let mut synced = self.synced.lock();
            *synced = (*synced).max(position);
        }
        {
            let mut active = self.active.lock();
            if let Some((first_seq, ..)) = sealing {
                if active
                    .sealing
                    .as_ref()
                    .is_some_and(|s| s.first_seq == first_seq)
                {
                    active.sealing = None;
                }
            }
            active.forget_synced(position);
        }
        self.prepare_next();
        self.warm_ahead();
        Ok(())
    }

    /// Brings the active segment's pages ahead of the write position into the page cache, on
    /// the caller's thread (the persister's). A segment's blocks are allocated but unwritten,
    /// so the first touch of a page zeroes it; on a mapped segment that touch is a page fault
    /// of the writer, and the fault's read-ahead zeroes a whole window at once (22–39 ms for
    /// the 8 MiB `read_ahead_kb` of this machine's disk, on the request path). Pages found in
    /// the page cache cost the writer a minor fault instead. Work is done in steps of at least
    /// half of [`WARM_AHEAD`], so frequent syncs (group commit) rarely call into the kernel.
    /// Only for a mapped segment: a `write(2)` zeroes what it needs a page at a time, while
    /// this zeroes a read-ahead window in one stretch of kernel code that the worker, on the
    /// same core, waits for (20–37 ms measured on a fresh machine, the slowest requests).
    fn warm_ahead(&self) {
        let (file, from, to) = {
            let active = self.active.lock();
            if active.map.is_none()
                || active.failed.is_some()
                || active.warmed >= active.len + WARM_AHEAD / 2
            {
                return;
            }
            let to = ((active.len + WARM_AHEAD) / PAGE * PAGE).min(self.segment_bytes);
            let from = active.warmed.max(active.len / PAGE * PAGE);
            if from >= to {
                return;
            }
            (active.file.clone(), from, to)
        };
        map::warm(&file, from, to - from);
        let mut active = self.active.lock();
        if Arc::ptr_eq(&active.file, &file) {
            active.warmed = active.warmed.max(to);
        }
    }

    /// The syncs of [`Log::sync`], in the order a power cut needs: the sealed segment, then its
    /// successor's name (so a name on disk never follows a lost tail), then the active file.
    fn sync_files(
        &self,
        file: &File,
        sealing: Option<&(u64, Arc<File>, PathBuf)>,
    ) -> Result<(), StoreError> {
        if let Some((first_seq, sealed, sealed_path)) = sealing {
            sealed
                .sync_data()
                .map_err(|e| io_error("fdatasync", sealed_path, e))?;
            {
                // Under the lock: a change done inline meanwhile may have renamed it already.
                let mut active = self.active.lock();
                if let Some(s) = active
                    .sealing
                    .as_mut()
                    .filter(|s| s.first_seq == *first_seq && !s.renamed)
                {
                    self.rename_next(*first_seq)?;
                    s.renamed = true;
                }
            }
            sync_dir(&self.dir)?;
        }
        file.sync_data()
            .map_err(|e| StoreError::io("log fdatasync", e))
    }

    /// Makes the next segment ahead (created, allocated) once the active one is half full, so
    /// that the change finds it ready. Not made durable: nothing relies on it before the sync
    /// that renames it, whose directory fsync covers its creation too. A failure only leaves
    /// the change to make it inline.
    fn prepare_next(&self) {
        {
            let mut active = self.active.lock();
            if active.preparing
                || active.ready.is_some()
                || active.sealing.is_some()
                || active.failed.is_some()
                || active.len < self.segment_bytes / 2
            {
                return;
            }
            active.preparing = true;
        }
        let path = self.dir.join(NEXT_SEGMENT);
        let created = create_segment(&path, self.segment_bytes);
        // The start of the segment in the page cache too, for the writer's first faults (only
        // where segments are mapped: see `warm_ahead`).
        let warmed = if self.mapped {
            WARM_AHEAD.min(self.segment_bytes)
        } else {
            0
        };
        if let (Ok(file), true) = (&created, warmed > 0) {
            map::warm(file, 0, warmed);
        }
        let mut active = self.active.lock();
        active.preparing = false;
        match created {
            Ok(file) => {
                active.ready = Some(file);
                active.ready_warmed = warmed;
            }
            Err(e) => tracing::warn!(error = %e, "log: the next segment could not be made ahead"),
        }
    }

    /// Up to where the files are known to be fdatasynced (by [`Log::sync`] or a change done
    /// inline). Never past a sealed segment whose tail no sync has covered yet.
    pub fn synced_position(&self) -> Position {
        *self.synced.lock()
    }

    /// From now on keeps the bytes written for [`Log::take_unmirrored`]. What was written
    /// before is not kept: the caller syncs once after attaching.
    pub fn attach_mirror(&self) {
        let mut active = self.active.lock();
        self.mirrored.store(true, Ordering::Relaxed);
        active.restart_unmirrored();
    }

    /// Writes out what is buffered, then moves into `out` (replacing its contents) the bytes
    /// written to the active segment that neither an fdatasync nor an earlier call covers, and
    /// returns where they start; `None` when there were too many to keep
    /// ([`MAX_UNMIRRORED`]), or after a segment change that no sync has covered yet: only
    /// [`Log::sync`] covers them then. (The sealed segment's tail is in no fragment, and a
    /// fragment of the new segment is no use where a power cut loses the segment's name.)
    pub fn take_unmirrored(&self, out: &mut Vec<u8>) -> Result<Option<Position>, StoreError> {
        let mut active = self.active.lock();
        self.flush_locked(&mut active)?;
        out.clear();
        if active.unmirrored_dropped || active.sealing.is_some() {
            active.restart_unmirrored();
            return Ok(None);
        }
        let at = active.unmirrored_at;
        std::mem::swap(out, &mut active.unmirrored);
        active.restart_unmirrored();
        Ok(Some(at))
    }

    /// Records a clean close: where the log ends, so the next open reads only that much of the
    /// newest segment. Call after the last [`Log::sync`], with nothing written after it.
    pub fn mark_clean(&self) -> Result<(), StoreError> {
        let active = self.active.lock();
        // A change no sync covered: no mark, and the open reads everything as after a crash.
        if active.sealing.is_some() {
            return Ok(());
        }
        let Some(newest) = active.segments.last() else {
            return Ok(());
        };
        let mark = clean::Mark {
            first_seq: newest.first_seq,
            len: active.len,
        };
        clean::write(&self.dir, mark)
    }

    /// Removes the sealed segments whose records all have sequences up to `seq`.
    pub fn purge_upto(&self, seq: u64) -> Result<(), StoreError> {
        let doomed: Vec<PathBuf> = {
            let mut active = self.active.lock();
            // Segment i holds records [first_i, first_{i+1}); it can go when first_{i+1} <= seq + 1.
            let keep_from = active
                .segments
                .windows(2)
                .take_while(|pair| pair[1].first_seq <= seq + 1)
                .count();
            active.segments.drain(..keep_from).map(|s| s.path).collect()
        };
        for path in &doomed {
            std::fs::remove_file(path).map_err(|e| io_error("remove", path, e))?;
            self.counters
                .segments_purged
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes every record with a sequence of `seq` or more (a Raft follower's conflicting
    /// suffix), durably: the next record appended is numbered `seq`. Records buffered but not yet
    /// written are written first, so the cut is made in one place, the files.
    pub fn truncate_from(&self, seq: u64) -> Result<(), StoreError> {
        let mut active = self.active.lock();
        self.flush_locked(&mut active)?;
        let next = self.buffered.lock().next_seq;
        if seq >= next {
            return Ok(());
        }
        // Every segment under its own name first.
        self.settle(&mut active)?;
        let Some(keep) = active.segments.iter().rposition(|s| s.first_seq <= seq) else {
            return Err(StoreError::Refused(format!(
                "cannot truncate the log from record {seq}: it is purged"
            )));
        };
        // Never shorten a mapped file (an access past its end is SIGBUS): the map goes first.
        active.map = None;
        // Whole segments after the one holding `seq` go; that one is cut at the record.
        let doomed: Vec<Segment> = active.segments.drain(keep + 1..).collect();
        let segment = &active.segments[keep];
        let offset = record_offset(segment, seq)?;
        // Readable too: a mapping needs it, and so does reading records back.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segment.path)
            .map_err(|e| io_error("open", &segment.path, e))?;
        // Cut, then allocate the rest again: zeros after the last record are the end of the log.
        file.set_len(offset)
            .and_then(|()| file.set_len(offset.max(self.segment_bytes)))
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("truncate", &segment.path, e))?;
        for gone in &doomed {
            std::fs::remove_file(&gone.path).map_err(|e| io_error("remove", &gone.path, e))?;
        }
        sync_dir(&self.dir)?;
        let map = self.map(&file, offset);
        active.write_to(file, map, offset, 0);
        self.buffered.lock().next_seq = seq;
        Ok(())
    }

    /// Drops every record and numbers the next one `seq`, which must be above every record
    /// written (a Raft follower that installed a snapshot newer than its whole log). The caller
    /// records durably, before calling, that everything below `seq` is covered elsewhere: the log
    /// opens with `after = seq - 1` from then on.
    pub fn restart_at(&self, seq: u64) -> Result<(), StoreError> {
        let mut active = self.active.lock();
        self.flush_locked(&mut active)?;
        let next = self.buffered.lock().next_seq;
        if seq < next {
            return Err(StoreError::Refused(format!(
                "cannot restart the log at record {seq}: records up to {} exist",
                next - 1
            )));
        }
        self.settle(&mut active)?;
        let path = segment_path(&self.dir, seq);
        let file = create_segment(&path, self.segment_bytes)?;
        let doomed: Vec<Segment> = std::mem::take(&mut active.segments);
        active.segments.push(Segment {
            first_seq: seq,
            path,
        });
        let map = self.map(&file, 0);
        active.write_to(file, map, 0, 0);
        self.buffered.lock().next_seq = seq;
        sync_dir(&self.dir)?;
        for gone in &doomed {
            std::fs::remove_file(&gone.path).map_err(|e| io_error("remove", &gone.path, e))?;
        }
        sync_dir(&self.dir)
    }

    /// `file` (a segment whose records end at `written`) mapped for writing, where this log
    /// maps its segments and the file allows it.
    fn map(&self, file: &File, written: u64) -> Option<map::SegmentMap> {
        if !self.mapped {
            return None;
        }
        map::SegmentMap::new(file, self.segment_bytes, written)
    }

    /// Whether a flush now copies into the mapped segment (no system call) rather than making
    /// a `write(2)`: a flush per write then costs about what gathering them would.
    pub fn flushes_in_place(&self) -> bool {
        // A log that does not map its segments never holds a map: nothing to lock for.
        self.mapped && self.active.lock().map.is_some()
    }

    /// Bytes in the segment files on disk (approximate: sealed sizes are read from the files).
    pub fn disk_bytes(&self) -> u64 {
        let active = self.active.lock();
        let sealed: u64 = active
            .segments
            .iter()
            .rev()
            .skip(1)
            .filter_map(|s| std::fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        sealed + active.len
    }

    pub fn counters(&self) -> &LogCounters {
        &self.counters
    }
}

/// Whether segments are mapped for writing: yes, unless `POLYKV_LOG_MAP=0` (a measurement
/// switch: every flush is a `write(2)` then).
fn mapping_wanted() -> bool {
    std::env::var("POLYKV_LOG_MAP").map_or(true, |v| v != "0")
}

/// Bytes of the active segment kept in the page cache ahead of the write position
/// ([`Log::warm_ahead`]): well over what the writers add between two of the persister's syncs.
const WARM_AHEAD: u64 = 8 << 20;

const PAGE: u64 = map::PAGE as u64;

/// Creates a segment file allocated at its full size (where the file system can).
fn create_segment(path: &Path, size: u64) -> Result<File, StoreError> {
    // Readable too: a shared mapping needs it.
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_error("create", path, e))?;
    // SAFETY: fallocate on a file descriptor this function owns; no pointers.
    let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    if result != 0 {
        // Not every file system can; the log then grows as it is written, which is only slower.
        tracing::debug!(file = %path.display(), error = result, "log segment not preallocated");
    }
    Ok(file)
}

/// The byte offset of record `seq` in a segment (or the end of its records, when `seq` is the
/// one after its last).
fn record_offset(segment: &Segment, seq: u64) -> Result<u64, StoreError> {
    let bytes = std::fs::read(&segment.path).map_err(|e| io_error("read", &segment.path, e))?;
    let mut offset = 0usize;
    let mut current = segment.first_seq;
    while current < seq {
        match bytes.get(offset..).map(record::decode) {
            Some(record::Decoded::Record { len, .. }) => {
                offset += len;
                current += 1;
            }
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "log {} at offset {offset}: record {current} unreadable while truncating",
                    segment.path.display()
                )))
            }
        }
    }
    Ok(offset as u64)
}

/// Replays one segment; returns the sequence of its last intact record and where the records
/// end. Zeros after the last record are the unused rest of a preallocated segment. Cuts a torn
/// tail off the newest segment; any other damage is an error.
fn replay_segment(
    segment: &Segment,
    newest: bool,
    after: u64,
    clean_len: Option<u64>,
    replay: &mut impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
) -> Result<(Option<u64>, u64), StoreError> {
    let path = &segment.path;
    let bytes = match clean_len.and_then(|len| read_clean(path, len)) {
        Some(bytes) => bytes,
        None => std::fs::read(path).map_err(|e| io_error("read", path, e))?,
    };
    let mut offset = 0usize;
    let mut expected = segment.first_seq;
    let mut last = None;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let problem = match record::decode(rest) {
            record::Decoded::Record { seq, payload, len } => {
                if seq != expected {
                    return Err(StoreError::Corrupt(format!(
                        "log {} at offset {offset}: record {seq} where {expected} was expected",
                        path.display()
                    )));
                }
                if seq > after {
                    replay(seq, payload).map_err(|e| match e {
                        StoreError::Corrupt(why) => StoreError::Corrupt(format!(
                            "log {} at offset {offset}, record {seq}: {why}",
                            path.display()
                        )),
                        other => other,
                    })?;
                }
                last = Some(seq);
                expected += 1;
                offset += len;
                continue;
            }
            record::Decoded::Truncated => "record cut short",
            record::Decoded::Damaged(why) => why,
        };
        // A crash in the middle of a write leaves a partial record at the very end of the newest
        // segment, followed only by the zeros of the unused rest. Anything else is damage.
        let declared = rest.get(..4).map_or(0, |len| {
            u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize
        });
        let record_end = record::HEADER_LEN.saturating_add(declared).min(rest.len());
        let torn_tail = newest
            && (matches!(record::decode(rest), record::Decoded::Truncated)
                || rest[record_end..].iter().all(|b| *b == 0));
        if !torn_tail {
            return Err(StoreError::Corrupt(format!(
                "log {} at offset {offset}: {problem}, with {} more bytes after it; \
                 refusing to drop acknowledged writes (move the file away to start without it)",
                path.display(),
                rest.len()
            )));
        }
        tracing::warn!(
            file = %path.display(),
            offset,
            bytes = rest.len(),
            "log ends in a torn record (a write cut short by a crash); cutting it off"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_error("open", path, e))?;
        file.set_len(offset as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("truncate", path, e))?;
        break;
    }
    Ok((last, offset as u64))
}

/// The used part of a segment closed cleanly at `len`, if its records end exactly there and
/// zeros follow; otherwise `None`, and the whole segment is read as after a crash.
fn read_clean(path: &Path, len: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let used = usize::try_from(len).ok()?;
    if len > size {
        return None;
    }
    let mut bytes = Vec::with_capacity(used);
    (&file).take(len).read_to_end(&mut bytes).ok()?;
    let mut after = vec![0u8; (size - len).min(4096) as usize];
    file.read_exact_at(&mut after, len).ok()?;
    if bytes.len() != used || after.iter().any(|b| *b != 0) {
        return None;
    }
    let mut offset = 0;
    while offset < used {
        match record::decode(&bytes[offset..]) {
            record::Decoded::Record { len, .. } => offset += len,
            _ => return None,
        }
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Replayed = Vec<(u64, Vec<u8>)>;

    fn collect(dir: &Path, after: u64) -> Result<(Log, Replayed), StoreError> {
        let mut seen = Vec::new();
        let log = Log::open(dir, 4096, after, |seq, payload| {
            seen.push((seq, payload.to_vec()));
            Ok(())
        })?;
        Ok((log, seen))
    }

    fn append_n(log: &Log, from: u64, n: u64) {
        for i in from..from + n {
            log.append(|buf| buf.extend_from_slice(format!("record {i}").as_bytes()));
        }
    }

    /// A log of three records ("record 0" to "record 2") in one segment, closed; its file.
    fn three_records() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = collect(dir.path(), 0).unwrap();
        append_n(&log, 0, 3);
        log.flush().unwrap();
        drop(log);
        let path = list_segments(dir.path()).unwrap()[0].path.clone();
        (dir, path)
    }

    #[test]
    fn a_flush_copies_into_the_mapped_segment_and_the_file_holds_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = collect(dir.path(), 0).unwrap();
        assert!(log.flushes_in_place(), "a new, allocated segment is mapped");
        // Enough records for several 4 KiB segments: each change maps the next one.
        for from in (0..400).step_by(10) {
            append_n(&log, from, 10);
            log.flush().unwrap();
        }
        let counters = log.counters();
        assert!(counters.copies.load(Ordering::Relaxed) >= 30);
        assert!(list_segments(dir.path()).unwrap().len() > 2);
        // The process goes away without closing anything (as a kill leaves it): what was
        // flushed is in the files already.
        std::mem::forget(log);
        reopen_holding(dir.path(), 400);
    }

    #[test]
    fn a_segment_cut_back_is_no_longer_mapped_and_writes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = collect(dir.path(), 0).unwrap();
        append_n(&log, 0, 10);
        log.flush().unwrap();
        log.truncate_from(6).unwrap();
        append_n(&log, 5, 3);
        log.flush().unwrap();
        drop(log);
        reopen_holding(dir.path(), 8);
    }

    #[test]
    fn a_clean_close_is_reopened_from_its_mark_and_the_mark_used_once() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = collect(dir.path(), 0).unwrap();
        append_n(&log, 0, 3);
        log.sync().unwrap();
        log.mark_clean().unwrap();
        drop(log);
        let (log, seen) = collect(dir.path(), 0).unwrap();
        assert_eq!(seen.len(), 3);
        assert!(!dir.path().join("CLEAN").exists(), "taken at open");
        // Written after the reopen, then a crash (no mark): everything is read again.
        append_n(&log, 3, 2);
        log.flush().unwrap();
        drop(log);
        let (_, seen) = collect(dir.path(), 0).unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[4].1, b"record 4");
    }

    #[test]
    fn a_mark_that_does_not_match_the_records_is_ignored() {
        let (dir, _) = three_records();
        // A mark short of the records' end: the segment is read in full all the same.
        clean::write(
            dir.path(),
            clean::Mark {
                first_seq: 1,
                len: 5,
            },
        )
        .unwrap();
        let (_, seen) = collect(dir.path(), 0).unwrap();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (log, seen) = collect(dir.path(), 0).unwrap();
        assert!(seen.is_empty());
        for round in 0..50 {
            append_n(&log, round * 20, 20);
            log.flush().unwrap();
        }
        log.sync().unwrap();
        assert!(
            list_segments(dir.path()).unwrap().len() > 1,
            "segments rotate"
        );
        drop(log);
        let (log, seen) = collect(dir.path(), 0).unwrap();
        assert_eq!(seen.len(), 1000);
        for (i, (seq, payload)) in seen.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            assert_eq!(payload, format!("record {i}").as_bytes());
        }
        assert_eq!(log.next_seq(), 1001);
    }

    #[test]
    fn replay_skips_what_the_checkpoint_holds_and_purge_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = collect(dir.path(), 0).unwrap();
        for _ in 0..40 {
            append_n(&log, 0, 25);
            log.flush().unwrap();
        }
        let before = list_segments(dir.path()).unwrap().len();
        log.purge_upto(600).unwrap();
        let after = list_segments(dir.path()).unwrap();
        assert!(after.len() < before);
        assert!(
            after[0].first_seq <= 601,
            "nothing above the checkpoint is purged"
        );
        drop(log);
        let (log, seen) = collect(dir.path(), 600).unwrap();
        let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (601..=1000).collect::<Vec<_>>());
        assert_eq!(log.next_seq(), 1001);
    }

    #[test]
    fn numbering_continues_above_the_checkpoint_when_every_segment_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = collect(dir.path(), 500).unwrap();
        assert_eq!(log.append(|_| {}), 501);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_writing_goes_on() {
        let (dir, path) = three_records();
        let record_len = |i: usize| record::HEADER_LEN + format!("record {i}").len();
        let data_end = (0..3).map(record_len).sum::<usize>();
        let full = std::fs::read(&path).unwrap();
        assert!(
            full[data_end..].iter().all(|b| *b == 0),
            "preallocated rest"
        );
        let data = full[..data_end].to_vec();
        // Every cut inside the last record is a torn tail, at the end of the file or followed by
        // the zeros of a preallocated segment.
        let last_start = data_end - record_len(2);
        for cut in last_start + 1..data_end {
            for zeros in [0usize, 500] {
                let mut torn = data[..cut].to_vec();
                torn.extend(std::iter::repeat_n(0u8, zeros));
                std::fs::write(&path, &torn).unwrap();
                let (log, seen) = collect(dir.path(), 0).unwrap();
                assert_eq!(seen.len(), 2, "cut at {cut}, {zeros} zeros");
                assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, last_start);
                drop(log);
            }
        }
        std::fs::write(&path, &full).unwrap();
        let (log, seen) = collect(dir.path(), 0).unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(log.append(|_| {}), 4);
        log.flush().unwrap();
        drop(log);
        let (_, seen) = collect(dir.path(), 0).unwrap();
        assert_eq!(
            seen.len(),
            4,
            "written on after the last record, over the zeros"
        );
    }

    #[test]
    fn damage_before_the_tail_stops_the_open_with_file_and_offset() {
        let (dir, path) = three_records();
        let mut bytes = std::fs::read(&path).unwrap();
        let second = record::HEADER_LEN + "record 0".len();
        bytes[second + record::HEADER_LEN] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = collect(dir.path(), 0).err().expect("damage is refused");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(&format!("offset {second}")), "{text}");
        // Nothing was cut: the file is as it was.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn truncation_removes_a_suffix_across_segments_and_numbering_resumes_there() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = collect(dir.path(), 0).unwrap();
        for _ in 0..40 {
            append_n(&log, 0, 25);
            log.flush().unwrap();
        }
        assert!(list_segments(dir.path()).unwrap().len() > 3);
        // A record still in the buffer goes too.
        log.append(|buf| buf.extend_from_slice(b"buffered"));
        log.truncate_from(137).unwrap();
        assert_eq!(log.next_seq(), 137);
        assert_eq!(log.append(|buf| buf.extend_from_slice(b"new 137")), 137);
        log.flush().unwrap();
        drop(log);
        let (log, seen) = collect(dir.path(), 0).unwrap();
        let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=137).collect::<Vec<_>>());
        assert_eq!(seen[135].1, b"record 10");
        assert_eq!(seen[136].1, b"new 137");
        // Truncating at or past the end changes nothing.
        log.truncate_from(200).unwrap();
        assert_eq!(log.next_seq(), 138);
        log.truncate_from(137).unwrap();
        drop(log);
        let (log, seen) = collect(dir.path(), 0).unwrap();
        assert_eq!(seen.last().map(|(s, _)| *s), Some(136));
        assert_eq!(log.next_seq(), 137);
    }

    #[test]
    fn truncation_at_a_segment_start_and_inside_the_first_record() {
        let (dir, _) = three_records();
        let (log, _) = collect(dir.path(), 0).unwrap();
        log.truncate_from(1).unwrap();
        assert_eq!(log.next_seq(), 1);
        append_n(&log, 7, 1);
        log.flush().unwrap();
        drop(log);
        let (_, seen) = collect(dir.path(), 0).unwrap();
        assert_eq!(seen, vec![(1, b"record 7".to_vec())]);
    }

    #[test]
    fn restart_at_drops_every_record_and_numbers_on_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = collect(dir.path(), 0).unwrap();
        for _ in 0..10 {
            append_n(&log, 0, 25);
            log.flush().unwrap();
        }
        assert!(log.restart_at(5).is_err(), "records up to 250 exist");
        log.restart_at(1000).unwrap();
        assert_eq!(log.append(|buf| buf.extend_from_slice(b"first")), 1000);
        log.flush().unwrap();
        drop(log);
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
        let (log, seen) = collect(dir.path(), 999).unwrap();
        assert_eq!(seen, vec![(1000, b"first".to_vec())]);
        assert_eq!(log.next_seq(), 1001);
        assert!(log.truncate_from(5).is_err(), "record 5 is gone");
    }

    #[test]
    fn unmirrored_bytes_are_handed_over_once_forgotten_when_synced_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 64 << 20, 0, |_, _| Ok(())).unwrap();
        append_n(&log, 0, 2);
        log.flush().unwrap();
        let mut out = Vec::new();
        log.take_unmirrored(&mut out).unwrap();
        assert!(out.is_empty(), "nothing is kept before a mirror attaches");
        log.attach_mirror();
        let start = log.active.lock().position();
        append_n(&log, 2, 3);
        assert_eq!(log.take_unmirrored(&mut out).unwrap(), Some(start));
        let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(out, bytes[start.1 as usize..start.1 as usize + out.len()]);
        assert_eq!(decode_count(&out), 3, "the three records, whole");
        assert_eq!(
            log.take_unmirrored(&mut out).unwrap().map(|_| out.len()),
            Some(0)
        );
        // An fdatasync covers what waited.
        append_n(&log, 5, 1);
        log.sync().unwrap();
        log.take_unmirrored(&mut out).unwrap();
        assert!(out.is_empty());
        // Past the bound the bytes are let go, and the caller is told to sync.
        let big = vec![7u8; 1 << 20];
        for _ in 0..(MAX_UNMIRRORED >> 20) + 1 {
            log.append(|buf| buf.extend_from_slice(&big));
            log.flush().unwrap();
        }
        assert_eq!(log.take_unmirrored(&mut out).unwrap(), None);
        append_n(&log, 0, 1);
        assert!(log.take_unmirrored(&mut out).unwrap().is_some());
        assert_eq!(decode_count(&out), 1);
    }

    /// Whether the page of `file` at `offset` is in the page cache (`mincore` on a mapping that
    /// is never touched, so asking does not bring it in).
    fn in_page_cache(file: &File, offset: u64) -> bool {
        // SAFETY: the mapping is only asked about with mincore, never read or written.
        let map = unsafe { memmap2::MmapOptions::new().map(file) }.unwrap();
        let page = offset as usize / 4096 * 4096;
        let mut resident = [0u8; 1];
        // SAFETY: the range is inside the mapping, which lives until the end of the function.
        let result = unsafe {
            libc::mincore(
                map.as_ptr().add(page) as *mut libc::c_void,
                4096,
                resident.as_mut_ptr(),
            )
        };
        assert_eq!(result, 0);
        resident[0] & 1 == 1
    }

    #[test]
    fn a_sync_brings_the_pages_ahead_of_the_writes_into_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 4 * WARM_AHEAD, 0, |_, _| Ok(())).unwrap();
        // Nothing written yet: no fault, so no read-ahead of the kernel's own.
        assert!(log.flushes_in_place(), "the segment is mapped");
        let file = log.active.lock().file.clone();
        let ahead = WARM_AHEAD - PAGE;
        if in_page_cache(&file, ahead) {
            // A file system whose allocation puts pages in memory (tmpfs): nothing to show.
            return;
        }
        log.sync().unwrap();
        assert!(in_page_cache(&file, ahead), "the pages ahead are cached");
        // A further sync with the writes barely moved leaves the kernel alone.
        let warmed = log.active.lock().warmed;
        append_n(&log, 100, 1);
        log.sync().unwrap();
        assert_eq!(log.active.lock().warmed, warmed);
    }

    #[test]
    fn a_log_written_with_write_calls_is_not_warmed_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open_with(
            dir.path(),
            4 * WARM_AHEAD,
            0,
            SegmentWrites::Calls,
            |_, _| Ok(()),
        )
        .unwrap();
        assert!(!log.flushes_in_place(), "a flush is a write(2)");
        append_n(&log, 0, 100);
        log.flush().unwrap();
        let file = log.active.lock().file.clone();
        let ahead = WARM_AHEAD - PAGE;
        if in_page_cache(&file, ahead) {
            // A file system whose allocation puts pages in memory (tmpfs): nothing to show.
            return;
        }
        log.sync().unwrap();
        // A write(2) zeroes a page at a time; a warm-up would zero a read-ahead window in one
        // stretch of kernel code, which the writers on the same core wait for.
        assert!(!in_page_cache(&file, ahead), "nothing was brought in ahead");
        assert_eq!(log.active.lock().warmed, 0);
    }

    fn decode_count(mut bytes: &[u8]) -> usize {
        let mut count = 0;
        while let Some(record::Decoded::Record { len, .. }) =
            (!bytes.is_empty()).then(|| record::decode(bytes))
        {
            bytes = &bytes[len..];
            count += 1;
        }
        count
    }

    fn sealed(log: &Log) -> u64 {
        log.counters.segments_sealed.load(Ordering::Relaxed)
    }

    fn inline(log: &Log) -> u64 {
        log.counters.rotations_inline.load(Ordering::Relaxed)
    }

    /// Appends and flushes records one at a time from "record `from`" until the log changes
    /// segment; returns the next record's number. The last record written is the new segment's
    /// first (its sequence is the returned number).
    fn write_until_change(log: &Log, from: u64) -> u64 {
        let before = sealed(log);
        let mut i = from;
        while sealed(log) == before {
            append_n(log, i, 1);
            log.flush().unwrap();
            i += 1;
        }
        i
    }

    /// A log in 4096-byte segments, its first segment past half full and synced, so that the next
    /// segment is made ahead; the number of records ("record 0" on).
    fn next_segment_ready(dir: &Path) -> (Log, u64) {
        let (log, _) = collect(dir, 0).unwrap();
        let mut n = 0;
        while log.active.lock().len < 2048 {
            append_n(&log, n, 1);
            log.flush().unwrap();
            n += 1;
        }
        assert!(!dir.join(NEXT_SEGMENT).exists(), "made only once half full");
        log.sync().unwrap();
        assert!(dir.join(NEXT_SEGMENT).exists(), "made ahead by the sync");
        (log, n)
    }

    /// Reopens the log in `dir` and checks that it holds records 1 to `n` as `append_n` wrote them.
    fn reopen_holding(dir: &Path, n: u64) -> Log {
        let (log, seen) = collect(dir, 0).unwrap();
        assert_records(&seen, n);
        log
    }

    fn assert_records(seen: &Replayed, n: u64) {
        assert_eq!(seen.len() as u64, n);
        for (i, (seq, payload)) in seen.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            assert_eq!(payload, format!("record {i}").as_bytes());
        }
    }

    #[test]
    fn a_change_to_a_segment_made_ahead_leaves_its_syncs_to_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (log, n) = next_segment_ready(dir.path());
        log.attach_mirror();
        let synced = log.synced_position();
        let mut n = write_until_change(&log, n);
        let first = n;
        assert_eq!(inline(&log), 0, "nothing done on the request path");
        // The new segment's records are in the file made ahead, not yet under its name.
        assert!(dir.path().join(NEXT_SEGMENT).exists());
        assert!(!segment_path(dir.path(), first).exists());
        assert_eq!(
            log.synced_position(),
            synced,
            "the sealed segment's tail is not counted as synced"
        );
        let mut out = Vec::new();
        assert_eq!(log.take_unmirrored(&mut out).unwrap(), None);
        append_n(&log, n, 1);
        n += 1;
        assert_eq!(
            log.take_unmirrored(&mut out).unwrap(),
            None,
            "the mirror takes nothing until a sync covers the change"
        );
        log.sync().unwrap();
        assert!(segment_path(dir.path(), first).exists());
        assert!(!dir.path().join(NEXT_SEGMENT).exists());
        assert_eq!(log.synced_position(), log.active.lock().position());
        let end = log.active.lock().position();
        append_n(&log, n, 1);
        n += 1;
        assert_eq!(log.take_unmirrored(&mut out).unwrap(), Some(end));
        assert_eq!((end.0, decode_count(&out)), (first, 1));
        log.sync().unwrap();
        drop(log);
        reopen_holding(dir.path(), n);
    }

    #[test]
    fn records_come_back_across_many_changes_with_and_without_segments_made_ahead() {
        for sync_every in [1, 3, 1000] {
            let dir = tempfile::tempdir().unwrap();
            let (log, _) = collect(dir.path(), 0).unwrap();
            for round in 0..200 {
                append_n(&log, round * 10, 10);
                log.flush().unwrap();
                if round.is_multiple_of(sync_every) {
                    log.sync().unwrap();
                }
            }
            log.sync().unwrap();
            let (changes, inline) = (sealed(&log), inline(&log));
            assert!(changes > 10, "{changes} changes");
            match sync_every {
                1 => assert_eq!(inline, 0, "a sync between any two changes"),
                1000 => assert_eq!(inline, changes, "never a segment made ahead"),
                _ => assert!(inline < changes, "{inline} of {changes} inline"),
            }
            drop(log);
            let log = reopen_holding(dir.path(), 2000);
            assert_eq!(log.next_seq(), 2001);
        }
    }

    #[test]
    fn a_crash_after_the_change_keeps_the_records_of_the_segment_made_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let (log, n) = next_segment_ready(dir.path());
        let first = write_until_change(&log, n);
        append_n(&log, first, 5);
        log.flush().unwrap();
        // Killed before any sync: the page cache holds everything, under the names of the moment.
        drop(log);
        let log = reopen_holding(dir.path(), first + 5);
        assert!(segment_path(dir.path(), first).exists(), "taken on");
        assert!(!dir.path().join(NEXT_SEGMENT).exists());
        append_n(&log, first + 5, 1);
        log.flush().unwrap();
        drop(log);
        reopen_holding(dir.path(), first + 6);
    }

    #[test]
    fn a_power_cut_after_the_change_loses_only_what_no_sync_covered() {
        let dir = tempfile::tempdir().unwrap();
        let (log, synced_records) = next_segment_ready(dir.path());
        let (segment, synced_len) = log.synced_position();
        let first = write_until_change(&log, synced_records);
        append_n(&log, first, 5);
        log.flush().unwrap();
        drop(log);
        // The sealed segment's tail was never fdatasynced: the disk lost it.
        let path = segment_path(dir.path(), segment);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[synced_len as usize..].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let log = reopen_holding(dir.path(), synced_records);
        assert!(
            !dir.path().join(NEXT_SEGMENT).exists(),
            "records after a gap are dropped, never read"
        );
        assert!(!segment_path(dir.path(), first).exists());
        assert_eq!(log.next_seq(), synced_records + 1);
        append_n(&log, synced_records, 1);
        log.flush().unwrap();
        drop(log);
        reopen_holding(dir.path(), synced_records + 1);
    }

    #[test]
    fn a_segment_made_ahead_is_used_after_a_clean_close_and_removed_after_a_crash() {
        for clean in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (log, n) = next_segment_ready(dir.path());
            if clean {
                log.mark_clean().unwrap();
            }
            drop(log);
            let log = reopen_holding(dir.path(), n);
            assert_eq!(dir.path().join(NEXT_SEGMENT).exists(), clean);
            let n = write_until_change(&log, n);
            assert_eq!(inline(&log), u64::from(!clean), "clean: {clean}");
            log.sync().unwrap();
            drop(log);
            reopen_holding(dir.path(), n);
        }
    }

    #[test]
    fn a_leftover_next_segment_that_does_not_continue_the_log_is_never_replayed() {
        let (dir, _) = three_records();
        let mut stray = Vec::new();
        record::encode(&mut stray, 9, |buf| buf.extend_from_slice(b"never synced"));
        stray.resize(4096, 0);
        std::fs::write(dir.path().join(NEXT_SEGMENT), &stray).unwrap();
        let log = reopen_holding(dir.path(), 3);
        assert_eq!(log.next_seq(), 4);
        assert!(!dir.path().join(NEXT_SEGMENT).exists());
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_second_change_before_a_sync_completes_the_first_inline() {
        let dir = tempfile::tempdir().unwrap();
        let (log, n) = next_segment_ready(dir.path());
        let first = write_until_change(&log, n);
        let synced = log.synced_position();
        let second = write_until_change(&log, first);
        assert_eq!(inline(&log), 1);
        assert!(segment_path(dir.path(), first).exists(), "renamed inline");
        assert!(segment_path(dir.path(), second).exists());
        assert!(
            log.synced_position() > synced,
            "synced up to the second segment"
        );
        assert_eq!(log.synced_position().0, first);
        drop(log);
        reopen_holding(dir.path(), second);
    }

    #[test]
    fn truncation_and_restart_complete_a_change_no_sync_covered() {
        let dir = tempfile::tempdir().unwrap();
        let (log, n) = next_segment_ready(dir.path());
        let first = write_until_change(&log, n);
        append_n(&log, first, 3);
        log.truncate_from(first + 2).unwrap();
        drop(log);
        let log = reopen_holding(dir.path(), first + 1);
        assert!(segment_path(dir.path(), first).exists());
        drop(log);

        let dir = tempfile::tempdir().unwrap();
        let (log, n) = next_segment_ready(dir.path());
        write_until_change(&log, n);
        log.restart_at(5000).unwrap();
        log.append(|buf| buf.extend_from_slice(b"first"));
        log.flush().unwrap();
        drop(log);
        let (_, seen) = collect(dir.path(), 4999).unwrap();
        assert_eq!(seen, vec![(5000, b"first".to_vec())]);
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_missing_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = collect(dir.path(), 0).unwrap();
        for _ in 0..30 {
            append_n(&log, 0, 25);
            log.flush().unwrap();
        }
        drop(log);
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 3);
        std::fs::remove_file(&segments[1].path).unwrap();
        let err = collect(dir.path(), 0).err().expect("gap is refused");
        assert!(err.to_string().contains("records are missing"), "{err}");
        // A checkpoint above the first segment that is missing its start is refused as well.
        std::fs::remove_file(&segments[0].path).unwrap();
        assert!(collect(dir.path(), 0).is_err());
    }
}
