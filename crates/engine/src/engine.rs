//! The engine: keyspaces over a cache and a store, one `apply` for every mutation.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};

use crate::cache::{Cache, CacheStats, CachedItem};
use crate::clock::{Clock, SystemClock};
use crate::command::{Command, Condition, Outcome, Proposal};
use crate::counters::Counters;
use crate::error::{Error, Result};
use crate::locks::LockTable;
use crate::persist::{Persister, Poison};
use crate::store::{BatchOp, FjallStore, LogStore, LogStoreConfig, LogStoreStats, SpaceId, Store};
use crate::value::{Entry, Value};
use crate::watch::{Change, Event, Selector, Subscription, WatchHub, WatchStats};
use crate::KeyspaceId;

#[path = "replica.rs"]
mod replica;
pub use replica::{Exported, INSTALLING};

/// How durable a write must be before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Durability {
    /// Only in the cache; never written to the store (nmdb CACHE_ONLY).
    Memory,
    /// In the journal's OS buffers: survives a process crash; synced by group commit shortly after.
    Async,
    /// On stable storage (fdatasync), group-committed.
    Sync,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Byte budget of the cache (0 = no cache).
    pub cache_bytes: usize,
    pub cache_shards: usize,
    /// Longest time an Async write waits before a background sync covers it.
    pub sync_interval: Duration,
    /// How often the reaper looks for expired entries and locks.
    pub reaper_interval: Duration,
    /// Default queue length of a watch subscription before it coalesces.
    pub watch_queue: usize,
    /// Memtable size of each store space before it is flushed (fjall's store; fixed when the
    /// space is created). Only metadata passes through memtables since the log took over.
    pub memtable_bytes: u64,
    /// The log and its checkpoints (stores opened with [`Engine::open_dir`]).
    pub log: LogStoreConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_bytes: 256 << 20,
            cache_shards: 64,
            sync_interval: Duration::from_millis(100),
            reaper_interval: Duration::from_secs(1),
            watch_queue: 1024,
            memtable_bytes: crate::store::DEFAULT_MEMTABLE_BYTES,
            log: LogStoreConfig::default(),
        }
    }
}

/// Where a read was served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Store,
}

/// A value read, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub entry: Entry,
    pub source: Source,
}

/// A write that has been applied (visible to every reader) and may still have to reach the
/// durability it asked for. Await [`Pending::durable`] before acknowledging it.
#[must_use = "a write is acknowledged only once durable() has returned"]
pub struct Pending {
    pub outcome: Outcome,
    /// The write's number in the journal, if it wrote to the store.
    seq: Option<u64>,
    durability: Durability,
    engine: Engine,
}

impl Pending {
    /// Waits until the write is as durable as requested and returns its outcome: for Async,
    /// until the journal is in the OS buffers; for Sync, until it is on stable storage.
    pub async fn durable(self) -> Result<Outcome> {
        match (self.seq, self.durability) {
            (Some(seq), Durability::Sync) => self.engine.wait_durable(seq).await?,
            // A Memory write has a number only when it reserved versions in the log.
            (Some(seq), Durability::Async | Durability::Memory) => {
                self.engine.flush_upto(seq).await?
            }
            _ => {}
        }
        Ok(self.outcome)
    }

    /// The outcome at once, where the write's durability costs no waiting: nothing to flush
    /// (`None`), or an Async write whose flush is a copy into the mapped log: the
    /// [`FlushDue`] then, which the caller makes before it sends the acknowledgement (one
    /// for a batch of writes: the last covers them all). Otherwise the write back, to be
    /// awaited with [`Pending::durable`].
    pub fn flush_due(self) -> std::result::Result<(Outcome, Option<FlushDue>), Pending> {
        match (self.seq, self.durability) {
            (None, _) => Ok((self.outcome, None)),
            (Some(seq), Durability::Async | Durability::Memory)
                if self.engine.inner.store.flushes_in_place() =>
            {
                let due = FlushDue {
                    engine: self.engine,
                    seq,
                };
                Ok((self.outcome, Some(due)))
            }
            _ => Err(self),
        }
    }

    /// Whether awaiting [`Pending::durable`] will wait for a sync.
    pub fn needs_sync(&self) -> bool {
        self.seq.is_some() && self.durability == Durability::Sync
    }

    /// Whether awaiting [`Pending::durable`] has anything to do (a flush or a sync).
    pub fn needs_wait(&self) -> bool {
        self.seq.is_some()
    }
}

/// The flush an Async write still owes before it is acknowledged ([`Pending::flush_due`]).
#[must_use = "a write is acknowledged only once its flush is made"]
pub struct FlushDue {
    engine: Engine,
    seq: u64,
}

impl FlushDue {
    /// Makes the flush, on the calling thread (a copy into the mapped log, or a `write(2)`
    /// where the log stopped being mapped meanwhile). It covers every write before this one.
    pub fn flush(self) -> Result<()> {
        self.engine.flush_now(self.seq)
    }

    /// The later of two flushes due (the one that covers both).
    pub fn later(self, other: FlushDue) -> FlushDue {
        if other.seq > self.seq {
            other
        } else {
            self
        }
    }
}

/// Resolves on its second poll, having woken its own task on the first. A task woken while it
/// runs goes to the back of the scheduler's queue: it runs again once the tasks already ready
/// have run, without waiting for the I/O driver. (`tokio::task::yield_now` defers its wake
/// until after the driver is polled: one more `epoll_wait` per turn, and the turn's readiness
/// split into smaller groups, each waking the clients separately.)
#[derive(Default)]
pub(crate) struct BehindReadyTasks {
    woken: bool,
}

impl std::future::Future for BehindReadyTasks {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.woken {
            return std::task::Poll::Ready(());
        }
        self.woken = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Counters of one keyspace, bumped on every request ([`Counters`]: no locked instruction).
#[derive(Default)]
struct KeyspaceCounters(Counters<6>);

/// Which of a keyspace's counters.
#[derive(Clone, Copy)]
enum Count {
    CacheHits,
    StoreHits,
    Misses,
    Writes,
    Deletes,
    Expired,
}

impl KeyspaceCounters {
    fn bump(&self, which: Count) {
        self.0.add(which as usize, 1);
    }

    fn get(&self, which: Count) -> u64 {
        self.0.get(which as usize)
    }
}

/// Statistics of one keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyspaceStats {
    pub id: KeyspaceId,
    pub name: String,
    /// Approximate number of keys in the store.
    pub keys: u64,
    pub gets: u64,
    pub cache_hits: u64,
    pub store_hits: u64,
    pub misses: u64,
    pub writes: u64,
    pub deletes: u64,
    pub expired: u64,
    /// Version of the latest write.
    pub version: u64,
}

/// Statistics of the whole engine.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub keyspaces: Vec<KeyspaceStats>,
    pub cache: CacheStats,
    pub watch: WatchStats,
    pub locks: u64,
    pub applied_writes: u64,
    pub syncs: u64,
    pub synced_writes: u64,
    pub sync_seconds_total: f64,
    pub max_sync_batch: u64,
    /// Direct writes to the log's mirror, and the Sync writes they made durable.
    pub mirror_writes: u64,
    pub mirror_synced_writes: u64,
    pub poisoned: Option<String>,
    /// The log and its checkpoints, when the engine runs on them.
    pub log: Option<LogStoreStats>,
}

struct KeyspaceInfo {
    name: String,
    space: SpaceId,
    counters: KeyspaceCounters,
}

/// State that only `apply` touches, under one lock.
struct WriterState {
    /// Per keyspace: next version to hand out, and the end of the block reserved in the store.
    versions: Vec<(u64, u64)>,
    locks: LockTable,
    /// Number of store-writing commands applied since start.
    seq: u64,
    /// Replicated mode: every version handed out is recorded exactly (not a block ahead), so a
    /// replica that restarts goes on from the same version as the others (see `replica`).
    exact_versions: bool,
    /// Written with the next batch committed: a replicated log's position (see `replica`).
    marker: Option<Bytes>,
    /// The ops of the write being applied: one buffer, reused (see [`Store::write_ops`]).
    ops: Vec<BatchOp>,
}

/// Most ops the writer's reused buffer keeps room for (a write makes a handful at most).
const REUSED_OPS_CAPACITY: usize = 16;

/// Versions are reserved in the store a block at a time, so they keep increasing across restarts
/// without a metadata write per mutation.
const VERSION_BLOCK: u64 = 1 << 16;

/// Longest key the engine accepts: the store's limit less the expiry index's 12-byte prefix.
pub const MAX_KEY_LEN: usize = crate::store::MAX_KEY_LEN - 12;

fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::Invalid("key longer than 65 522 bytes"));
    }
    Ok(())
}

/// Longest scan page read from the store at a time.
const SCAN_PAGE: usize = 256;

struct Inner {
    store: Arc<dyn Store>,
    /// The same store, when it is the log-first one (for its statistics).
    log_store: Option<Arc<LogStore>>,
    cache: Cache,
    hub: WatchHub,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// Indexed by keyspace id. Append-only and read without a lock: every request looks its
    /// keyspace up, and a lock (or a reference count) there is two atomic operations per request.
    keyspaces: boxcar::Vec<KeyspaceInfo>,
    names: RwLock<HashMap<String, KeyspaceId>>,
    writer: Mutex<WriterState>,
    applied: Arc<AtomicU64>,
    /// Highest journal number known to be in the OS buffers.
    flushed: AtomicU64,
    flush_lock: Mutex<()>,
    persister: Persister,
    /// The log's direct mirror, started by the first Sync write ([`crate::log::mirror`]).
    mirror: std::sync::OnceLock<Option<Arc<crate::log::mirror::Mirror>>>,
    poison: Arc<Poison>,
    meta: SpaceId,
    expiry: SpaceId,
    closed: AtomicBool,
    reaper: Mutex<Option<JoinHandle<()>>>,
    /// The reaper deletes only entries that expired at or before this time (`u64::MAX`: no
    /// limit). A replica holds it at the replicated clock (see `hold_reaper_at`).
    reap_until: AtomicU64,
}

/// The engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn keyspace_meta_key(name: &str) -> Bytes {
    let mut key = BytesMut::from(&b"ks:"[..]);
    key.put_slice(name.as_bytes());
    key.freeze()
}

fn version_meta_key(ks: KeyspaceId) -> Bytes {
    let mut key = BytesMut::from(&b"ver:"[..]);
    key.put_u32(ks);
    key.freeze()
}

fn expiry_key(at: u64, ks: KeyspaceId, key: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(12 + key.len());
    out.put_u64(at);
    out.put_u32(ks);
    out.put_slice(key);
    out.freeze()
}

fn parse_expiry_key(raw: &[u8]) -> Option<(u64, KeyspaceId, Bytes)> {
    let at = u64::from_be_bytes(raw.get(0..8)?.try_into().ok()?);
    let ks = u32::from_be_bytes(raw.get(8..12)?.try_into().ok()?);
    Some((at, ks, Bytes::copy_from_slice(raw.get(12..)?)))
}

fn u64_of(raw: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

/// Keyspace names: 1 to 64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_keyspace_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Engine {
    /// Opens the engine in `dir`: the log in `dir/log`, checkpointed into a fjall store in `dir`
    /// (a directory written before the log existed opens as a store with an empty log).
    pub fn open_dir(dir: &Path, config: EngineConfig) -> Result<Engine> {
        let checkpoints = FjallStore::open_with(dir, config.memtable_bytes)?;
        let store = Arc::new(LogStore::open(
            Arc::new(checkpoints),
            &dir.join("log"),
            config.log.clone(),
        )?);
        Engine::open_on(store.clone(), Some(store), config, Arc::new(SystemClock))
    }

    /// Opens the engine on any store: reads the keyspace table and version marks back.
    pub fn open(
        store: Arc<dyn Store>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine> {
        Engine::open_on(store, None, config, clock)
    }

    fn open_on(
        store: Arc<dyn Store>,
        log_store: Option<Arc<LogStore>>,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine> {
        let meta = store.open_space("meta")?;
        let expiry = store.open_space("expiry")?;

        let mut found = Vec::new();
        let mut after: Option<Bytes> = None;
        loop {
            let start = after
                .as_deref()
                .map_or(Bound::Included(&b"ks:"[..]), Bound::Excluded);
            let page = store.range(meta, start, Bound::Excluded(b"ks;"), SCAN_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, value) in page {
                let name = String::from_utf8_lossy(&key[3..]).into_owned();
                let id = value
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| crate::StoreError::Corrupt(format!("keyspace id of {name}")))?;
                found.push((id, name));
            }
        }
        found.sort();
        let keyspaces = boxcar::Vec::new();
        let mut names = HashMap::new();
        let mut versions = Vec::new();
        for (expected, (id, name)) in found.into_iter().enumerate() {
            if id as usize != expected {
                return Err(crate::StoreError::Corrupt(format!(
                    "keyspace table has a gap at {name}"
                ))
                .into());
            }
            let space = store.open_space(&format!("data.{name}"))?;
            let reserved = store
                .get(meta, &version_meta_key(id))?
                .and_then(|raw| u64_of(&raw))
                .unwrap_or(0);
            // Everything below the reserved mark may have been handed out before the restart.
            versions.push((reserved, reserved));
            names.insert(name.clone(), id);
            keyspaces.push(KeyspaceInfo {
                name,
                space,
                counters: KeyspaceCounters::default(),
            });
        }

        let poison = Arc::new(Poison::default());
        let applied = Arc::new(AtomicU64::new(0));
        let persister = Persister::start(
            store.clone(),
            poison.clone(),
            applied.clone(),
            config.sync_interval,
        );
        let inner = Arc::new(Inner {
            cache: Cache::new(config.cache_bytes, config.cache_shards),
            hub: WatchHub::new(),
            clock,
            keyspaces,
            names: RwLock::new(names),
            writer: Mutex::new(WriterState {
                versions,
                locks: LockTable::default(),
                seq: 0,
                exact_versions: false,
                marker: None,
                ops: Vec::with_capacity(4),
            }),
            applied,
            flushed: AtomicU64::new(0),
            flush_lock: Mutex::new(()),
            persister,
            mirror: std::sync::OnceLock::new(),
            poison,
            meta,
            expiry,
            store,
            log_store,
            config,
            closed: AtomicBool::new(false),
            reaper: Mutex::new(None),
            reap_until: AtomicU64::new(u64::MAX),
        });
        let reaper = start_reaper(Arc::downgrade(&inner), inner.config.reaper_interval);
        *inner.reaper.lock() = reaper;
        Ok(Engine { inner })
    }

    /// The id of a keyspace, creating it if needed.
    pub fn keyspace(&self, name: &str) -> Result<KeyspaceId> {
        if let Some(id) = self.inner.names.read().get(name) {
            return Ok(*id);
        }
        if !valid_keyspace_name(name) {
            return Err(Error::Invalid(
                "keyspace names are 1-64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        match self.apply(
            Command::CreateKeyspace { name: name.into() },
            Durability::Sync,
        )? {
            (Outcome::KeyspaceCreated(id), _) => Ok(id),
            _ => Err(Error::Invalid("keyspace creation failed")),
        }
    }

    /// Names and ids of every keyspace.
    pub fn keyspaces(&self) -> Vec<(KeyspaceId, String)> {
        self.inner
            .keyspaces
            .iter()
            .map(|(id, info)| (id as KeyspaceId, info.name.clone()))
            .collect()
    }

    fn info(&self, ks: KeyspaceId) -> Result<&KeyspaceInfo> {
        self.inner
            .keyspaces
            .get(ks as usize)
            .ok_or(Error::UnknownKeyspace(ks))
    }

    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Whether `entry` has expired. The clock is read only for entries that can expire, so
    /// reads of the many that cannot (the common case) do not pay for it.
    fn expired(&self, entry: &Entry) -> bool {
        entry.expires_at.is_some_and(|at| at <= self.now_ms())
    }

    // ----- reads -------------------------------------------------------------------------

    /// The current entry of a key: from the cache if it is there, else from the store (which
    /// then fills the cache).
    pub fn get(&self, ks: KeyspaceId, key: &[u8]) -> Result<Option<Read>> {
        check_key(key)?;
        let info = self.info(ks)?;
        let counters = &info.counters;
        match self.inner.cache.get(ks, key) {
            Some(item) if !self.expired(&item.entry) => {
                counters.bump(Count::CacheHits);
                return Ok(Some(Read {
                    entry: item.entry,
                    source: Source::Cache,
                }));
            }
            Some(item) if item.durable => {
                counters.bump(Count::Misses);
                return Ok(None);
            }
            // An expired memory-only entry no longer hides what the store holds.
            _ => {}
        }
        let epoch = self.inner.cache.epoch(ks, key);
        let Some(raw) = self.inner.store.get(info.space, key)? else {
            counters.bump(Count::Misses);
            return Ok(None);
        };
        let entry = Entry::decode_shared(&raw)?;
        if self.expired(&entry) {
            counters.bump(Count::Misses);
            return Ok(None);
        }
        counters.bump(Count::StoreHits);
        self.inner.cache.fill(ks, key, &raw, epoch);
        Ok(Some(Read {
            entry,
            source: Source::Store,
        }))
    }

    /// Starts loading the cache memory that reading `keys` will touch: call it with the keys of
    /// a pipelined batch before reading them one by one (see [`crate::cache::Cache::prefetch`]).
    pub fn prefetch<'k>(&self, keys: impl IntoIterator<Item = (KeyspaceId, &'k [u8])>) {
        self.inner.cache.prefetch(keys);
    }

    /// Starts loading the store's memory that writing `keys` of a keyspace will touch (the log's
    /// memtable, which a write updates and a read served by the cache never reads). Call it
    /// with the keys a pipelined batch is about to write, beside [`Engine::prefetch`].
    pub fn prefetch_writes<'k>(&self, ks: KeyspaceId, keys: impl IntoIterator<Item = &'k [u8]>) {
        if let Ok(info) = self.info(ks) {
            self.inner
                .store
                .prefetch_writes(info.space, &mut keys.into_iter());
        }
    }

    /// Starts loading the cache and memtable memory that applying `proposals` will touch (at
    /// most [`crate::cache::PREFETCH_MAX`] of them): a replica applies a committed entry's
    /// proposals one after another, and without this each waits for its own cache misses.
    pub fn prefetch_proposals(&self, proposals: &[Proposal]) {
        let keys = || proposals.iter().filter_map(|p| p.command.data_key());
        self.prefetch(keys());
        // The memtable is per space: its prefetch takes the keys of one keyspace, the first's
        // (an entry's proposals almost always share one).
        if let Some((ks, _)) = keys().next() {
            self.prefetch_writes(ks, keys().filter(|&(k, _)| k == ks).map(|(_, key)| key));
        }
    }

    /// The cached entry of a key, without going to the store (nmdb CACHE_ONLY reads).
    pub fn get_cached(&self, ks: KeyspaceId, key: &[u8]) -> Option<Entry> {
        let item = self.inner.cache.get(ks, key)?;
        (!self.expired(&item.entry)).then_some(item.entry)
    }

    /// Up to `limit` live entries with keys in the range, in ascending byte order, from the store.
    pub fn scan(
        &self,
        ks: KeyspaceId,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Entry)>> {
        let info = self.info(ks)?;
        let now = self.now_ms();
        let mut out = Vec::new();
        let mut cursor: Option<Bytes> = None;
        while out.len() < limit {
            let from = match &cursor {
                Some(last) => Bound::Excluded(last.as_ref()),
                None => start,
            };
            let page = self.inner.store.range(
                info.space,
                from,
                end,
                SCAN_PAGE.min((limit - out.len()).saturating_add(16)),
            )?;
            let exhausted = page.is_empty();
            for (key, raw) in page {
                let entry = Entry::decode(&raw)?;
                cursor = Some(key.clone());
                if !entry.is_expired(now) && out.len() < limit {
                    out.push((key, entry));
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    /// The smallest live key.
    pub fn first(&self, ks: KeyspaceId) -> Result<Option<(Bytes, Entry)>> {
        Ok(self.scan(ks, Bound::Unbounded, Bound::Unbounded, 1)?.pop())
    }

    /// The smallest live key strictly greater than `key` (which need not exist).
    pub fn next_after(&self, ks: KeyspaceId, key: &[u8]) -> Result<Option<(Bytes, Entry)>> {
        Ok(self
            .scan(ks, Bound::Excluded(key), Bound::Unbounded, 1)?
            .pop())
    }

    /// Up to `limit` live entries whose keys start with `prefix`, after `after` if given.
    pub fn prefix(
        &self,
        ks: KeyspaceId,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Entry)>> {
        let end = crate::store::prefix_end(prefix);
        let end = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.scan(ks, start, end, limit)
    }

    // ----- writes ------------------------------------------------------------------------

    /// Applies a command now and returns its outcome together with what is left to wait for.
    pub fn submit(&self, command: Command, durability: Durability) -> Result<Pending> {
        let (outcome, seq) = self.apply(command, durability)?;
        Ok(Pending {
            outcome,
            seq,
            durability,
            engine: self.clone(),
        })
    }

    /// Applies a command and waits until it is as durable as asked.
    pub async fn execute(&self, command: Command, durability: Durability) -> Result<Outcome> {
        self.submit(command, durability)?.durable().await
    }

    pub async fn set(
        &self,
        ks: KeyspaceId,
        key: impl Into<Bytes>,
        value: Value,
        durability: Durability,
    ) -> Result<Outcome> {
        self.execute(Command::put(ks, key, value), durability).await
    }

    pub async fn delete(
        &self,
        ks: KeyspaceId,
        key: impl Into<Bytes>,
        durability: Durability,
    ) -> Result<Outcome> {
        self.execute(Command::delete(ks, key), durability).await
    }

    /// Atomic read-modify-write: `change` sees the current entry (for Memory durability, the
    /// cached one) and returns the new value, or `None` to leave the key alone. The new value
    /// is written as a put conditioned on the version that was read, so a log replays it
    /// exactly. Returns the entry that was read and the outcome of the write, if any.
    pub fn submit_update(
        &self,
        ks: KeyspaceId,
        key: Bytes,
        durability: Durability,
        change: impl FnOnce(Option<&Entry>) -> Option<Value>,
    ) -> Result<(Option<Entry>, Option<Pending>)> {
        let mut writer = self.lock_writer()?;
        let at = self.now_ms();
        let info = self.info(ks)?;
        let current = self.current(info, ks, &key, durability, at)?;
        let Some(value) = change(current.as_ref()) else {
            return Ok((current, None));
        };
        let command = Command::put_unchanged(ks, key, value, current.as_ref());
        let (outcome, seq) =
            self.apply_locked(&mut writer, Proposal { at_ms: at, command }, durability)?;
        Ok((
            current,
            Some(Pending {
                outcome,
                seq,
                durability,
                engine: self.clone(),
            }),
        ))
    }

    /// Subscribes to one key and returns its current entry, both at one consistent point: every
    /// change after the returned state is delivered.
    pub fn watch_key(
        &self,
        ks: KeyspaceId,
        key: Bytes,
        capacity: Option<usize>,
    ) -> Result<(Subscription, Option<Entry>)> {
        let info = self.info(ks)?;
        let _writer = self.inner.writer.lock();
        let current = self.current(info, ks, &key, Durability::Async, self.now_ms())?;
        let capacity = capacity.unwrap_or(self.inner.config.watch_queue);
        let subscription = self.inner.hub.subscribe(ks, Selector::Key(key), capacity);
        Ok((subscription, current))
    }

    /// Subscribes to every key under `prefix` and returns up to `snapshot_limit` current entries,
    /// at one consistent point.
    pub fn watch_prefix(
        &self,
        ks: KeyspaceId,
        prefix: Bytes,
        capacity: Option<usize>,
        snapshot_limit: usize,
    ) -> Result<(Subscription, Vec<(Bytes, Entry)>)> {
        let _writer = self.inner.writer.lock();
        let snapshot = self.prefix(ks, &prefix, None, snapshot_limit)?;
        let capacity = capacity.unwrap_or(self.inner.config.watch_queue);
        let subscription = self
            .inner
            .hub
            .subscribe(ks, Selector::Prefix(prefix), capacity);
        Ok((subscription, snapshot))
    }

    fn lock_writer(&self) -> Result<parking_lot::MutexGuard<'_, WriterState>> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(Error::ShuttingDown);
        }
        self.inner.poison.check()?;
        Ok(self.inner.writer.lock())
    }

    fn apply(&self, command: Command, durability: Durability) -> Result<(Outcome, Option<u64>)> {
        let mut writer = self.lock_writer()?;
        let proposal = Proposal {
            at_ms: self.now_ms(),
            command,
        };
        self.apply_locked(&mut writer, proposal, durability)
    }

    /// The current live entry as a writer must see it: with Memory durability the cached one
    /// (which may be memory-only); otherwise the store's, taken from the cache when it holds a
    /// durable copy.
    fn current(
        &self,
        info: &KeyspaceInfo,
        ks: KeyspaceId,
        key: &[u8],
        durability: Durability,
        at: u64,
    ) -> Result<Option<Entry>> {
        let entry = match self.inner.cache.peek(ks, key) {
            Some(item) if item.durable || durability == Durability::Memory => Some(item.entry),
            _ if durability == Durability::Memory => None,
            _ => match self.inner.store.get(info.space, key)? {
                Some(raw) => Some(Entry::decode(&raw)?),
                None => None,
            },
        };
        Ok(entry.filter(|e| !e.is_expired(at)))
    }

    fn next_version(
        &self,
        writer: &mut WriterState,
        ks: KeyspaceId,
        ops: &mut Vec<BatchOp>,
    ) -> u64 {
        let slot = &mut writer.versions[ks as usize];
        slot.0 += 1;
        if writer.exact_versions {
            slot.1 = slot.0;
            ops.push(BatchOp::Put {
                space: self.inner.meta,
                key: version_meta_key(ks),
                value: Bytes::copy_from_slice(&slot.1.to_be_bytes()),
            });
        } else if slot.0 > slot.1 {
            slot.1 = slot.0 + VERSION_BLOCK;
            ops.push(BatchOp::Put {
                space: self.inner.meta,
                key: version_meta_key(ks),
                value: Bytes::copy_from_slice(&slot.1.to_be_bytes()),
            });
        }
        slot.0
    }

    /// Writes a batch to the store; a failure poisons the engine.
    fn commit(&self, writer: &mut WriterState, mut ops: Vec<BatchOp>) -> Result<u64> {
        if let Some(marker) = writer.marker.take() {
            ops.push(BatchOp::Put {
                space: self.inner.meta,
                key: Bytes::from_static(replica::MARKER_KEY),
                value: marker,
            });
        }
        let written = self.inner.store.write_ops(&mut ops);
        // Kept for the next write, unless a large batch (a snapshot's import) grew it.
        if ops.capacity() <= REUSED_OPS_CAPACITY {
            ops.clear();
            writer.ops = ops;
        }
        if let Err(e) = written {
            self.inner.poison.set(format!("store write failed: {e}"));
            return Err(e.into());
        }
        writer.seq += 1;
        self.inner.applied.store(writer.seq, Ordering::SeqCst);
        Ok(writer.seq)
    }

    /// THE apply: the one place state changes. Deterministic given the proposal and the state.
    fn apply_locked(
        &self,
        writer: &mut WriterState,
        proposal: Proposal,
        durability: Durability,
    ) -> Result<(Outcome, Option<u64>)> {
        let at = proposal.at_ms;
        // The journal number a caller waits on: Async waits for the OS buffers, Sync for the disk.
        let wait = |seq: u64| (durability != Durability::Memory).then_some(seq);
        // Refuse what the store cannot hold before touching it: a store error poisons.
        match &proposal.command {
            Command::Put { key, .. }
            | Command::Delete { key, .. }
            | Command::Incr { key, .. }
            | Command::Expire { key, .. } => check_key(key)?,
            _ => {}
        }
        match proposal.command {
            Command::CreateKeyspace { name } => {
                if let Some(id) = self.inner.names.read().get(&name) {
                    return Ok((Outcome::KeyspaceCreated(*id), None));
                }
                // Keyspaces are made only here, under the writer lock: the next one pushed gets
                // this id.
                let id = self.inner.keyspaces.count() as KeyspaceId;
                let space = self.inner.store.open_space(&format!("data.{name}"))?;
                let seq = self.commit(
                    writer,
                    vec![BatchOp::Put {
                        space: self.inner.meta,
                        key: keyspace_meta_key(&name),
                        value: Bytes::copy_from_slice(&id.to_be_bytes()),
                    }],
                )?;
                writer.versions.push((0, 0));
                let pushed = self.inner.keyspaces.push(KeyspaceInfo {
                    name: name.clone(),
                    space,
                    counters: KeyspaceCounters::default(),
                });
                debug_assert_eq!(pushed, id as usize);
                self.inner.names.write().insert(name, id);
                Ok((Outcome::KeyspaceCreated(id), wait(seq)))
            }
            Command::Put {
                ks,
                key,
                value,
                expires_at,
                owner,
                label,
                condition,
            } => {
                let info = self.info(ks)?;
                // An unconditional put does not need the current state (a store read saved).
                if condition != Condition::Always {
                    let current = self.current(info, ks, &key, durability, at)?;
                    if let Some(failed) = check(&condition, current) {
                        return Ok((failed, None));
                    }
                }
                let mut ops = std::mem::take(&mut writer.ops);
                // A replica's memory-only write stays on that node: it must not take a version
                // the replicated writes would then get differently on every node.
                let version = if durability == Durability::Memory && writer.exact_versions {
                    writer.versions[ks as usize].0
                } else {
                    self.next_version(writer, ks, &mut ops)
                };
                let entry = Entry {
                    value,
                    version,
                    expires_at,
                    owner,
                    label,
                };
                if durability == Durability::Memory {
                    // A new block of versions is reserved in the log; the write then waits for
                    // the log like an Async one, so no version is ever handed out twice, even
                    // across a crash.
                    let reserved = if ops.is_empty() {
                        writer.ops = ops;
                        None
                    } else {
                        Some(self.commit(writer, ops)?)
                    };
                    let item = CachedItem {
                        entry,
                        durable: false,
                    };
                    // The cache encodes key and entry into their own allocation: it does not
                    // hold on to the request's buffer.
                    if !self.inner.cache.insert(ks, &key, item) {
                        return Ok((Outcome::TooLarge, reserved));
                    }
                    return Ok((Outcome::Written { version }, reserved));
                }
                // The key and the entry encoded once into one allocation, shared by the cache
                // and the log's overlay: neither holds on to the buffer the request arrived in.
                let mut entry = entry;
                let record = entry.encode_keyed(&key);
                drop(key);
                ops.push(BatchOp::Put {
                    space: info.space,
                    key: record.key_bytes(),
                    value: record.encoded_bytes(),
                });
                if let Some(at) = expires_at {
                    ops.push(BatchOp::Put {
                        space: self.inner.expiry,
                        key: expiry_key(at, ks, record.key()),
                        value: Bytes::new(),
                    });
                }
                let seq = self.commit(writer, ops)?;
                info.counters.bump(Count::Writes);
                let key = record.key_bytes();
                self.inner.cache.insert_keyed(ks, record, true);
                self.inner.hub.publish(Event {
                    keyspace: ks,
                    key,
                    version,
                    change: Change::Set(entry),
                });
                Ok((Outcome::Written { version }, wait(seq)))
            }
            Command::Delete { ks, key, condition } => {
                let info = self.info(ks)?;
                let current = self.current(info, ks, &key, durability, at)?;
                if current.is_none() {
                    // Nothing to delete; still drop memory-only data for the key.
                    if durability != Durability::Memory {
                        self.inner.cache.remove(ks, &key);
                    }
                    return Ok((Outcome::NotFound, None));
                }
                if let Some(failed) = check(&condition, current) {
                    return Ok((failed, None));
                }
                if durability == Durability::Memory {
                    self.inner.cache.remove(ks, &key);
                    return Ok((Outcome::Deleted { version: 0 }, None));
                }
                let mut ops = std::mem::take(&mut writer.ops);
                let version = self.next_version(writer, ks, &mut ops);
                ops.push(BatchOp::Delete {
                    space: info.space,
                    key: key.clone(),
                });
                let seq = self.commit(writer, ops)?;
                info.counters.bump(Count::Deletes);
                self.inner.cache.remove(ks, &key);
                self.inner.hub.publish(Event {
                    keyspace: ks,
                    key,
                    version,
                    change: Change::Deleted,
                });
                Ok((Outcome::Deleted { version }, wait(seq)))
            }
            Command::Incr { ks, key, delta } => {
                let info = self.info(ks)?;
                let Some(current) = self.current(info, ks, &key, durability, at)? else {
                    return Ok((Outcome::NotFound, None));
                };
                let (value, result) = match current.value {
                    Value::I64(v) => (Value::I64(v.wrapping_add(delta)), v.wrapping_add(delta)),
                    Value::I32(v) => {
                        let new = v.wrapping_add(delta as i32);
                        (Value::I32(new), new as i64)
                    }
                    _ => return Ok((Outcome::WrongType, None)),
                };
                let command = Command::Put {
                    ks,
                    key,
                    value,
                    expires_at: current.expires_at,
                    owner: current.owner,
                    label: current.label,
                    condition: Condition::VersionIs(current.version),
                };
                let (outcome, wait) =
                    self.apply_locked(writer, Proposal { at_ms: at, command }, durability)?;
                Ok(match outcome {
                    Outcome::Written { version } => (
                        Outcome::Incremented {
                            value: result,
                            version,
                        },
                        wait,
                    ),
                    other => (other, wait),
                })
            }
            Command::Expire {
                ks,
                key,
                expires_at,
            } => {
                let info = self.info(ks)?;
                let mut ops = vec![BatchOp::Delete {
                    space: self.inner.expiry,
                    key: expiry_key(expires_at, ks, &key),
                }];
                let stored = match self.inner.store.get(info.space, &key)? {
                    Some(raw) => Some(Entry::decode(&raw)?),
                    None => None,
                };
                let due = stored
                    .as_ref()
                    .is_some_and(|e| e.expires_at == Some(expires_at) && expires_at <= at);
                if due {
                    ops.push(BatchOp::Delete {
                        space: info.space,
                        key: key.clone(),
                    });
                }
                let seq = self.commit(writer, ops)?;
                if due {
                    info.counters.bump(Count::Expired);
                    if self
                        .inner
                        .cache
                        .peek(ks, &key)
                        .is_some_and(|item| item.durable)
                    {
                        self.inner.cache.remove(ks, &key);
                    }
                }
                Ok((Outcome::Expired { removed: due }, wait(seq)))
            }
            Command::Lock {
                name,
                holder,
                deadline,
            } => Ok((
                Outcome::Lock(writer.locks.acquire(name, holder, deadline, at)),
                None,
            )),
            Command::Unlock { name, holder } => Ok((
                Outcome::Unlocked {
                    released: writer.locks.release(&name, holder, at),
                },
                None,
            )),
            Command::ReleaseHolder { holder } => Ok((
                Outcome::LocksReleased(writer.locks.release_all(holder, at)),
                None,
            )),
            Command::ExpireLocks => Ok((Outcome::LocksReleased(writer.locks.expire(at)), None)),
        }
    }

    /// Every live lock as (name, holder, deadline): locks live in memory only, so a hot
    /// upgrade carries them to the next process, which takes them again with `Command::Lock`.
    pub fn live_locks(&self) -> Vec<(Bytes, u64, Option<u64>)> {
        self.inner.writer.lock().locks.live_all(self.now_ms())
    }

    /// Live locks held by `holder`.
    pub fn locks_held_by(&self, holder: u64) -> usize {
        self.inner
            .writer
            .lock()
            .locks
            .held_by(holder, self.now_ms())
    }

    /// Makes sure journal write `seq` is in the OS buffers. Where a flush is a `write(2)`, the
    /// caller first steps behind the tasks that are ready, so that other sessions run and add
    /// their writes: one flush then covers them all (group flush, the OS-buffer twin of group
    /// commit). Where it is a copy into the mapped log, it flushes at once: gathering would
    /// save little and cost every writing session a second poll.
    async fn flush_upto(&self, seq: u64) -> Result<()> {
        if self.inner.flushed.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        if !self.inner.store.flushes_in_place() {
            BehindReadyTasks::default().await;
        }
        self.flush_now(seq)
    }

    /// Flushes the journal up to write `seq` on the calling thread, unless done already.
    fn flush_now(&self, seq: u64) -> Result<()> {
        if self.inner.flushed.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let _one_at_a_time = self.inner.flush_lock.lock();
        if self.inner.flushed.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let target = self.inner.applied.load(Ordering::SeqCst);
        if let Err(e) = self.inner.store.persist(crate::store::PersistMode::Buffer) {
            self.inner.poison.set(format!("journal write failed: {e}"));
            return Err(e.into());
        }
        self.inner.flushed.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// Waits until write `seq` is on stable storage: through the log's direct mirror where the
    /// store has one, else through the persister's fdatasync.
    async fn wait_durable(&self, seq: u64) -> Result<()> {
        let mirror = self
            .inner
            .mirror
            .get_or_init(|| self.inner.store.start_mirror(self.inner.applied.clone()));
        let Some(mirror) = mirror else {
            return self.inner.persister.wait_synced(seq).await;
        };
        self.inner.poison.check()?;
        if let Err(e) = mirror.wait_durable(seq).await {
            self.inner.poison.set(format!("log mirror failed: {e}"));
            return Err(e.into());
        }
        Ok(())
    }

    /// Waits until every write applied so far is on stable storage.
    pub async fn sync(&self) -> Result<()> {
        let seq = self.inner.applied.load(Ordering::SeqCst);
        self.inner.persister.wait_synced(seq).await
    }

    /// Runs one pass of the reaper now (tests call this with a manual clock).
    pub fn reap_expired(&self) -> Result<usize> {
        reap(&self.inner, self)
    }

    pub fn stats(&self) -> EngineStats {
        let (versions, locks) = {
            let writer = self.inner.writer.lock();
            (writer.versions.clone(), writer.locks.len())
        };
        let keyspaces = self
            .inner
            .keyspaces
            .iter()
            .map(|(id, info)| {
                let c = &info.counters;
                KeyspaceStats {
                    id: id as KeyspaceId,
                    name: info.name.clone(),
                    keys: self.inner.store.approximate_len(info.space),
                    // Every get ends as exactly one of the three (one count per get).
                    gets: c.get(Count::CacheHits) + c.get(Count::StoreHits) + c.get(Count::Misses),
                    cache_hits: c.get(Count::CacheHits),
                    store_hits: c.get(Count::StoreHits),
                    misses: c.get(Count::Misses),
                    writes: c.get(Count::Writes),
                    deletes: c.get(Count::Deletes),
                    expired: c.get(Count::Expired),
                    version: versions.get(id).map_or(0, |v| v.0),
                }
            })
            .collect();
        let sync = self.inner.persister.counters();
        let mirror = self.inner.mirror.get().and_then(Option::as_ref);
        EngineStats {
            keyspaces,
            cache: self.inner.cache.stats(),
            watch: self.inner.hub.stats(),
            locks: locks as u64,
            applied_writes: self.inner.applied.load(Ordering::Relaxed),
            syncs: sync.syncs.load(Ordering::Relaxed),
            synced_writes: sync.synced_writes.load(Ordering::Relaxed),
            sync_seconds_total: sync.sync_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            max_sync_batch: sync.max_batch.load(Ordering::Relaxed),
            mirror_writes: mirror.map_or(0, |m| m.writes()),
            mirror_synced_writes: mirror.map_or(0, |m| m.covered()),
            poisoned: self.inner.poison.reason(),
            log: self.inner.log_store.as_ref().map(|store| store.stats()),
        }
    }

    /// Stops background work, syncs everything to disk and refuses later writes. Idempotent.
    pub fn close(&self) {
        self.shut(false);
    }

    /// [`Engine::close`], and the store lets go of its files (the directory lock) at once,
    /// while other handles on this engine may remain: a hot upgrade's new process opens the
    /// directory without waiting for every session of the old one to drop its handle. Reads
    /// fail afterwards. Returns whether the store was released (false: see the log).
    pub fn release(&self) -> bool {
        self.shut(true)
    }

    /// Checkpoints everything written so far into the ordered store, when the engine runs on
    /// the log (otherwise nothing to do): before a hot upgrade stops serving, so the close has
    /// little left to write and the next open little to replay.
    pub fn checkpoint(&self) -> Result<()> {
        match &self.inner.log_store {
            Some(store) => Ok(store.checkpoint()?),
            None => Ok(()),
        }
    }

    fn shut(&self, release: bool) -> bool {
        if self.inner.closed.swap(true, Ordering::SeqCst) && !release {
            return true;
        }
        // Wait for any apply in progress to finish before the final sync.
        drop(self.inner.writer.lock());
        // The reaper holds only a weak reference and stops at its next tick; not joined, so
        // closing never waits for its sleep.
        drop(self.inner.reaper.lock().take());
        self.inner.persister.stop();
        let closed = match release {
            true => self.inner.store.release(),
            false => self.inner.store.close(),
        };
        if let Err(e) = &closed {
            tracing::error!(error = %e, "closing the store failed");
        }
        self.inner.hub.close_all();
        closed.is_ok()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.persister.stop();
    }
}

/// Checks a condition against the current entry; `Some` is the failing outcome.
fn check(condition: &Condition, current: Option<Entry>) -> Option<Outcome> {
    let mismatch = |entry| Outcome::Mismatch {
        current: Some(Box::new(entry)),
    };
    match (condition, current) {
        (Condition::Always, _) => None,
        (Condition::Absent, None) => None,
        (Condition::Absent, Some(entry)) => Some(mismatch(entry)),
        (Condition::ValueIs(_) | Condition::VersionIs(_), None) => Some(Outcome::NotFound),
        (Condition::ValueIs(expected), Some(entry)) => {
            (entry.value != *expected).then(|| mismatch(entry))
        }
        (Condition::VersionIs(expected), Some(entry)) => {
            (entry.version != *expected).then(|| mismatch(entry))
        }
    }
}

fn start_reaper(inner: Weak<Inner>, interval: Duration) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("polykv-reaper".into())
        .spawn(move || loop {
            let step = Duration::from_millis(50).min(interval);
            let mut waited = Duration::ZERO;
            while waited < interval {
                std::thread::sleep(step);
                waited += step;
                match inner.upgrade() {
                    Some(inner) if !inner.closed.load(Ordering::Relaxed) => {}
                    _ => return,
                }
            }
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let engine = Engine { inner: strong };
            if let Err(e) = reap(&engine.inner, &engine) {
                tracing::warn!(error = %e, "expiry reaper pass failed");
            }
        })
        .ok()
}

/// One reaper pass: deletes entries whose expiry has passed and forgets expired locks.
fn reap(inner: &Inner, engine: &Engine) -> Result<usize> {
    let now = engine.now_ms().min(inner.reap_until.load(Ordering::SeqCst));
    let end = (now + 1).to_be_bytes();
    let mut removed = 0;
    loop {
        let due = inner.store.range(
            inner.expiry,
            Bound::Unbounded,
            Bound::Excluded(&end),
            SCAN_PAGE,
        )?;
        if due.is_empty() {
            break;
        }
        let count = due.len();
        for (raw, _) in due {
            let Some((at, ks, key)) = parse_expiry_key(&raw) else {
                continue;
            };
            if let (Outcome::Expired { removed: true }, _) = engine.apply(
                Command::Expire {
                    ks,
                    key,
                    expires_at: at,
                },
                Durability::Async,
            )? {
                removed += 1;
            }
        }
        if count < SCAN_PAGE {
            break;
        }
    }
    engine.apply(Command::ExpireLocks, Durability::Memory)?;
    Ok(removed)
}
