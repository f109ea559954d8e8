//! The log's direct mirror: how a Sync write becomes durable without an fdatasync.
//!
//! The log is written through the page cache (one `write(2)` per group: what an Async write
//! waits for). Making that durable takes an fdatasync, and with it a switch to the persister
//! thread, the page cache's writeback and a device flush for every group. A server of the same
//! shape measured with `durable_floor` spends about twice the CPU per durable write of one that
//! writes each group once with `O_DIRECT` and `RWF_DSYNC` through io_uring and reads the
//! completion on its own event loop. So a Sync group is made durable by writing the log bytes
//! it needs a second time, into this file, that way; the log itself is still fdatasynced in the
//! background (every `sync_interval`, and when a segment is sealed).
//!
//! The file is a ring of 4 KiB blocks. Block 0 is a header naming the mirror's generation. Every
//! other block holds one fragment of one segment: which segment (the sequence of its first
//! record), the byte offset there, the length, the bytes, and a checksum of it all. A group's
//! fragments go into fresh blocks, so a block that may still be needed is never rewritten, and
//! the ring wraps only once the log's own fdatasync covers what the blocks it reuses hold.
//!
//! On open, before the log is read, [`recover`] writes the fragments of the current generation
//! back into their segments, in offset order and only while they continue the segment's intact
//! records (a fragment past a gap was never acknowledged), syncs the segments, and starts a new
//! generation, so that no fragment is ever applied again after the log has been written on.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::{record, segment_path, Log, Position};
use crate::error::StoreError;

/// The mirror's file name in the log's directory.
pub const FILE_NAME: &str = "mirror.blocks";
/// Blocks in the file, the header included (8 MiB).
pub const BLOCKS: u64 = 2048;

/// Direct writes in flight at once. With one, a group's processing and the device's write of
/// the group before it take turns; with two they overlap (the do-nothing `durable_floor`
/// server: +18–46 % durable writes/s). A waiter is released only once every earlier write has
/// completed too, so a write that completes before an earlier one acknowledges nothing early.
const MAX_IN_FLIGHT: usize = 2;

const BLOCK: usize = 4096;
const FRAGMENT_HEADER: usize = 32;
/// Log bytes one block carries.
const FRAGMENT_BYTES: usize = BLOCK - FRAGMENT_HEADER;
const HEADER_MAGIC: &[u8; 4] = b"PKVM";
const FRAGMENT_MAGIC: &[u8; 4] = b"PKVF";

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Block([u8; BLOCK]);

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::io(format!("{what} {}", path.display()), e)
}

fn checksum(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(0, |crc, part| crc32c::crc32c_append(crc, part))
}

fn header_block(generation: u32) -> Block {
    let mut block = Block([0; BLOCK]);
    block.0[0..4].copy_from_slice(HEADER_MAGIC);
    block.0[4..8].copy_from_slice(&generation.to_le_bytes());
    let crc = checksum(&[&block.0[0..8]]);
    block.0[8..12].copy_from_slice(&crc.to_le_bytes());
    block
}

fn parse_header(block: &[u8]) -> Option<u32> {
    let stored = u32::from_le_bytes(block.get(8..12)?.try_into().ok()?);
    (block.get(0..4)? == HEADER_MAGIC && checksum(&[&block[0..8]]) == stored)
        .then(|| u32::from_le_bytes(block[4..8].try_into().unwrap_or_default()))
}

/// One fragment: log bytes that belong at `offset` in the segment starting at record `segment`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fragment {
    segment: u64,
    offset: u64,
    bytes: Vec<u8>,
}

fn encode_fragment(block: &mut Block, generation: u32, segment: u64, offset: u64, bytes: &[u8]) {
    let b = &mut block.0;
    b.fill(0);
    b[0..4].copy_from_slice(FRAGMENT_MAGIC);
    b[4..8].copy_from_slice(&generation.to_le_bytes());
    b[8..16].copy_from_slice(&segment.to_le_bytes());
    b[16..24].copy_from_slice(&offset.to_le_bytes());
    b[24..26].copy_from_slice(&(bytes.len() as u16).to_le_bytes());
    b[FRAGMENT_HEADER..FRAGMENT_HEADER + bytes.len()].copy_from_slice(bytes);
    let crc = checksum(&[&b[0..28], bytes]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// The fragment in a block, if the block holds an intact one of `generation`.
fn decode_fragment(block: &[u8], generation: u32) -> Option<Fragment> {
    let word = |range: std::ops::Range<usize>| block.get(range);
    if word(0..4)? != FRAGMENT_MAGIC
        || u32::from_le_bytes(word(4..8)?.try_into().ok()?) != generation
    {
        return None;
    }
    let len = u16::from_le_bytes(word(24..26)?.try_into().ok()?) as usize;
    let bytes = block.get(FRAGMENT_HEADER..FRAGMENT_HEADER + len)?;
    let stored = u32::from_le_bytes(word(28..32)?.try_into().ok()?);
    if len > FRAGMENT_BYTES || checksum(&[&block[0..28], bytes]) != stored {
        return None;
    }
    Some(Fragment {
        segment: u64::from_le_bytes(word(8..16)?.try_into().ok()?),
        offset: u64::from_le_bytes(word(16..24)?.try_into().ok()?),
        bytes: bytes.to_vec(),
    })
}

/// Where the intact records at the start of `bytes` end.
fn intact_end(bytes: &[u8]) -> usize {
    let mut offset = 0;
    while offset < bytes.len() {
        match record::decode(&bytes[offset..]) {
            record::Decoded::Record { len, .. } => offset += len,
            _ => break,
        }
    }
    offset
}

/// Writes the mirror's fragments back into the log's segments and starts a new generation
/// (see the module's documentation). Returns the new generation; a directory without a mirror
/// gets generation 1 when one is first made.
pub fn recover(dir: &Path) -> Result<u32, StoreError> {
    let path = dir.join(FILE_NAME);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(1),
        Err(e) => return Err(io_error("open", &path, e)),
    };
    let mut header = [0u8; BLOCK];
    let generation = file
        .read_exact_at(&mut header, 0)
        .ok()
        .and_then(|()| parse_header(&header));
    let next = match generation {
        // A log closed cleanly was synced after its last write: no fragment holds anything it
        // lacks, and the mirror need not be read (a hot upgrade's new process opens at once).
        Some(generation) if super::clean::is_marked(dir) => generation,
        Some(generation) => {
            let bytes = std::fs::read(&path).map_err(|e| io_error("read", &path, e))?;
            restore(dir, &bytes, generation)?;
            generation
        }
        None => {
            // No intact header: nothing in the file was acknowledged through it (the header is
            // written, and synced, before any fragment). The next generation is one no block in
            // the file carries, so that none of them is ever taken for a current one.
            tracing::warn!(file = %path.display(), "log mirror without a valid header: ignored");
            let bytes = std::fs::read(&path).map_err(|e| io_error("read", &path, e))?;
            bytes
                .chunks_exact(BLOCK)
                .filter(|block| block.starts_with(FRAGMENT_MAGIC))
                .filter_map(|block| Some(u32::from_le_bytes(block.get(4..8)?.try_into().ok()?)))
                .max()
                .unwrap_or(0)
        }
    }
    .wrapping_add(1)
    .max(1);
    write_header(&path, next)?;
    Ok(next)
}

/// Writes the fragments of `generation` found in the mirror's `bytes` back into their segments.
fn restore(dir: &Path, bytes: &[u8], generation: u32) -> Result<(), StoreError> {
    let mut fragments: Vec<Fragment> = bytes
        .chunks_exact(BLOCK)
        .skip(1)
        .filter_map(|block| decode_fragment(block, generation))
        .collect();
    fragments.sort_by_key(|f| (f.segment, f.offset));
    let mut restored = 0usize;
    for segment_fragments in fragments.chunk_by(|a, b| a.segment == b.segment) {
        restored += restore_segment(dir, segment_fragments)?;
    }
    if restored > 0 {
        tracing::info!(
            bytes = restored,
            "log mirror: bytes written back into the log that its own sync had not covered"
        );
    }
    Ok(())
}

/// Writes one segment's fragments back where they continue its intact records; returns the
/// bytes written.
fn restore_segment(dir: &Path, fragments: &[Fragment]) -> Result<usize, StoreError> {
    let Some(first) = fragments.first() else {
        return Ok(0);
    };
    let path = segment_path(dir, first.segment);
    let mut content = match std::fs::read(&path) {
        Ok(content) => content,
        // Purged after a checkpoint: everything in it is in the store.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error("read", &path, e)),
    };
    let intact = intact_end(&content);
    // Bytes known from `intact` on: the fragments must follow on from there without a gap.
    let mut covered = intact;
    for fragment in fragments {
        let Ok(offset) = usize::try_from(fragment.offset) else {
            break;
        };
        if offset > covered {
            break;
        }
        let fragment_end = offset + fragment.bytes.len();
        if fragment_end <= covered {
            continue;
        }
        if content.len() < fragment_end {
            content.resize(fragment_end, 0);
        }
        content[offset..fragment_end].copy_from_slice(&fragment.bytes);
        covered = fragment_end;
    }
    // Only whole records go back: a record the fragments hold only part of was never
    // acknowledged.
    let end = intact + intact_end(&content[intact..]);
    if end > intact {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        file.write_all_at(&content[intact..end], intact as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("restore", &path, e))?;
    }
    Ok(end - intact)
}

fn write_header(path: &Path, generation: u32) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_error("open", path, e))?;
    file.write_all_at(&header_block(generation).0, 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| io_error("write header of", path, e))
}

/// Where a mirror's next fragments go in its ring, shared by [`Mirror`] and [`BlockingMirror`].
struct RingCursor {
    /// The ring's next block (1 ..= BLOCKS - 1).
    next_block: u64,
    /// The furthest log position the blocks written since the ring last wrapped hold.
    lap_end: Position,
}

impl RingCursor {
    fn new() -> RingCursor {
        RingCursor {
            next_block: 1,
            lap_end: (0, 0),
        }
    }

    /// Encodes `taken` (log bytes starting at `at`) into `blocks` as fragments of `generation`
    /// for the ring's next blocks, and returns the first of them. `None` where the log's own
    /// fdatasync is the way instead (the caller syncs): more than the ring holds, or a wrap
    /// onto blocks that `busy` says are still being written (given the end of the blocks the
    /// wrap reuses). Before a wrap, the blocks it reuses are covered by the log's sync.
    fn place(
        &mut self,
        log: &Log,
        generation: u32,
        taken: &[u8],
        at: Position,
        busy: impl Fn(u64) -> bool,
        blocks: &mut Vec<Block>,
    ) -> Result<Option<u64>, StoreError> {
        let count = taken.len().div_ceil(FRAGMENT_BYTES) as u64;
        if count > BLOCKS - 1 {
            return Ok(None);
        }
        if self.next_block + count > BLOCKS {
            if busy(1 + count) {
                return Ok(None);
            }
            // The blocks it reuses must be covered by the log's own sync first: the caller
            // syncs (off the request path, for the async mirror), and the next call wraps.
            if log.synced_position() < self.lap_end {
                return Ok(None);
            }
            *self = RingCursor::new();
        }
        blocks.clear();
        blocks.resize(count as usize, Block([0; BLOCK]));
        for (i, (block, chunk)) in blocks
            .iter_mut()
            .zip(taken.chunks(FRAGMENT_BYTES))
            .enumerate()
        {
            let offset = at.1 + (i * FRAGMENT_BYTES) as u64;
            encode_fragment(block, generation, at.0, offset, chunk);
        }
        self.lap_end = self.lap_end.max((at.0, at.1 + taken.len() as u64));
        let first = self.next_block;
        self.next_block += count;
        Ok(Some(first))
    }
}

/// What a Sync waiter sees.
#[derive(Debug, Clone, Default)]
struct Durable {
    /// Every write numbered up to this is durable.
    upto: u64,
    failed: Option<String>,
}

/// A direct write submitted and not yet reaped.
struct InFlight {
    /// Its `user_data`.
    id: u64,
    /// The ring block it starts at.
    start: u64,
    /// The caller's number up to which it (with every earlier write) makes writes durable.
    target: u64,
    /// Its blocks: they stay where they are (a `Vec`'s buffer does not move with the `Vec`)
    /// until it completes.
    blocks: Vec<Block>,
    /// Its result, once reaped while an earlier write is still in flight.
    result: Option<i32>,
}

struct State {
    ring: IoUring,
    /// The log bytes of the next write, taken from the log.
    taken: Vec<u8>,
    /// Oldest first.
    in_flight: std::collections::VecDeque<InFlight>,
    /// Block buffers of completed writes, kept for the next ones (at most [`MAX_IN_FLIGHT`]).
    spare: Vec<Vec<Block>>,
    next_id: u64,
    /// The highest number a waiter asked for.
    wanted: u64,
    cursor: RingCursor,
    /// Set while the log's own fdatasync runs on a blocking thread in place of a direct write
    /// (see [`Mirror::sync_behind`]): nothing else is written until it is done.
    syncing: bool,
}

/// The running mirror of one log: see the module's documentation.
pub struct Mirror {
    /// Itself, for the blocking thread a sync runs on.
    me: std::sync::Weak<Mirror>,
    runtime: tokio::runtime::Handle,
    log: Arc<Log>,
    /// The caller's numbering of writes: everything numbered up to its value is in the log
    /// (buffered at least) when it is read.
    applied: Arc<AtomicU64>,
    file: File,
    path: PathBuf,
    generation: u32,
    state: Mutex<State>,
    durable: watch::Sender<Durable>,
    writes: AtomicU64,
    covered: AtomicU64,
}

impl Mirror {
    /// Opens (creating and zero-filling if needed) the mirror of `log` in `dir` and starts its
    /// completion task on the current tokio runtime. `None`, with the reason logged, where this
    /// cannot work (no runtime, no io_uring, no `O_DIRECT` on this file system): Sync writes then
    /// wait for the log's fdatasync as before.
    pub fn start(
        dir: &Path,
        generation: u32,
        log: Arc<Log>,
        applied: Arc<AtomicU64>,
    ) -> Option<Arc<Mirror>> {
        match Self::try_start(dir, generation, log, applied) {
            Ok(mirror) => Some(mirror),
            Err(e) => {
                tracing::info!(error = %e, "log mirror not used: Sync writes wait for fdatasync");
                None
            }
        }
    }

    fn try_start(
        dir: &Path,
        generation: u32,
        log: Arc<Log>,
        applied: Arc<AtomicU64>,
    ) -> Result<Arc<Mirror>, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| StoreError::Refused(format!("no async runtime: {e}")))?;
        let path = dir.join(FILE_NAME);
        prepare_file(&path, generation)?;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| io_error("open (O_DIRECT)", &path, e))?;
        let ring = IoUring::new(8).map_err(|e| StoreError::io("io_uring setup", e))?;
        // SAFETY: a new eventfd; the result is checked before it is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(StoreError::io("eventfd", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created here and nothing else owns it.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(|e| StoreError::io("io_uring eventfd", e))?;
        let eventfd = {
            let _entered = runtime.enter();
            // SAFETY: the eventfd is an `OwnedFd` that the `AsyncFd` owns until it is dropped.
            unsafe { AsyncFd::register(eventfd) }.map_err(|e| {
                StoreError::io("register eventfd", std::io::Error::other(e.to_string()))
            })?
        };
        // What was written before now is made durable once, by the log's own sync. `applied`
        // is read before the sync: a write numbered after it may not be in what the sync
        // covers, and the mirror takes it instead.
        log.attach_mirror();
        let start = applied.load(Ordering::SeqCst);
        log.sync()?;
        let spawn_on = runtime.clone();
        let mirror = Arc::new_cyclic(|me| Mirror {
            me: me.clone(),
            runtime: spawn_on,
            log,
            applied,
            file,
            path,
            generation,
            state: Mutex::new(State {
                ring,
                taken: Vec::new(),
                in_flight: std::collections::VecDeque::new(),
                spare: Vec::new(),
                next_id: 0,
                wanted: 0,
                cursor: RingCursor::new(),
                syncing: false,
            }),
            durable: watch::channel(Durable {
                upto: start,
                failed: None,
            })
            .0,
            writes: AtomicU64::new(0),
            covered: AtomicU64::new(0),
        });
        runtime.spawn(complete(Arc::downgrade(&mirror), eventfd));
        tracing::info!(file = %mirror.path.display(), "log mirror: Sync writes are made durable with direct writes");
        Ok(mirror)
    }

    /// Direct writes made so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Writes (in the caller's numbering) made durable by them.
    pub fn covered(&self) -> u64 {
        self.covered.load(Ordering::Relaxed)
    }

    /// Waits until write number `seq` is durable.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        let mut durable = self.durable.subscribe();
        if durable.borrow().upto >= seq {
            return Ok(());
        }
        let idle = {
            let mut state = self.state.lock();
            state.wanted = state.wanted.max(seq);
            state.in_flight.len() < MAX_IN_FLIGHT
        };
        if idle {
            // Step behind the tasks that are ready, so that one write covers their writes too.
            crate::engine::BehindReadyTasks::default().await;
            self.submit_next();
        }
        let seen = durable
            .wait_for(|d| d.upto >= seq || d.failed.is_some())
            .await
            .map_err(|_| StoreError::Refused("the log mirror has stopped".into()))?;
        match &seen.failed {
            Some(reason) if seen.upto < seq => Err(StoreError::Refused(reason.clone())),
            _ => Ok(()),
        }
    }

    /// Writes everything not yet in a mirror write as one direct write, unless
    /// [`MAX_IN_FLIGHT`] are in flight (a completion starts the next) or nobody waits for more
    /// than they cover.
    fn submit_next(&self) {
        let mut state = self.state.lock();
        let (durable, failed) = {
            let d = self.durable.borrow();
            (d.upto, d.failed.is_some())
        };
        // After a failure nothing is written: a later write must not release anyone.
        if failed {
            return;
        }
        let covered = state
            .in_flight
            .back()
            .map_or(durable, |w| w.target.max(durable));
        if state.syncing || state.in_flight.len() >= MAX_IN_FLIGHT || state.wanted <= covered {
            return;
        }
        let target = self.applied.load(Ordering::SeqCst);
        if let Err(e) = self.write(&mut state, target) {
            let reason = format!("log mirror write failed: {e}");
            tracing::error!(file = %self.path.display(), %reason);
            self.durable.send_modify(|d| d.failed = Some(reason));
        }
    }

    fn write(&self, state: &mut State, target: u64) -> Result<(), StoreError> {
        let mut taken = std::mem::take(&mut state.taken);
        let result = match self.log.take_unmirrored(&mut taken) {
            Ok(Some(at)) => self.write_taken(state, &taken, at, target),
            // More waited than the ring holds (a long sync interval under a heavy Async load), or
            // a segment change that no sync has covered yet: the log's own fdatasync covers it,
            // once (and what is in flight with it).
            Ok(None) => self.sync_behind(state, target),
            Err(e) => Err(e),
        };
        state.taken = taken;
        result
    }

    fn write_taken(
        &self,
        state: &mut State,
        taken: &[u8],
        at: Position,
        target: u64,
    ) -> Result<(), StoreError> {
        if taken.is_empty() {
            // Everything up to `target` is already in a mirror write or synced: durable now,
            // or once the writes in flight complete (the last of them covers it).
            match state.in_flight.back_mut() {
                Some(last) => last.target = last.target.max(target),
                None => self.durable.send_modify(|d| d.upto = d.upto.max(target)),
            }
            return Ok(());
        }
        // A write in flight that lies in the blocks a wrap reuses (it went in right after the
        // last wrap) makes the log's fdatasync the way, as does a group larger than the ring.
        let mut blocks = state.spare.pop().unwrap_or_default();
        let in_flight = &state.in_flight;
        let placed = state.cursor.place(
            &self.log,
            self.generation,
            taken,
            at,
            |end| in_flight.iter().any(|w| w.start < end),
            &mut blocks,
        )?;
        let Some(first) = placed else {
            state.spare.push(blocks);
            return self.sync_behind(state, target);
        };
        let count = blocks.len() as u64;
        let id = state.next_id;
        state.next_id += 1;
        let write = opcode::Write::new(
            types::Fd(self.file.as_raw_fd()),
            blocks.as_ptr().cast::<u8>(),
            (count as usize * BLOCK) as u32,
        )
        .offset(first * BLOCK as u64)
        .rw_flags(libc::RWF_DSYNC)
        .build()
        .user_data(id);
        // SAFETY: the buffer (`blocks`) is neither changed nor freed until the completion is
        // reaped: it moves into `in_flight` (its heap allocation stays where it is) and is
        // dropped only by `reap`, or by `Drop` after waiting for every write in flight.
        unsafe {
            state
                .ring
                .submission()
                .push(&write)
                .map_err(|_| StoreError::Refused("io_uring submission queue full".into()))?;
        }
        state.in_flight.push_back(InFlight {
            id,
            start: first,
            target,
            blocks,
            result: None,
        });
        state
            .ring
            .submit()
            .map_err(|e| StoreError::io("io_uring submit", e))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes everything up to `target` durable with the log's own fdatasync, on a blocking
    /// thread: the worker that asked goes on serving every other request meanwhile (a sync
    /// takes from a fraction of a millisecond to tens of them), and no direct write is made
    /// until it is done. Then it releases the waiters and starts the next write.
    fn sync_behind(&self, state: &mut State, target: u64) -> Result<(), StoreError> {
        let Some(me) = self.me.upgrade() else {
            return Err(StoreError::Refused("the log mirror has stopped".into()));
        };
        state.syncing = true;
        self.runtime.spawn_blocking(move || {
            let result = me.log.sync();
            {
                let mut state = me.state.lock();
                state.syncing = false;
                match result {
                    Ok(()) => me.synced_upto(&mut state, target),
                    Err(e) => {
                        let reason = format!("log fdatasync for the mirror failed: {e}");
                        tracing::error!(file = %me.path.display(), %reason);
                        me.durable.send_modify(|d| d.failed = Some(reason));
                        return;
                    }
                }
            }
            me.submit_next();
        });
        Ok(())
    }

    /// Everything up to `target` was made durable by the log's own fdatasync, which also
    /// covers the writes in flight: they release nobody any more when they complete.
    fn synced_upto(&self, state: &mut State, target: u64) {
        for write in &mut state.in_flight {
            write.target = 0;
        }
        self.durable.send_modify(|d| d.upto = d.upto.max(target));
    }

    /// Takes the writes that finished: publishes what every write up to them made durable,
    /// then starts the next.
    fn reap(&self) {
        let (released, failure) = {
            let mut state = self.state.lock();
            let state = &mut *state;
            for entry in state.ring.completion() {
                if let Some(write) = state
                    .in_flight
                    .iter_mut()
                    .find(|w| w.id == entry.user_data())
                {
                    write.result = Some(entry.result());
                }
            }
            let mut released = None;
            let mut failure = None;
            while let Some(result) = state.in_flight.front().and_then(|w| w.result) {
                let Some(write) = state.in_flight.pop_front() else {
                    break;
                };
                let len = write.blocks.len() * BLOCK;
                if state.spare.len() < MAX_IN_FLIGHT {
                    state.spare.push(write.blocks);
                }
                if usize::try_from(result) == Ok(len) {
                    released = Some(released.unwrap_or(0).max(write.target));
                } else {
                    failure = Some(if result < 0 {
                        let e = std::io::Error::from_raw_os_error(-result);
                        format!("log mirror write to {} failed: {e}", self.path.display())
                    } else {
                        format!(
                            "log mirror write to {} was short: {result} of {len} bytes",
                            self.path.display()
                        )
                    });
                    break;
                }
            }
            (released, failure)
        };
        if let Some(target) = released.filter(|_| self.durable.borrow().failed.is_none()) {
            self.durable.send_modify(|d| {
                self.covered
                    .fetch_add(target.saturating_sub(d.upto), Ordering::Relaxed);
                d.upto = d.upto.max(target);
            });
        }
        match failure {
            Some(reason) => {
                tracing::error!(%reason);
                self.durable.send_modify(|d| d.failed = Some(reason));
            }
            None => self.submit_next(),
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        // The kernel reads the blocks of the writes in flight until they complete: wait for them.
        let mut state = self.state.lock();
        while !state.in_flight.is_empty() {
            if state.ring.submit_and_wait(1).is_err() {
                break;
            }
            let finished: Vec<u64> = state.ring.completion().map(|e| e.user_data()).collect();
            state.in_flight.retain(|w| !finished.contains(&w.id));
        }
    }
}

/// A mirror written from one thread that waits for each direct write (the Raft log's flusher,
/// which already runs on a thread of its own), with the same file, ring and recovery as
/// [`Mirror`]. A log that is cut back (a Raft follower's conflicting suffix) first starts a new
/// generation ([`BlockingMirror::new_generation`]), so that no fragment of the bytes it cuts is
/// ever written back.
pub struct BlockingMirror {
    log: Arc<Log>,
    file: File,
    path: PathBuf,
    generation: u32,
    ring: IoUring,
    /// The blocks of the write being made (aligned for `O_DIRECT`).
    blocks: Vec<Block>,
    /// The log bytes of the write being made, taken from the log.
    taken: Vec<u8>,
    cursor: RingCursor,
    writes: u64,
}

impl BlockingMirror {
    /// Opens (creating and zero-filling if needed) the mirror of `log` in `dir`, headed by
    /// `generation` (from [`recover`]). `None`, with the reason logged, where this cannot work
    /// (no io_uring, no `O_DIRECT` on this file system): the caller syncs the log instead.
    pub fn start(dir: &Path, generation: u32, log: Arc<Log>) -> Option<BlockingMirror> {
        match Self::try_start(dir, generation, log) {
            Ok(mirror) => Some(mirror),
            Err(e) => {
                tracing::info!(error = %e, "log mirror not used: the log is made durable with fdatasync");
                None
            }
        }
    }

    fn try_start(dir: &Path, generation: u32, log: Arc<Log>) -> Result<BlockingMirror, StoreError> {
        let path = dir.join(FILE_NAME);
        prepare_file(&path, generation)?;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| io_error("open (O_DIRECT)", &path, e))?;
        let ring = IoUring::new(2).map_err(|e| StoreError::io("io_uring setup", e))?;
        let mut mirror = BlockingMirror {
            log,
            file,
            path,
            generation,
            ring,
            blocks: Vec::new(),
            taken: Vec::new(),
            cursor: RingCursor::new(),
            writes: 0,
        };
        // One direct write of the header, so that a file system that takes `O_DIRECT` at open
        // but refuses the writes is found now, not at the first durable write.
        mirror.blocks.push(header_block(generation));
        mirror.write_blocks(0)?;
        // What was written before now is made durable once, by the log's own sync.
        mirror.log.attach_mirror();
        mirror.log.sync()?;
        tracing::info!(file = %mirror.path.display(), "log mirror: the log is made durable with direct writes");
        Ok(mirror)
    }

    /// Direct writes made so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Makes every record appended to the log before the call durable: writes out what is
    /// buffered, then writes the bytes no fdatasync covers into the ring with one direct write
    /// and waits for it (or syncs the log, where that is the cheaper way).
    pub fn make_durable(&mut self) -> Result<(), StoreError> {
        let mut taken = std::mem::take(&mut self.taken);
        let result = match self.log.take_unmirrored(&mut taken) {
            Ok(Some(at)) => self.write_taken(&taken, at),
            // More waited than the ring holds: the log's own fdatasync covers it, once.
            Ok(None) => self.log.sync(),
            Err(e) => Err(e),
        };
        self.taken = taken;
        result
    }

    /// Starts a new generation: syncs the log (so that everything written so far is durable in
    /// the log itself), then makes a header with the next generation durable. Fragments written
    /// before are ignored from then on. Call before cutting the log back, with nothing made
    /// durable in between.
    pub fn new_generation(&mut self) -> Result<(), StoreError> {
        self.log.sync()?;
        let next = self.generation.wrapping_add(1).max(1);
        self.blocks.clear();
        self.blocks.push(header_block(next));
        self.write_blocks(0)?;
        self.generation = next;
        self.cursor = RingCursor::new();
        Ok(())
    }

    fn write_taken(&mut self, taken: &[u8], at: Position) -> Result<(), StoreError> {
        if taken.is_empty() {
            return Ok(());
        }
        let placed = self.cursor.place(
            &self.log,
            self.generation,
            taken,
            at,
            |_| false,
            &mut self.blocks,
        )?;
        match placed {
            Some(first) => self.write_blocks(first),
            None => self.log.sync(),
        }
    }

    /// Writes `self.blocks` at block `first` with `O_DIRECT` and `RWF_DSYNC`, and waits.
    fn write_blocks(&mut self, first: u64) -> Result<(), StoreError> {
        let len = self.blocks.len() * BLOCK;
        let write = opcode::Write::new(
            types::Fd(self.file.as_raw_fd()),
            self.blocks.as_ptr().cast::<u8>(),
            len as u32,
        )
        .offset(first * BLOCK as u64)
        .rw_flags(libc::RWF_DSYNC)
        .build();
        // SAFETY: the buffer (`self.blocks`) is neither changed nor moved until the completion
        // is reaped below: this method holds `&mut self` until then.
        unsafe {
            self.ring
                .submission()
                .push(&write)
                .map_err(|_| StoreError::Refused("io_uring submission queue full".into()))?;
        }
        let result = loop {
            if let Some(entry) = self.ring.completion().next() {
                break entry.result();
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                // A signal ended the wait, not the write: wait again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io("io_uring submit", e)),
            }
        };
        self.writes += 1;
        if usize::try_from(result) == Ok(len) {
            return Ok(());
        }
        let e = if result < 0 {
            std::io::Error::from_raw_os_error(-result)
        } else {
            std::io::Error::other(format!("short write: {result} of {len} bytes"))
        };
        Err(io_error("direct write to", &self.path, e))
    }
}

/// Reads completions as the eventfd reports them, on the runtime's event loop.
async fn complete(mirror: std::sync::Weak<Mirror>, eventfd: AsyncFd<OwnedFd>) {
    loop {
        let Ok(mut ready) = eventfd.readable().await else {
            return;
        };
        let mut count = [0u8; 8];
        // SAFETY: reads the eventfd's 8-byte counter into an 8-byte buffer.
        unsafe { libc::read(eventfd.get_ref().as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        ready.clear_ready();
        let Some(mirror) = mirror.upgrade() else {
            return;
        };
        mirror.reap();
    }
}

/// Makes sure the file exists at its full size, written (a direct write into a merely
/// allocated extent would need the file system's journal), and headed by `generation`.
fn prepare_file(path: &Path, generation: u32) -> Result<(), StoreError> {
    let size = BLOCKS * BLOCK as u64;
    let existing = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if existing < size {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| io_error("create", path, e))?;
        let zeros = vec![0u8; 1 << 20];
        let mut offset = 0;
        while offset < size {
            file.write_all_at(&zeros, offset)
                .map_err(|e| io_error("fill", path, e))?;
            offset += zeros.len() as u64;
        }
        file.sync_all().map_err(|e| io_error("sync", path, e))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("fsync directory", dir, e))?;
        }
    }
    write_header(path, generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_wraps_to_its_first_block_unless_that_is_still_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 1 << 20, 0, |_, _| Ok(())).unwrap();
        let mut cursor = RingCursor::new();
        let mut blocks = Vec::new();
        let group = vec![7u8; FRAGMENT_BYTES * 1000];
        let len = group.len() as u64;
        let mut place = |cursor: &mut RingCursor, at: u64, busy: bool| {
            cursor
                .place(&log, 1, &group, (1, at), |end| busy && end > 1, &mut blocks)
                .unwrap()
        };
        assert_eq!(place(&mut cursor, 0, false), Some(1));
        assert_eq!(place(&mut cursor, len, false), Some(1001));
        // 2 001 + 1 000 blocks pass the ring's end: the next group goes to block 1, unless the
        // blocks there are still being written, and only once the log's own sync covers what
        // they held (the caller syncs when told `None`).
        assert_eq!(place(&mut cursor, 2 * len, true), None);
        assert_eq!(place(&mut cursor, 2 * len, false), None);
        // Synced into the next segment: past every position of segment 1.
        for _ in 0..20 {
            log.append(|buf| buf.extend_from_slice(&[1u8; 64 << 10]));
            log.sync().unwrap();
        }
        assert!(log.synced_position() > (1, 3 * len));
        assert_eq!(place(&mut cursor, 2 * len, false), Some(1));
        assert_eq!(place(&mut cursor, 3 * len, false), Some(1001));
        assert_eq!(blocks.len(), 1000);
        let whole_ring = vec![0u8; FRAGMENT_BYTES * BLOCKS as usize];
        assert_eq!(
            cursor
                .place(&log, 1, &whole_ring, (1, 0), |_| false, &mut blocks)
                .unwrap(),
            None,
            "a group larger than the ring"
        );
    }

    #[test]
    fn a_fragment_reads_back_only_in_its_generation_and_intact() {
        let mut block = Block([0; BLOCK]);
        encode_fragment(&mut block, 7, 42, 4000, b"some log bytes");
        let fragment = decode_fragment(&block.0, 7).expect("intact");
        assert_eq!(
            fragment,
            Fragment {
                segment: 42,
                offset: 4000,
                bytes: b"some log bytes".to_vec()
            }
        );
        assert_eq!(decode_fragment(&block.0, 8), None, "another generation");
        block.0[FRAGMENT_HEADER + 3] ^= 1;
        assert_eq!(decode_fragment(&block.0, 7), None, "a flipped bit");
        assert_eq!(decode_fragment(&[0u8; BLOCK], 0), None, "zeros");
    }

    /// A log of six records in one segment; the segment's bytes after the first three were
    /// flushed and after all six; the path of the segment.
    fn six_records(dir: &Path) -> (Vec<u8>, Vec<u8>, PathBuf) {
        let log = Log::open(dir, 1 << 20, 0, |_, _| Ok(())).unwrap();
        let path = segment_path(dir, 1);
        for i in 0..6 {
            log.append(|buf| buf.extend_from_slice(format!("record {i}").as_bytes()));
            if i == 2 {
                log.flush().unwrap();
            }
        }
        let three = std::fs::read(&path).unwrap();
        log.flush().unwrap();
        let six = std::fs::read(&path).unwrap();
        (three, six, path)
    }

    fn write_mirror(dir: &Path, generation: u32, fragments: &[(u64, &[u8])]) {
        let mut bytes = header_block(generation).0.to_vec();
        for (offset, data) in fragments {
            let mut block = Block([0; BLOCK]);
            encode_fragment(&mut block, generation, 1, *offset, data);
            bytes.extend_from_slice(&block.0);
        }
        bytes.resize(BLOCKS as usize * BLOCK, 0);
        std::fs::write(dir.join(FILE_NAME), bytes).unwrap();
    }

    /// A log of six records of which the segment holds the first three (its page cache lost)
    /// and a mirror of `generation` the other three; the three on disk and the segment's path.
    fn records_4_to_6_only_in_the_mirror(dir: &Path, generation: u32) -> (Vec<u8>, PathBuf) {
        let (three, six, path) = six_records(dir);
        let start = intact_end(&three);
        std::fs::write(&path, &three).unwrap();
        write_mirror(
            dir,
            generation,
            &[(start as u64, &six[start..intact_end(&six)])],
        );
        (three, path)
    }

    fn replayed(dir: &Path) -> usize {
        let mut count = 0;
        Log::open(dir, 1 << 20, 0, |_, _| {
            count += 1;
            Ok(())
        })
        .unwrap();
        count
    }

    #[test]
    fn recovery_writes_back_what_continues_the_log_and_nothing_past_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (three, six, path) = six_records(dir.path());
        let start = intact_end(&three);
        let end = intact_end(&six);
        let middle = start + 10;
        // The log's page cache was lost after record 3: only the mirror has records 4 to 6.
        std::fs::write(&path, &three).unwrap();
        write_mirror(
            dir.path(),
            5,
            &[
                (start as u64, &six[start..middle]),
                (middle as u64, &six[middle..end]),
            ],
        );
        assert_eq!(recover(dir.path()).unwrap(), 6, "a new generation");
        assert_eq!(replayed(dir.path()), 6);
        // The same fragments, now of an old generation, are not applied again.
        std::fs::write(&path, &three).unwrap();
        assert_eq!(recover(dir.path()).unwrap(), 7);
        assert_eq!(replayed(dir.path()), 3);

        // A fragment that does not continue the intact records was never acknowledged.
        std::fs::write(&path, &three).unwrap();
        write_mirror(dir.path(), 1, &[(middle as u64, &six[middle..end])]);
        recover(dir.path()).unwrap();
        assert_eq!(replayed(dir.path()), 3);

        // Fragments the log already holds change nothing.
        std::fs::write(&path, &six).unwrap();
        write_mirror(dir.path(), 1, &[(start as u64, &six[start..end])]);
        recover(dir.path()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), six);
    }

    #[test]
    fn a_mirror_without_a_valid_header_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        records_4_to_6_only_in_the_mirror(dir.path(), 2);
        let mut bytes = std::fs::read(dir.path().join(FILE_NAME)).unwrap();
        bytes[5] ^= 1;
        std::fs::write(dir.path().join(FILE_NAME), bytes).unwrap();
        assert_eq!(
            recover(dir.path()).unwrap(),
            3,
            "a generation above every fragment's"
        );
        assert_eq!(replayed(dir.path()), 3);
    }

    #[test]
    fn after_a_clean_close_the_fragments_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (three, path) = records_4_to_6_only_in_the_mirror(dir.path(), 4);
        super::super::clean::write(
            dir.path(),
            super::super::clean::Mark {
                first_seq: 1,
                len: intact_end(&three) as u64,
            },
        )
        .unwrap();
        assert_eq!(recover(dir.path()).unwrap(), 5);
        assert_eq!(std::fs::read(&path).unwrap(), three, "nothing written back");
    }

    #[test]
    fn a_header_reads_back_and_damage_is_seen() {
        let mut block = header_block(9);
        assert_eq!(parse_header(&block.0), Some(9));
        block.0[5] ^= 1;
        assert_eq!(parse_header(&block.0), None);
    }
}
