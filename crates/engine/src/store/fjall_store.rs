//! The store on fjall: one fjall keyspace per space, one database per data directory.

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use parking_lot::{Mutex, RwLock};

use super::{BatchOp, PersistMode, SpaceId, Store};
use crate::error::StoreError;

pub struct FjallStore {
    /// `None` once released (see [`Store::release`]): fjall's directory lock goes with it.
    db: RwLock<Option<Database>>,
    dir: PathBuf,
    spaces: RwLock<Vec<(String, Keyspace)>>,
    /// Our own handle on the active journal file, for syncing it without holding fjall's
    /// journal lock (see `persist`).
    journal: Mutex<Option<(PathBuf, File)>>,
    /// Memtable size of spaces created from now on (fjall keeps it with each space).
    memtable_bytes: u64,
}

fn released() -> StoreError {
    StoreError::Refused("the store was released".into())
}

fn io(e: fjall::Error) -> StoreError {
    StoreError::io("fjall", e)
}

/// Every key is stored behind this byte: fjall (lsm-tree) refuses empty keys with a panic, and
/// the protocols allow them. The prefix keeps the byte order of keys.
const KEY_TAG: u8 = b'k';

/// fjall's block cache.
const BLOCK_CACHE_BYTES: u64 = 32 << 20;
/// fjall's default memtable size per space. Smaller ones bound memory but flush more often,
/// which on a busy single core showed as a 3–4× higher p99 for writes.
pub const DEFAULT_MEMTABLE_BYTES: u64 = 64 << 20;

/// Longest key the store accepts (fjall's limit is 65 535 bytes, one of which is the tag).
pub const MAX_KEY_LEN: usize = 65_534;

fn tagged(key: &[u8]) -> Result<Vec<u8>, StoreError> {
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::Refused(format!(
            "key of {} bytes is longer than {MAX_KEY_LEN}",
            key.len()
        )));
    }
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(KEY_TAG);
    out.extend_from_slice(key);
    Ok(out)
}

impl FjallStore {
    /// Opens or creates the database in `path`, replaying its journal.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, DEFAULT_MEMTABLE_BYTES)
    }

    /// [`Self::open`], creating new spaces with memtables of `memtable_bytes` (at least 1 MiB).
    pub fn open_with(path: &Path, memtable_bytes: u64) -> Result<Self, StoreError> {
        // Batches stay in fjall's journal buffer until `persist`: the engine flushes them to the
        // OS once for a whole group of writes (see `Engine::flush_upto`) instead of one write
        // system call per batch; fdatasync is the persister's job.
        let db = Database::builder(path)
            .manual_journal_persist(true)
            // fjall's block cache (its default, made explicit: it is part of the memory budget).
            .cache_size(BLOCK_CACHE_BYTES)
            .open()
            .map_err(io)?;
        Ok(FjallStore {
            db: RwLock::new(Some(db)),
            dir: path.to_path_buf(),
            spaces: RwLock::new(Vec::new()),
            journal: Mutex::new(None),
            memtable_bytes: memtable_bytes.max(1 << 20),
        })
    }

    /// The active journal: the `N.jnl` file with the highest N.
    fn newest_journal(&self) -> Result<PathBuf, StoreError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| StoreError::io(format!("list {}", self.dir.display()), e))?;
        entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = entry.file_name();
                let id: u64 = name.to_str()?.strip_suffix(".jnl")?.parse().ok()?;
                Some((id, entry.path()))
            })
            .max_by_key(|(id, _)| *id)
            .map(|(_, path)| path)
            .ok_or_else(|| StoreError::Refused(format!("no journal in {}", self.dir.display())))
    }

    /// The database, unless it was released.
    fn db(&self) -> Result<Database, StoreError> {
        self.db.read().clone().ok_or_else(released)
    }

    fn space(&self, space: SpaceId) -> Result<Keyspace, StoreError> {
        self.spaces
            .read()
            .get(space as usize)
            .map(|(_, ks)| ks.clone())
            .ok_or_else(|| StoreError::Refused(format!("unknown space {space}")))
    }
}

impl Store for FjallStore {
    fn open_space(&self, name: &str) -> Result<SpaceId, StoreError> {
        let mut spaces = self.spaces.write();
        if let Some(id) = spaces.iter().position(|(n, _)| n == name) {
            return Ok(id as SpaceId);
        }
        if name.is_empty() || name.len() > 200 {
            return Err(StoreError::Refused(format!("invalid space name {name:?}")));
        }
        let keyspace = self
            .db()?
            .keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(self.memtable_bytes)
            })
            .map_err(io)?;
        spaces.push((name.to_string(), keyspace));
        Ok((spaces.len() - 1) as SpaceId)
    }

    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let value = self.space(space)?.get(tagged(key)?).map_err(io)?;
        Ok(value.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn write_batch(&self, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let spaces = self.spaces.read();
        let handle = |space: SpaceId| {
            spaces
                .get(space as usize)
                .map(|(_, ks)| ks)
                .ok_or_else(|| StoreError::Refused(format!("unknown space {space}")))
        };
        let mut batch = self.db()?.batch();
        for op in ops {
            match op {
                BatchOp::Put { space, key, value } => {
                    batch.insert(handle(space)?, tagged(&key)?, value.as_ref())
                }
                BatchOp::Delete { space, key } => batch.remove(handle(space)?, tagged(&key)?),
            }
        }
        batch.commit().map_err(io)
    }

    /// fjall's ingestion: the run is written straight into new tables (no memtable, no journal),
    /// fsynced, and registered newer than everything before it.
    fn ingest(
        &self,
        space: SpaceId,
        entries: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>,
    ) -> Result<(), StoreError> {
        let keyspace = self.space(space)?;
        let mut ingestion = keyspace.start_ingestion().map_err(io)?;
        for (key, value) in entries {
            match value {
                Some(value) => ingestion.write(tagged(key)?, value).map_err(io)?,
                None => ingestion.write_tombstone(tagged(key)?).map_err(io)?,
            }
        }
        ingestion.finish().map_err(io)
    }

    fn range(
        &self,
        space: SpaceId,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StoreError> {
        let keyspace = self.space(space)?;
        let bound =
            |b: Bound<&[u8]>, unbounded: Bound<Vec<u8>>| -> Result<Bound<Vec<u8>>, StoreError> {
                Ok(match b {
                    Bound::Included(k) => Bound::Included(tagged(k)?),
                    Bound::Excluded(k) => Bound::Excluded(tagged(k)?),
                    Bound::Unbounded => unbounded,
                })
            };
        let start = bound(start, Bound::Included(vec![KEY_TAG]))?;
        let end = bound(end, Bound::Excluded(vec![KEY_TAG + 1]))?;
        let mut out = Vec::new();
        for guard in keyspace.range::<Vec<u8>, _>((start, end)).take(limit) {
            let (k, v) = guard.into_inner().map_err(io)?;
            let key = k.get(1..).unwrap_or_default();
            out.push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(&v)));
        }
        Ok(out)
    }

    /// `SyncData` flushes fjall's journal buffer (under its journal lock, which is quick) and then
    /// fdatasyncs the active journal file through our own file handle, outside that lock. fjall
    /// holds its journal lock for the whole fsync in `Database::persist(SyncData)`, which would
    /// stop every writer for the length of each group commit; this way writes keep flowing into
    /// the next batch while the current one syncs. A journal sealed by rotation was synced by
    /// fjall before the new one was created, so syncing the newest file covers everything.
    fn persist(&self, mode: PersistMode) -> Result<(), StoreError> {
        self.db()?.persist(fjall::PersistMode::Buffer).map_err(io)?;
        if mode == PersistMode::Buffer {
            return Ok(());
        }
        let newest = self.newest_journal()?;
        let mut cached = self.journal.lock();
        if cached.as_ref().is_none_or(|(path, _)| *path != newest) {
            let file = File::open(&newest)
                .map_err(|e| StoreError::io(format!("open journal {}", newest.display()), e))?;
            *cached = Some((newest, file));
        }
        match cached.as_ref() {
            Some((path, file)) => file
                .sync_data()
                .map_err(|e| StoreError::io(format!("fdatasync {}", path.display()), e)),
            None => Err(StoreError::Refused("no journal file".into())),
        }
    }

    fn approximate_len(&self, space: SpaceId) -> u64 {
        self.space(space)
            .map(|ks| ks.approximate_len() as u64)
            .unwrap_or(0)
    }

    /// Syncs, then drops our handles on the database (each keyspace holds fjall's directory
    /// lock too): the lock goes with the last of them, not with the last handle on this store.
    fn release(&self) -> Result<(), StoreError> {
        if self.db.read().is_none() {
            return Ok(());
        }
        let synced = self.persist(PersistMode::SyncData);
        // One lock at a time: `write_batch` takes the spaces' and then the database's.
        let spaces = std::mem::take(&mut *self.spaces.write());
        let db = self.db.write().take();
        self.journal.lock().take();
        drop(spaces);
        drop(db);
        synced
    }
}
