//! openraft's log storage on the engine's segmented log.
//!
//! Raft entry `i` is log record `i + 1` (the log numbers from 1, Raft from 0). The newest
//! entries are also kept in memory ([`Window`]: every entry not yet applied, and applied ones up
//! to a byte budget), so replication and the apply read memory; an older entry (for a follower
//! that lags behind, or a restart's apply) is read back from the log's files.
//!
//! Appends go to the log's buffer at once (so they are readable); one flusher thread then
//! writes them out and reports them persisted, in order: made durable if any entry of the
//! group asks for it (Sync writes, membership, leader blanks), else with the `write(2)` alone
//! (Async writes: committed on a majority, in its OS buffers). One durable write covers every
//! append that arrived while the previous one ran: group commit. A follower (the vote saved is
//! not this node's) makes its append durable on the caller's thread instead when nothing waits
//! at the flusher: its core waits for the flush before answering anyway, and the hand-off to
//! the flusher and back costs two wake-ups per append.
//!
//! Durable means written a second time into the log's direct mirror
//! ([`BlockingMirror`]: one `O_DIRECT` + `RWF_DSYNC` write of the group's bytes), as the
//! engine's Sync writes are, or, where the mirror cannot work (no io_uring, no `O_DIRECT`),
//! the log's fdatasync. Opening the log first writes the mirror's fragments back into it. A
//! follower that cuts its log back first syncs it and starts a new mirror generation, so a
//! fragment of the entries it cut is never written back.
//!
//! The vote and the last purged id live in a small state file ([`crate::state_file`]). The
//! committed index is not stored: the state machine stores its applied position atomically with
//! its effects, which is what a restart needs; what is committed beyond it is learnt again from
//! the leader.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{EntryPayload, LogState, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use polykv_engine::log::mirror::{self, BlockingMirror};
use polykv_engine::log::{Log, ReadCursor, SegmentWrites, MAX_PAYLOAD};

use crate::state_file::{HardState, StateFile};
use crate::timing::{self, Hop};
use crate::window::{Window, WINDOW_BYTES};
use crate::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

const ENTRY_FORMAT: u8 = 1;

fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    out.push(ENTRY_FORMAT);
    // Serializing plain data into a Vec cannot fail.
    if let Ok(extended) = postcard::to_extend(entry, std::mem::take(out)) {
        *out = extended;
    }
}

fn decode_entry(raw: &[u8]) -> Result<Entry, String> {
    match raw.split_first() {
        Some((&ENTRY_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        Some((format, _)) => Err(format!(
            "raft entry format {format} is newer than this server"
        )),
        None => Err("empty raft entry".into()),
    }
}

/// Whether an entry must be on stable storage before it counts.
fn needs_sync(entry: &Entry) -> bool {
    match &entry.payload {
        EntryPayload::Normal(request) => request.sync,
        EntryPayload::Blank | EntryPayload::Membership(_) => true,
    }
}

/// What the flusher calls once a group is written (and durable when asked).
type Done = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

struct Flush {
    sync: bool,
    since: Instant,
    done: Done,
}

/// How the flusher makes a group durable.
struct Durability {
    log: Arc<Log>,
    /// `None` where the mirror cannot work: fdatasync then.
    mirror: Mutex<Option<BlockingMirror>>,
    direct_writes: AtomicU64,
}

impl Durability {
    fn make_durable(&self) -> Result<(), polykv_engine::StoreError> {
        let mut mirror = self.mirror.lock();
        match mirror.as_mut() {
            Some(mirror) => {
                let result = mirror.make_durable();
                self.direct_writes.store(mirror.writes(), Ordering::Relaxed);
                result
            }
            None => self.log.sync(),
        }
    }

    /// Runs `cut` (which cuts the log back) after a new mirror generation, holding the mirror
    /// so that nothing is made durable in between.
    fn cut_back(
        &self,
        cut: impl FnOnce() -> Result<(), polykv_engine::StoreError>,
    ) -> Result<(), polykv_engine::StoreError> {
        let mut mirror = self.mirror.lock();
        if let Some(mirror) = mirror.as_mut() {
            mirror.new_generation()?;
        }
        cut()
    }
}

/// Whether the Raft log uses the direct mirror: `direct_sync` (the engine's setting), unless
/// `POLYKV_CLUSTER_LOG_MIRROR=0` turns it off (for measurements).
fn mirror_wanted(direct_sync: bool) -> bool {
    direct_sync && crate::tuning::switch("POLYKV_CLUSTER_LOG_MIRROR")
}

struct Shared {
    log: Arc<Log>,
    durability: Arc<Durability>,
    /// This node's id.
    me: NodeId,
    /// Whether the vote last saved is this node's own (a candidate or a leader): its appends
    /// are then its own entries, which the core replicates while they are flushed.
    own_vote: AtomicBool,
    /// Groups handed to the flusher and not yet reported.
    pending: Arc<AtomicUsize>,
    /// Whether a follower's append may be made durable on the caller's thread
    /// (`POLYKV_CLUSTER_INLINE_FLUSH=0` turns it off, for measurements).
    inline: bool,
    window: Mutex<Window>,
    /// Where the last read of entries from the files stopped: replication reads one range
    /// after the next.
    read_cursor: Mutex<ReadCursor>,
    encoded: Mutex<Vec<u8>>,
    hard: Mutex<HardState>,
    state_file: StateFile,
    /// Applied index + 1 (0: nothing), published by the state machine.
    applied: Arc<AtomicU64>,
}

/// The Raft log storage (and, cloned, its reader).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    flusher: mpsc::Sender<Flush>,
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl LogStore {
    /// Opens the Raft log of node `me` in `dir` (segments and the state file). `applied` is the
    /// state machine's applied index + 1: entries at or below it are never truncated. The log
    /// is made durable through its direct mirror (where this machine allows one) unless
    /// `direct_sync` is false: then by fdatasync.
    pub fn open(
        me: NodeId,
        dir: &Path,
        segment_bytes: u64,
        applied: Arc<AtomicU64>,
        direct_sync: bool,
    ) -> Result<LogStore, StorageError> {
        let (state_file, hard) = StateFile::open(dir).map_err(io_err)?;
        let after = hard.last_purged.map_or(0, |id| id.index + 1);
        let mut window = Window::new(WINDOW_BYTES);
        let log_dir = dir.join("log");
        // Fragments of the log that only its direct mirror holds go back into the log first.
        let generation = mirror::recover(&log_dir).map_err(io_err)?;
        // Written with write(2), not through a mapped segment: its groups are flushed off the
        // request path (the flusher thread, or a follower's core before it answers), where a
        // system call per group costs nothing a client waits for, and an A/B of three nodes
        // showed the mapped Raft log no cheaper (docs/performance.md, 2026-12-02).
        let writes = SegmentWrites::Calls;
        let log = Log::open_with(&log_dir, segment_bytes, after, writes, |seq, payload| {
            let entry = decode_entry(payload)
                .map_err(|why| polykv_engine::StoreError::Corrupt(format!("raft entry: {why}")))?;
            if entry.log_id.index + 1 != seq {
                return Err(polykv_engine::StoreError::Corrupt(format!(
                    "record {seq} holds raft entry {}",
                    entry.log_id.index
                )));
            }
            window.push(entry, payload.len());
            Ok(())
        })
        .map_err(io_err)?;
        let log = Arc::new(log);
        let mirror = if mirror_wanted(direct_sync) {
            BlockingMirror::start(&log_dir, generation, log.clone())
        } else {
            None
        };
        let durability = Arc::new(Durability {
            log: log.clone(),
            mirror: Mutex::new(mirror),
            direct_writes: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel::<Flush>();
        let flush_durability = durability.clone();
        let pending = Arc::new(AtomicUsize::new(0));
        let flush_pending = pending.clone();
        std::thread::Builder::new()
            .name("polykv-raft-log".into())
            .spawn(move || run_flusher(&flush_durability, &flush_pending, &rx))
            .map_err(io_err)?;
        let own_vote = AtomicBool::new(is_own(me, hard.vote.as_ref()));
        Ok(LogStore {
            shared: Arc::new(Shared {
                log,
                durability,
                me,
                own_vote,
                pending,
                inline: crate::tuning::switch("POLYKV_CLUSTER_INLINE_FLUSH"),
                window: Mutex::new(window),
                read_cursor: Mutex::new(ReadCursor::default()),
                encoded: Mutex::new(Vec::new()),
                hard: Mutex::new(hard),
                state_file,
                applied,
            }),
            flusher: tx,
        })
    }

    /// The id of the cluster this log belongs to, if it has accepted any entry.
    pub fn cluster_id(&self) -> Option<LogId> {
        self.shared.hard.lock().cluster
    }

    /// Whether Sync groups are made durable through the direct mirror (else fdatasync).
    pub fn uses_mirror(&self) -> bool {
        self.shared.durability.mirror.lock().is_some()
    }

    /// Direct writes into the mirror so far.
    pub fn direct_writes(&self) -> u64 {
        self.shared.durability.direct_writes.load(Ordering::Relaxed)
    }

    /// fdatasyncs of the log so far.
    pub fn log_syncs(&self) -> u64 {
        self.shared.log.counters().syncs.load(Ordering::Relaxed)
    }

    fn save_hard(&self, change: impl FnOnce(&mut HardState)) -> Result<(), StorageError> {
        let mut hard = self.shared.hard.lock();
        let mut next = hard.clone();
        change(&mut next);
        self.shared.state_file.save(&next).map_err(io_err)?;
        *hard = next;
        Ok(())
    }
}

/// Writes (and makes durable when asked) what was appended, then reports each group persisted
/// in order.
fn run_flusher(durability: &Durability, pending: &AtomicUsize, rx: &mpsc::Receiver<Flush>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let sync = group.iter().any(|f| f.sync);
        let flushing = Instant::now();
        let result = if sync {
            durability.make_durable()
        } else {
            durability.log.flush()
        };
        timing::record(Hop::LogFlush, flushing);
        for flush in group {
            timing::record(Hop::LogAppend, flush.since);
            (flush.done)(
                result
                    .clone()
                    .map_err(|e| std::io::Error::other(e.to_string())),
            );
            pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Whether `vote` is node `me`'s own.
fn is_own(me: NodeId, vote: Option<&Vote>) -> bool {
    vote.is_some_and(|v| v.leader_id().voted_for() == Some(me))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        self.read_entries(start, end)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.shared.hard.lock().last_purged;
        let last = self.shared.window.lock().last_log_id();
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.save_hard(|hard| hard.vote = Some(vote))
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        self.shared
            .own_vote
            .store(is_own(self.shared.me, Some(&vote)), Ordering::Release);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.shared.hard.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.append_then(entries, move |result| callback.log_io_completed(result))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.truncate_from(log_id)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Recorded first: a crash after it opens the log past the purged records.
        self.save_hard(|hard| hard.last_purged = Some(log_id))?;
        self.shared.window.lock().purge_upto(log_id.index);
        self.shared.log.purge_upto(log_id.index + 1).map_err(io_err)
    }
}

impl LogStore {
    /// Appends `entries` (which must continue the log) and calls `done` once they are written,
    /// and durable if any asks for it, in the order of the calls: what
    /// [`RaftLogStorage::append`] does with openraft's callback.
    pub fn append_then<I>(
        &self,
        entries: I,
        done: impl FnOnce(Result<(), std::io::Error>) + Send + 'static,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let since = Instant::now();
        let mut sync = false;
        let mut first_cluster_id = None;
        {
            let mut window = self.shared.window.lock();
            for entry in entries {
                let seq = entry.log_id.index + 1;
                let next = self.shared.log.next_seq();
                if seq != next {
                    // Only after a snapshot newer than the whole log: everything below is
                    // covered by the purge openraft recorded.
                    let purged = self.shared.hard.lock().last_purged.map_or(0, |id| id.index);
                    if !(window.is_empty() && seq > next && purged + 1 == entry.log_id.index) {
                        return Err(io_err(Message(format!(
                            "raft entry {} does not follow the log (next record {next})",
                            entry.log_id.index
                        ))));
                    }
                    let log = &self.shared.log;
                    self.shared
                        .durability
                        .cut_back(|| log.restart_at(seq))
                        .map_err(io_err)?;
                }
                // One buffer for every append, reused: no allocation per entry.
                let mut encoded = self.shared.encoded.lock();
                encoded.clear();
                encode_entry(&entry, &mut encoded);
                if encoded.len() > MAX_PAYLOAD {
                    return Err(io_err(Message(format!(
                        "raft entry {} is {} bytes, over the log's limit",
                        entry.log_id.index,
                        encoded.len()
                    ))));
                }
                self.shared
                    .log
                    .append(|buf| buf.extend_from_slice(&encoded));
                sync |= needs_sync(&entry);
                if entry.log_id.index == 0 {
                    first_cluster_id = Some(entry.log_id);
                }
                window.push(entry, encoded.len());
            }
            window.evict(self.shared.applied.load(Ordering::Acquire));
        }
        if let Some(id) = first_cluster_id {
            if self.cluster_id().is_none() {
                self.save_hard(|hard| hard.cluster = Some(id))?;
            }
        }
        // A follower's append (the entries of another node's leadership) is made durable here,
        // on the core's thread, when nothing waits at the flusher (so that groups are still
        // reported in order): the core waits for it before it answers anyway, and the hand-off
        // to the flusher thread and back costs two wake-ups. A leader's own appends go to the
        // flusher, so that the core replicates them while they are flushed.
        let shared = &self.shared;
        if shared.inline
            && !shared.own_vote.load(Ordering::Acquire)
            && shared.pending.load(Ordering::Acquire) == 0
        {
            let flushing = Instant::now();
            let result = if sync {
                shared.durability.make_durable()
            } else {
                shared.log.flush()
            };
            timing::record(Hop::LogFlush, flushing);
            timing::record(Hop::LogAppend, since);
            done(result.map_err(|e| std::io::Error::other(e.to_string())));
            return Ok(());
        }
        shared.pending.fetch_add(1, Ordering::AcqRel);
        self.flusher
            .send(Flush {
                sync,
                since,
                done: Box::new(done),
            })
            .map_err(|_| io_err(Message("the raft log flusher stopped".into())))
    }

    /// Removes the entries from `log_id` on (a follower's conflicting suffix): what
    /// [`RaftLogStorage::truncate`] does.
    pub fn truncate_from(&self, log_id: LogId) -> Result<(), StorageError> {
        // Entry 0 is the membership the cluster was founded with: a leader whose log differs
        // there leads another cluster, and this node's data is not to be thrown away for it.
        if log_id.index == 0 && self.cluster_id().is_some() {
            return Err(io_err(Message(
                "refusing to replace this node's log from its first entry: \
                 the leader belongs to another cluster"
                    .into(),
            )));
        }
        // An applied entry was committed, and a leader of the same cluster never asks to
        // replace a committed entry. One that does leads another cluster whose first entries
        // happen to carry the same ids (every cluster's entry 0 does): its data must not
        // replace this node's.
        let applied = self.shared.applied.load(Ordering::SeqCst);
        if log_id.index < applied {
            return Err(io_err(Message(format!(
                "refusing to replace applied raft entry {} (applied up to {}): \
                 the leader belongs to another cluster",
                log_id.index,
                applied - 1
            ))));
        }
        let log = &self.shared.log;
        self.shared
            .durability
            .cut_back(|| log.truncate_from(log_id.index + 1))
            .map_err(io_err)?;
        self.shared.window.lock().cut_from(log_id.index);
        Ok(())
    }

    /// Lets applied entries beyond the window's budget go from memory: after the state
    /// machine has opened (it publishes the applied index), so that a restarted node does not
    /// keep its whole log in memory.
    pub fn trim(&self) {
        let applied = self.shared.applied.load(Ordering::Acquire);
        self.shared.window.lock().evict(applied);
    }

    /// Changes how many bytes of applied entries stay in memory (at most), and lets go of what
    /// is over it now.
    pub fn set_window_bytes(&self, bytes: usize) {
        self.shared.window.lock().set_budget(bytes);
        self.trim();
    }

    /// The entries kept in memory, and their encoded bytes.
    pub fn in_memory(&self) -> (usize, usize) {
        let window = self.shared.window.lock();
        (window.len(), window.bytes())
    }

    /// Copies of the entries in `start..end` that the log holds: those below the window from
    /// the files (written out first if still buffered), the rest from memory.
    fn read_entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        // Purged entries may still be in a segment that holds later ones too.
        let purged = self.shared.hard.lock().last_purged;
        let mut next = start.max(purged.map_or(0, |id| id.index + 1));
        let mut read = Vec::new();
        loop {
            let window = self.shared.window.lock();
            let first_kept = window.first_index().unwrap_or(u64::MAX);
            if next >= first_kept || next >= end {
                read.extend(window.copy(next..end));
                return Ok(read);
            }
            drop(window);
            // Entries that left memory were applied, so appended; the flush writes any still
            // in the buffer (a leader applies what a majority of followers holds).
            self.shared.log.flush().map_err(read_err)?;
            let before = read.len();
            let mut cursor = self.shared.read_cursor.lock();
            self.shared
                .log
                .read_range(
                    next + 1,
                    end.min(first_kept).saturating_add(1),
                    &mut cursor,
                    |seq, payload| {
                        let entry = decode_entry(payload).map_err(|why| {
                            polykv_engine::StoreError::Corrupt(format!("raft entry: {why}"))
                        })?;
                        if entry.log_id.index + 1 != seq {
                            return Err(polykv_engine::StoreError::Corrupt(format!(
                                "record {seq} holds raft entry {}",
                                entry.log_id.index
                            )));
                        }
                        read.push(entry);
                        Ok(())
                    },
                )
                .map_err(read_err)?;
            drop(cursor);
            // On from where the files' entries stop; memory then holds the rest, unless the
            // window moved on meanwhile (then round again). None found: purged meanwhile,
            // and the log holds entries from the window's first on.
            next = match read[before..].last() {
                Some(last) => last.log_id.index + 1,
                None => first_kept,
            };
        }
    }
}
