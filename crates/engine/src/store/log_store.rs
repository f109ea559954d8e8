//! The log-first store: every write batch goes to the engine's append-only log and an in-memory
//! overlay; a background checkpointer moves the overlay into the durable ordered store underneath
//! (fjall) in large sorted runs, and then purges the log behind it.
//!
//! ```text
//! write_batch ─▶ log buffer (one write(2) per group flush, fdatasync per group commit)
//!             └▶ active memtable (hash map per space) ──seal──▶ frozen memtables (sorted once)
//!                                                              ──merge, ingest──▶ inner store
//! reads: active memtable, then frozen ones (newest first), then the inner store
//! ```
//!
//! The log carries the *effects* of each engine `apply` (the batch of puts and deletes it
//! produced), not the commands: replaying an effect is idempotent, so a checkpoint need not be
//! exact (replaying a record the store already holds rewrites the same value), and recovery is
//! the inner store plus the log records above the checkpoint mark.
//!
//! Entries the store has not taken yet live in the overlay and are never evicted; the cache in
//! front of the engine may evict them freely. When checkpoints fall behind, writers wait (a
//! bounded backlog in bytes) rather than let memory grow.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use super::overlay::{empty_range, merge, Memtable, Overlay, Run};
use super::{BatchOp, PersistMode, SpaceId, Store};
use crate::error::StoreError;
use crate::log::{mirror, Log, SegmentWrites, MAX_PAYLOAD};

/// See [`LogStoreConfig::checkpoint_bytes`].
pub const LOG_BYTES_PER_CHECKPOINT: usize = 4;

/// Settings of the log and the checkpoints.
#[derive(Debug, Clone)]
pub struct LogStoreConfig {
    /// A checkpoint starts when the active memtable holds this many bytes, or when the log
    /// has taken [`LOG_BYTES_PER_CHECKPOINT`] times as many since the last one (a small set of
    /// keys written over and over never fills the memtable, but its log tail must stay short
    /// for a restart to replay).
    pub checkpoint_bytes: usize,
    /// ... or when this much time has passed with anything in it.
    pub checkpoint_interval: Duration,
    /// Writers wait while the overlay (written but not yet checkpointed) holds more than this.
    pub max_backlog_bytes: usize,
    /// Size at which a log segment is sealed.
    pub segment_bytes: u64,
    /// Whether Sync writes are made durable through the log's direct mirror
    /// ([`crate::log::mirror`]) rather than an fdatasync of the log.
    pub direct_sync: bool,
    /// Whether the log's active segment is mapped, so that a flush is a copy rather than a
    /// `write(2)` ([`crate::log::SegmentWrites`]; `POLYKV_LOG_MAP=0` turns it off too). Off by default: on a
    /// machine with cheap system calls one `write(2)` per batch of ready writers costs less
    /// than the mapping's page faults and zeroing, and its slowest requests are half as slow
    /// (docs/performance.md, seventeenth session).
    pub mapped_log: bool,
}

impl Default for LogStoreConfig {
    fn default() -> Self {
        LogStoreConfig {
            checkpoint_bytes: 32 << 20,
            checkpoint_interval: Duration::from_secs(30),
            max_backlog_bytes: 256 << 20,
            segment_bytes: crate::log::DEFAULT_SEGMENT_BYTES,
            direct_sync: true,
            mapped_log: false,
        }
    }
}

/// Counters of the log-first store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogStoreStats {
    pub checkpoints: u64,
    pub checkpoint_seconds_total: f64,
    /// Bytes in the overlay: written, not yet in the store.
    pub backlog_bytes: u64,
    /// Writes that waited for a checkpoint because the backlog was full.
    pub write_stalls: u64,
    pub log_writes: u64,
    /// Flushes that copied into the mapped segment instead of a `write(2)`.
    pub log_copies: u64,
    pub log_bytes_written: u64,
    pub log_syncs: u64,
    pub log_disk_bytes: u64,
    /// Log segments sealed, and the changes of segment done on the request path (no segment
    /// made ahead, or the change before still waiting for its sync).
    pub log_segments_sealed: u64,
    pub log_rotations_inline: u64,
    /// Sequence of the last record the store holds.
    pub checkpoint_seq: u64,
}

/// A scan sorts the active memtable's entries of a space in place up to this many; above it, it
/// seals the memtable first.
const SORT_IN_PLACE: usize = 4096;

/// Record kinds in the log's payload.
const RECORD_BATCH: u8 = 1;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// The space in the inner store that holds the log's own metadata.
const META_SPACE: &str = "polykv.log";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const SPACE_PREFIX: &[u8] = b"space:";

/// The mapping of this store's space ids (stable across restarts: they are written in the log)
/// to the inner store's.
#[derive(Default)]
struct Spaces {
    names: Vec<String>,
    inner: Vec<SpaceId>,
}

#[derive(Default)]
struct Control {
    requested: bool,
    stop: bool,
    /// Stop without a final checkpoint (see [`LogStore::halt`]).
    halt: bool,
}

struct Shared {
    inner: Arc<dyn Store>,
    log: Arc<Log>,
    log_dir: PathBuf,
    /// The generation a mirror of the log starts with ([`crate::log::mirror`]).
    mirror_generation: u32,
    overlay: RwLock<Overlay>,
    spaces: RwLock<Spaces>,
    meta: SpaceId,
    config: LogStoreConfig,
    /// Overlay bytes, active and sealed (read without the overlay lock).
    backlog: AtomicUsize,
    control: Mutex<Control>,
    wake: Condvar,
    /// Signalled after each checkpoint, for writers waiting on a full backlog.
    drained: Condvar,
    drained_lock: Mutex<()>,
    /// Held for the whole of a checkpoint: one at a time.
    checkpointing: Mutex<()>,
    /// Set when a checkpoint failed (or the store was halted): later writes fail with it.
    failed: Mutex<Option<StoreError>>,
    has_failed: AtomicBool,
    checkpoints: AtomicU64,
    checkpoint_nanos: AtomicU64,
    checkpoint_seq: AtomicU64,
    write_stalls: AtomicU64,
}

/// A [`Store`] whose durability is its own log, over an inner store that receives checkpoints.
pub struct LogStore {
    shared: Arc<Shared>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

fn corrupt(why: &str) -> StoreError {
    StoreError::Corrupt(why.to_string())
}

fn op_parts(op: &BatchOp) -> (SpaceId, &Bytes, Option<&Bytes>) {
    match op {
        BatchOp::Put { space, key, value } => (*space, key, Some(value)),
        BatchOp::Delete { space, key } => (*space, key, None),
    }
}

/// Appends the payload of one batch record.
fn encode_batch(ops: &[BatchOp], out: &mut Vec<u8>) {
    out.push(RECORD_BATCH);
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        let (space, key, value) = op_parts(op);
        out.push(if value.is_some() { OP_PUT } else { OP_DELETE });
        out.extend_from_slice(&space.to_le_bytes());
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        if let Some(value) = value {
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
    }
}

/// A reader of a payload that fails, instead of panicking, on anything short or out of place.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("batch record ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut out = [0u8; 4];
        out.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_le_bytes(out))
    }
}

type DecodedOp = (SpaceId, Bytes, Option<Bytes>);

/// Decodes a batch record's payload.
fn decode_batch(payload: &[u8]) -> Result<Vec<DecodedOp>, StoreError> {
    let mut reader = Reader(payload);
    if reader.u8()? != RECORD_BATCH {
        return Err(corrupt("unknown record kind"));
    }
    let count = reader.u32()? as usize;
    // Each op takes at least 9 bytes: a count beyond that is damage, refused before allocating.
    if count > payload.len() / 9 {
        return Err(corrupt("batch record counts more ops than it holds"));
    }
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let tag = reader.u8()?;
        let space = reader.u32()?;
        let key_len = reader.u32()? as usize;
        let key = Bytes::copy_from_slice(reader.bytes(key_len)?);
        let value = match tag {
            OP_PUT => {
                let len = reader.u32()? as usize;
                Some(Bytes::copy_from_slice(reader.bytes(len)?))
            }
            OP_DELETE => None,
            _ => return Err(corrupt("unknown op in batch record")),
        };
        ops.push((space, key, value));
    }
    if !reader.0.is_empty() {
        return Err(corrupt("batch record has trailing bytes"));
    }
    Ok(ops)
}

fn space_key(id: SpaceId) -> Bytes {
    let mut key = SPACE_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key.into()
}

impl LogStore {
    /// Opens the log in `log_dir` over `inner`: reads the checkpoint mark and the space table
    /// from `inner`, replays the log above the mark into the overlay, and starts the
    /// checkpointer.
    pub fn open(
        inner: Arc<dyn Store>,
        log_dir: &Path,
        config: LogStoreConfig,
    ) -> Result<LogStore, StoreError> {
        let meta = inner.open_space(META_SPACE)?;
        let spaces = load_spaces(inner.as_ref(), meta)?;
        let checkpoint = match inner.get(meta, CHECKPOINT_KEY)? {
            Some(raw) => u64::from_be_bytes(
                raw.as_ref()
                    .try_into()
                    .map_err(|_| corrupt("checkpoint mark is not 8 bytes"))?,
            ),
            None => 0,
        };
        let known = spaces.names.len();
        let mut active = Memtable::default();
        let started = Instant::now();
        let mut replayed = 0u64;
        // Fragments of the log that only its direct mirror holds go back into the log first.
        let mirror_generation = mirror::recover(log_dir)?;
        let writes = if config.mapped_log {
            SegmentWrites::Mapped
        } else {
            SegmentWrites::Calls
        };
        let log = Log::open_with(
            log_dir,
            config.segment_bytes,
            checkpoint,
            writes,
            |_, payload| {
                for (space, key, value) in decode_batch(payload)? {
                    if space as usize >= known {
                        return Err(corrupt("batch record names an unknown space"));
                    }
                    active.apply(space, key, value);
                }
                replayed += 1;
                Ok(())
            },
        )?;
        active.last_seq = log.next_seq() - 1;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                checkpoint,
                millis = started.elapsed().as_millis() as u64,
                "replayed the log above the last checkpoint"
            );
        }
        let backlog = active.bytes;
        let shared = Arc::new(Shared {
            inner,
            log: Arc::new(log),
            log_dir: log_dir.to_path_buf(),
            mirror_generation,
            overlay: RwLock::new(Overlay {
                active,
                sealed: Vec::new(),
            }),
            spaces: RwLock::new(spaces),
            meta,
            config,
            backlog: AtomicUsize::new(backlog),
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            drained: Condvar::new(),
            drained_lock: Mutex::new(()),
            checkpointing: Mutex::new(()),
            failed: Mutex::new(None),
            has_failed: AtomicBool::new(false),
            checkpoints: AtomicU64::new(0),
            checkpoint_nanos: AtomicU64::new(0),
            checkpoint_seq: AtomicU64::new(checkpoint),
            write_stalls: AtomicU64::new(0),
        });
        let worker = shared.clone();
        let checkpointer = std::thread::Builder::new()
            .name("polykv-checkpoint".into())
            .spawn(move || worker.run_checkpointer())
            .map_err(|e| StoreError::io("start the checkpoint thread", e))?;
        Ok(LogStore {
            shared,
            checkpointer: Mutex::new(Some(checkpointer)),
        })
    }

    /// Runs a checkpoint now, of everything written so far (tests and shutdown).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.shared.checkpoint()
    }

    pub fn stats(&self) -> LogStoreStats {
        let s = &self.shared;
        let log = s.log.counters();
        LogStoreStats {
            checkpoints: s.checkpoints.load(Ordering::Relaxed),
            checkpoint_seconds_total: s.checkpoint_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            backlog_bytes: s.backlog.load(Ordering::Relaxed) as u64,
            write_stalls: s.write_stalls.load(Ordering::Relaxed),
            log_writes: log.writes.load(Ordering::Relaxed),
            log_copies: log.copies.load(Ordering::Relaxed),
            log_bytes_written: log.bytes_written.load(Ordering::Relaxed),
            log_syncs: log.syncs.load(Ordering::Relaxed),
            log_disk_bytes: s.log.disk_bytes(),
            log_segments_sealed: log.segments_sealed.load(Ordering::Relaxed),
            log_rotations_inline: log.rotations_inline.load(Ordering::Relaxed),
            checkpoint_seq: s.checkpoint_seq.load(Ordering::Relaxed),
        }
    }

    /// Stops as a crash would: no final checkpoint, nothing more written (buffered log records
    /// are dropped), every later write refused. What is on disk is what a restart recovers.
    /// Tests use it to restart from a crash without killing the process.
    pub fn halt(&self) {
        self.shared
            .fail(StoreError::Refused("the store was halted".into()));
        self.shared.control.lock().halt = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.checkpointer.lock().take() {
            let _ = thread.join();
        }
    }

    fn stop(&self) -> Result<(), StoreError> {
        let Some(thread) = self.checkpointer.lock().take() else {
            return Ok(());
        };
        self.shared.control.lock().stop = true;
        self.shared.wake.notify_one();
        let _ = thread.join();
        self.shared.check_failed()?;
        self.shared.log.sync()?;
        self.shared.log.mark_clean()
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "closing the log failed");
        }
    }
}

/// Checkpoints are background work: on a machine whose cores are all busy serving requests, the
/// scheduler should give the request path most of the time and the checkpoint the rest (nice
/// 5: about a quarter of a contended core, more than a checkpoint needs under a full write load,
/// so the backlog does not build up). Best effort: a failure only leaves the priority as is.
fn lower_thread_priority() {
    // SAFETY: plain system calls on the calling thread with no pointers; their results are only
    // checked.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 5)
    };
    if result != 0 {
        tracing::debug!("could not lower the checkpoint thread's priority");
    }
}

fn load_spaces(inner: &dyn Store, meta: SpaceId) -> Result<Spaces, StoreError> {
    let mut spaces = Spaces::default();
    let end = crate::store::prefix_end(SPACE_PREFIX).unwrap_or_default();
    let rows = inner.range(
        meta,
        Bound::Included(SPACE_PREFIX),
        Bound::Excluded(&end),
        usize::MAX,
    )?;
    for (index, (key, name)) in rows.into_iter().enumerate() {
        let id = key
            .get(SPACE_PREFIX.len()..)
            .and_then(|raw| raw.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| corrupt("malformed space table entry"))?;
        if id as usize != index {
            return Err(corrupt("space table has a gap"));
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt("space name"))?;
        spaces.inner.push(inner.open_space(&name)?);
        spaces.names.push(name);
    }
    Ok(spaces)
}

impl Shared {
    fn check_failed(&self) -> Result<(), StoreError> {
        // Every write asks; the lock is taken only once something failed.
        if !self.has_failed.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.failed.lock() {
            Some(failed) => Err(failed.clone()),
            None => Ok(()),
        }
    }

    /// Records the first failure; every later write and persist fails with it.
    fn fail(&self, error: StoreError) {
        self.failed.lock().get_or_insert(error);
        self.has_failed.store(true, Ordering::Release);
    }

    fn inner_space(&self, space: SpaceId) -> Result<SpaceId, StoreError> {
        self.spaces
            .read()
            .inner
            .get(space as usize)
            .copied()
            .ok_or_else(|| StoreError::Refused(format!("unknown space {space}")))
    }

    /// Waits while the backlog is over its bound, so memory stays bounded when checkpoints
    /// cannot keep up. The writer's client sees a slower reply, nothing else.
    fn wait_for_room(&self) -> Result<(), StoreError> {
        if self.backlog.load(Ordering::Relaxed) <= self.config.max_backlog_bytes {
            return Ok(());
        }
        self.write_stalls.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("polykv_write_stalls_total").increment(1);
        let mut guard = self.drained_lock.lock();
        while self.backlog.load(Ordering::Relaxed) > self.config.max_backlog_bytes {
            self.check_failed()?;
            self.request_checkpoint();
            self.drained.wait_for(&mut guard, Duration::from_millis(50));
        }
        Ok(())
    }

    fn request_checkpoint(&self) {
        let mut control = self.control.lock();
        if !control.requested {
            control.requested = true;
            self.wake.notify_one();
        }
    }

    fn run_checkpointer(&self) {
        lower_thread_priority();
        loop {
            let stop = {
                let mut control = self.control.lock();
                if !control.requested && !control.stop && !control.halt {
                    self.wake
                        .wait_for(&mut control, self.config.checkpoint_interval);
                }
                control.requested = false;
                if control.halt {
                    return;
                }
                control.stop
            };
            if let Err(e) = self.checkpoint() {
                tracing::error!(error = %e, "checkpoint failed: no further writes are accepted until restart");
                self.fail(e);
                self.drained.notify_all();
                return;
            }
            if stop {
                return;
            }
        }
    }

    /// Seals the active memtable and moves every sealed one into the inner store in one
    /// ingestion per space (merged, newest entry of each key winning).
    fn checkpoint(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.checkpointing.lock();
        self.check_failed()?;
        let batch = {
            let mut overlay = self.overlay.write();
            overlay.seal();
            overlay.sealed.clone()
        };
        let Some(newest) = batch.last() else {
            return Ok(());
        };
        let last_seq = newest.last_seq();
        let bytes: usize = batch.iter().map(|f| f.bytes()).sum();
        let started = Instant::now();
        // Every record the checkpoint covers must be in the log on disk first: if the process
        // dies half-way through the ingestion below, the log replays the whole batch again.
        self.log.sync()?;
        match batch.as_slice() {
            // The common case: one sealed memtable, ingested from its sorted runs as they are.
            [only] => self.ingest(only.runs(), last_seq)?,
            several => self.ingest(&merge(several), last_seq)?,
        }
        self.overlay.write().sealed.drain(..batch.len());
        self.backlog.fetch_sub(bytes, Ordering::Relaxed);
        self.drained.notify_all();
        self.log.purge_upto(last_seq)?;
        let elapsed = started.elapsed();
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.checkpoint_seq.store(last_seq, Ordering::Relaxed);
        metrics::counter!("polykv_checkpoints_total").increment(1);
        metrics::histogram!("polykv_checkpoint_duration_seconds").record(elapsed.as_secs_f64());
        metrics::gauge!("polykv_checkpoint_backlog_bytes")
            .set(self.backlog.load(Ordering::Relaxed) as f64);
        metrics::gauge!("polykv_log_disk_bytes").set(self.log.disk_bytes() as f64);
        tracing::debug!(
            bytes,
            upto = last_seq,
            millis = elapsed.as_millis() as u64,
            "checkpoint written"
        );
        Ok(())
    }

    /// Writes sorted runs into the inner store, then the checkpoint mark, durably.
    fn ingest(&self, runs: &[Run], last_seq: u64) -> Result<(), StoreError> {
        for (space, run) in runs.iter().enumerate() {
            if run.is_empty() {
                continue;
            }
            let inner = self.inner_space(space as SpaceId)?;
            let mut sorted = run
                .iter()
                .map(|(key, value)| (key.as_ref(), value.as_ref().map(Bytes::as_ref)));
            self.inner.ingest(inner, &mut sorted)?;
        }
        self.inner.put(
            self.meta,
            Bytes::from_static(CHECKPOINT_KEY),
            Bytes::copy_from_slice(&last_seq.to_be_bytes()),
        )?;
        self.inner.persist(PersistMode::SyncData)
    }
}

impl Store for LogStore {
    fn open_space(&self, name: &str) -> Result<SpaceId, StoreError> {
        let s = &self.shared;
        let mut spaces = s.spaces.write();
        if let Some(id) = spaces.names.iter().position(|n| n == name) {
            return Ok(id as SpaceId);
        }
        let inner = s.inner.open_space(name)?;
        let id = spaces.names.len() as SpaceId;
        // The space must be known before any log record names it: written through, durably.
        s.inner.put(
            s.meta,
            space_key(id),
            Bytes::copy_from_slice(name.as_bytes()),
        )?;
        s.inner.persist(PersistMode::SyncData)?;
        spaces.names.push(name.to_string());
        spaces.inner.push(inner);
        Ok(id)
    }

    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let inner = self.shared.inner_space(space)?;
        if let Some(found) = self.shared.overlay.read().lookup(space, key) {
            return Ok(found);
        }
        self.shared.inner.get(inner, key)
    }

    fn write_batch(&self, mut ops: Vec<BatchOp>) -> Result<(), StoreError> {
        self.write_ops(&mut ops)
    }

    fn write_ops(&self, ops: &mut Vec<BatchOp>) -> Result<(), StoreError> {
        let s = &self.shared;
        s.check_failed()?;
        let known = s.spaces.read().names.len();
        let mut size = 5;
        for op in ops.iter() {
            let (space, key, value) = op_parts(op);
            if space as usize >= known {
                return Err(StoreError::Refused(format!("unknown space {space}")));
            }
            size += 13 + key.len() + value.map_or(0, Bytes::len);
        }
        if size > MAX_PAYLOAD {
            return Err(StoreError::Refused(format!(
                "write batch of {size} bytes is larger than the log's {MAX_PAYLOAD}-byte records"
            )));
        }
        s.wait_for_room()?;
        let before;
        let after;
        let log_bytes;
        {
            // The log append and the overlay change happen under one lock, so a sealed memtable
            // holds exactly the records up to its `last_seq`.
            let mut overlay = s.overlay.write();
            let seq = s.log.append(|buf| encode_batch(ops, buf));
            before = overlay.active.bytes;
            for op in ops.drain(..) {
                match op {
                    BatchOp::Put { space, key, value } => {
                        overlay.active.apply(space, key, Some(value))
                    }
                    BatchOp::Delete { space, key } => overlay.active.apply(space, key, None),
                }
            }
            overlay.active.last_seq = seq;
            overlay.active.log_bytes += size;
            after = overlay.active.bytes;
            log_bytes = overlay.active.log_bytes;
        }
        if after >= before {
            s.backlog.fetch_add(after - before, Ordering::Relaxed);
        } else {
            s.backlog.fetch_sub(before - after, Ordering::Relaxed);
        }
        let log_limit = s
            .config
            .checkpoint_bytes
            .saturating_mul(LOG_BYTES_PER_CHECKPOINT);
        if (after >= s.config.checkpoint_bytes && before < s.config.checkpoint_bytes)
            || (log_bytes >= log_limit && log_bytes - size < log_limit)
        {
            s.request_checkpoint();
        }
        Ok(())
    }

    fn prefetch_writes(&self, space: SpaceId, keys: &mut dyn Iterator<Item = &[u8]>) {
        self.shared.overlay.read().active.prefetch(space, keys);
    }

    fn range(
        &self,
        space: SpaceId,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StoreError> {
        let s = &self.shared;
        let inner = s.inner_space(space)?;
        let mut out = Vec::new();
        let mut lower: Bound<Bytes> = start.map(Bytes::copy_from_slice);
        while out.len() < limit {
            // Pages of every source; a source that filled its page may hold more beyond it, so
            // the merged page is only complete up to the smallest last key of such sources.
            let page = (limit - out.len()).saturating_add(16).min(4096);
            let low = lower.as_ref().map(Bytes::as_ref);
            if empty_range(low, end) {
                break;
            }
            // The overlay first: a memtable checkpointed meanwhile is then in the inner store.
            // A large active memtable is sealed first, so its order is computed once (outside
            // the lock) and shared with later scans and the checkpoint.
            if s.overlay.read().active.len_of(space) > SORT_IN_PLACE {
                s.overlay.write().seal();
            }
            let (frozen, active) = {
                let overlay = s.overlay.read();
                (
                    overlay.sealed.clone(),
                    overlay.active.take_sorted(space, low, end, page),
                )
            };
            let layers: Vec<Run> = frozen
                .iter()
                .map(|m| m.take(space, low, end, page))
                .chain(std::iter::once(active))
                .collect();
            let base = s.inner.range(inner, low, end, page)?;
            let mut horizon: Option<Bytes> = None;
            let mut more = false;
            let last_keys = layers
                .iter()
                .filter(|l| l.len() >= page)
                .filter_map(|l| l.last().map(|(k, _)| k.clone()))
                .chain(
                    (base.len() >= page)
                        .then(|| base.last().map(|(k, _)| k.clone()))
                        .flatten(),
                );
            for key in last_keys {
                more = true;
                if horizon.as_ref().is_none_or(|h| key < *h) {
                    horizon = Some(key);
                }
            }
            let mut merged: BTreeMap<Bytes, Option<Bytes>> =
                base.into_iter().map(|(k, v)| (k, Some(v))).collect();
            for layer in layers {
                merged.extend(layer);
            }
            for (key, value) in merged {
                if horizon.as_ref().is_some_and(|h| key > *h) {
                    break;
                }
                if let Some(value) = value {
                    out.push((key, value));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            match horizon {
                Some(h) if more => lower = Bound::Excluded(h),
                _ => break,
            }
        }
        Ok(out)
    }

    fn persist(&self, mode: PersistMode) -> Result<(), StoreError> {
        self.shared.check_failed()?;
        match mode {
            PersistMode::Buffer => self.shared.log.flush(),
            PersistMode::SyncData => self.shared.log.sync(),
        }
    }

    fn flushes_in_place(&self) -> bool {
        self.shared.log.flushes_in_place()
    }

    fn start_mirror(&self, applied: Arc<AtomicU64>) -> Option<Arc<mirror::Mirror>> {
        let shared = &self.shared;
        if !shared.config.direct_sync {
            return None;
        }
        mirror::Mirror::start(
            &shared.log_dir,
            shared.mirror_generation,
            shared.log.clone(),
            applied,
        )
    }

    fn approximate_len(&self, space: SpaceId) -> u64 {
        self.shared
            .inner_space(space)
            .map(|inner| self.shared.inner.approximate_len(inner))
            .unwrap_or(0)
    }

    fn close(&self) -> Result<(), StoreError> {
        self.stop()
    }

    /// Like [`LogStore::stop`], but the final checkpoint runs on the calling thread and the
    /// checkpointer is told to go without being waited for (at its lowered priority on a busy
    /// machine, its next turn can be many milliseconds away); then the inner store lets go of
    /// its files.
    fn release(&self) -> Result<(), StoreError> {
        if let Some(thread) = self.checkpointer.lock().take() {
            self.shared.control.lock().halt = true;
            self.shared.wake.notify_one();
            drop(thread);
            self.shared.checkpoint()?;
            self.shared.log.sync()?;
            self.shared.log.mark_clean()?;
        }
        self.shared.inner.release()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn config() -> LogStoreConfig {
        LogStoreConfig {
            checkpoint_bytes: 4096,
            checkpoint_interval: Duration::from_secs(3600),
            max_backlog_bytes: 1 << 20,
            segment_bytes: 8192,
            direct_sync: true,
            mapped_log: true,
        }
    }

    fn put(space: SpaceId, key: &str, value: &str) -> BatchOp {
        BatchOp::Put {
            space,
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn delete(space: SpaceId, key: &str) -> BatchOp {
        BatchOp::Delete {
            space,
            key: Bytes::copy_from_slice(key.as_bytes()),
        }
    }

    /// The store in `dir` over `inner`, with the settings of these tests, and its space "a".
    fn open_a(inner: &Arc<dyn Store>, dir: &Path) -> (LogStore, SpaceId) {
        let store = LogStore::open(inner.clone(), dir, config()).unwrap();
        let a = store.open_space("a").unwrap();
        (store, a)
    }

    fn all(store: &dyn Store, space: SpaceId) -> Vec<(Bytes, Bytes)> {
        store
            .range(space, Bound::Unbounded, Bound::Unbounded, usize::MAX)
            .unwrap()
    }

    #[test]
    fn batch_records_round_trip_and_damage_is_an_error() {
        let key = Bytes::from_static(b"k");
        let value = Bytes::from_static(b"value");
        let mut out = Vec::new();
        let ops = [
            BatchOp::Put {
                space: 3,
                key: key.clone(),
                value: value.clone(),
            },
            BatchOp::Delete {
                space: 4,
                key: key.clone(),
            },
        ];
        encode_batch(&ops, &mut out);
        let ops = decode_batch(&out).unwrap();
        assert_eq!(ops, vec![(3, key.clone(), Some(value)), (4, key, None)]);
        for cut in 0..out.len() {
            assert!(decode_batch(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = out.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_batch(&huge).is_err());
    }

    #[test]
    fn reads_see_writes_before_and_after_checkpoints_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (store, a) = open_a(&inner, dir.path());
        store
            .write_batch(vec![put(a, "k1", "1"), put(a, "k2", "2")])
            .unwrap();
        store.checkpoint().unwrap();
        store
            .write_batch(vec![delete(a, "k1"), put(a, "k3", "3")])
            .unwrap();
        assert_eq!(
            store.get(a, b"k1").unwrap(),
            None,
            "a delete hides the store's copy"
        );
        assert_eq!(all(&store, a).len(), 2);
        store.persist(PersistMode::Buffer).unwrap();
        // Dropped without a checkpoint of the second batch, as after a crash: the log replays it.
        std::mem::forget(store);
        let (store, a) = open_a(&inner, dir.path());
        let keys: Vec<Bytes> = all(&store, a).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![Bytes::from("k2"), Bytes::from("k3")]);
    }

    #[test]
    fn write_ops_takes_the_ops_and_leaves_the_buffer_for_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (store, a) = open_a(&inner, dir.path());
        let mut ops = vec![put(a, "k1", "1"), put(a, "k2", "2")];
        let capacity = ops.capacity();
        store.write_ops(&mut ops).unwrap();
        assert!(ops.is_empty());
        assert_eq!(ops.capacity(), capacity, "the buffer is kept, not replaced");
        ops.push(delete(a, "k1"));
        store.write_ops(&mut ops).unwrap();
        assert!(ops.is_empty());
        assert_eq!(store.get(a, b"k1").unwrap(), None);
        assert_eq!(store.get(a, b"k2").unwrap(), Some(Bytes::from("2")));
        store.persist(PersistMode::Buffer).unwrap();
        std::mem::forget(store);
        let (store, a) = open_a(&inner, dir.path());
        assert_eq!(all(&store, a), vec![(Bytes::from("k2"), Bytes::from("2"))]);
    }

    #[test]
    fn a_batch_at_the_record_limit_is_written_and_one_past_it_is_refused_without_harm() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let roomy = LogStoreConfig {
            max_backlog_bytes: 1 << 30,
            checkpoint_bytes: 1 << 29,
            ..config()
        };
        let store = LogStore::open(inner.clone(), dir.path(), roomy.clone()).unwrap();
        let a = store.open_space("a").unwrap();
        // A batch record is 5 bytes plus 13 per op plus its key and value.
        let fits = MAX_PAYLOAD - 5 - 13 - 1;
        let value = Bytes::from(vec![7u8; fits]);
        let batch = |value: Bytes| {
            vec![BatchOp::Put {
                space: a,
                key: Bytes::from_static(b"k"),
                value,
            }]
        };
        store.write_batch(batch(value.clone())).unwrap();
        let too_big = Bytes::from(vec![8u8; fits + 1]);
        assert!(matches!(
            store.write_batch(batch(too_big)),
            Err(StoreError::Refused(_))
        ));
        // Refused before anything was logged: the store goes on and holds the fitting value.
        store.write_batch(vec![put(a, "after", "ok")]).unwrap();
        store.persist(PersistMode::Buffer).unwrap();
        assert_eq!(store.get(a, b"k").unwrap(), Some(value.clone()));
        assert_eq!(store.get(a, b"after").unwrap().as_deref(), Some(&b"ok"[..]));
        // The record at the limit replays after a crash.
        store.halt();
        drop(store);
        let store = LogStore::open(inner, dir.path(), roomy).unwrap();
        let a = store.open_space("a").unwrap();
        assert_eq!(store.get(a, b"k").unwrap(), Some(value));
    }

    #[test]
    fn space_ids_are_stable_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        {
            let store = LogStore::open(inner.clone(), dir.path(), config()).unwrap();
            let x = store.open_space("x").unwrap();
            let y = store.open_space("y").unwrap();
            store
                .write_batch(vec![put(y, "k", "in y"), put(x, "k", "in x")])
                .unwrap();
            store.persist(PersistMode::Buffer).unwrap();
            std::mem::forget(store);
        }
        let store = LogStore::open(inner, dir.path(), config()).unwrap();
        // Opened in the other order this time.
        let y = store.open_space("y").unwrap();
        let x = store.open_space("x").unwrap();
        assert_eq!(store.get(y, b"k").unwrap().as_deref(), Some(&b"in y"[..]));
        assert_eq!(store.get(x, b"k").unwrap().as_deref(), Some(&b"in x"[..]));
    }

    #[test]
    fn large_writes_checkpoint_by_themselves_and_purge_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (store, a) = open_a(&inner, dir.path());
        for i in 0..2000 {
            store
                .write_batch(vec![put(a, &format!("key{i:05}"), &"v".repeat(50))])
                .unwrap();
            store.persist(PersistMode::Buffer).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.stats().checkpoints == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        store.checkpoint().unwrap();
        let stats = store.stats();
        assert!(stats.checkpoints >= 2, "{stats:?}");
        assert_eq!(stats.backlog_bytes, 0);
        assert!(stats.log_disk_bytes < 3 * 8192, "log purged: {stats:?}");
        let inner_a = inner.open_space("a").unwrap();
        assert_eq!(all(inner.as_ref(), inner_a).len(), 2000);
        assert_eq!(all(&store, a).len(), 2000);
    }

    #[test]
    fn one_key_written_over_and_over_checkpoints_by_log_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (store, a) = open_a(&inner, dir.path());
        // The memtable holds one small entry throughout; only the log grows (about 80 bytes a
        // write, so 1 000 writes pass 4 x 4096 bytes several times).
        for i in 0..1000 {
            store
                .write_batch(vec![put(a, "hot", &format!("value {i:050}"))])
                .unwrap();
            store.persist(PersistMode::Buffer).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.stats().checkpoints == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stats = store.stats();
        assert!(stats.checkpoints >= 1, "{stats:?}");
        let inner_a = inner.open_space("a").unwrap();
        assert_eq!(all(inner.as_ref(), inner_a).len(), 1);
        assert_eq!(
            all(&store, a),
            vec![(
                Bytes::from("hot"),
                Bytes::from(format!("value {:050}", 999))
            )]
        );
    }

    #[test]
    fn range_merges_overlay_and_store_with_every_page_size() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (store, a) = open_a(&inner, dir.path());
        let mut model = BTreeMap::new();
        // Even keys checkpointed; then every third deleted and odd ones written, in the overlay.
        for i in (0..200).step_by(2) {
            store
                .write_batch(vec![put(a, &format!("{i:03}"), "old")])
                .unwrap();
            model.insert(format!("{i:03}"), "old");
        }
        store.checkpoint().unwrap();
        for i in 0..200 {
            let key = format!("{i:03}");
            if i % 3 == 0 {
                store.write_batch(vec![delete(a, &key)]).unwrap();
                model.remove(&key);
            } else if i % 2 == 1 {
                store.write_batch(vec![put(a, &key, "new")]).unwrap();
                model.insert(key, "new");
            }
        }
        let expected: Vec<(Bytes, Bytes)> = model
            .iter()
            .map(|(k, v)| (Bytes::from(k.clone()), Bytes::from(*v)))
            .collect();
        for limit in [1, 2, 7, 50, 500] {
            let got = store
                .range(a, Bound::Unbounded, Bound::Unbounded, limit)
                .unwrap();
            assert_eq!(got, expected[..limit.min(expected.len())].to_vec());
        }
        let got = store
            .range(a, Bound::Excluded(b"050"), Bound::Included(b"100"), 1000)
            .unwrap();
        let want: Vec<_> = expected
            .iter()
            .filter(|(k, _)| k.as_ref() > b"050".as_ref() && k.as_ref() <= b"100".as_ref())
            .cloned()
            .collect();
        assert_eq!(got, want);
        assert!(store
            .range(a, Bound::Excluded(b"5"), Bound::Excluded(b"5"), 10)
            .unwrap()
            .is_empty());
    }
}
