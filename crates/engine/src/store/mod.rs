//! The durable ordered store under the engine, behind a narrow trait.
//!
//! Implementations: [`FjallStore`] (the real one), [`MemoryStore`] (a model for tests) and
//! [`FaultyStore`] (a wrapper that fails or freezes the Nth write or sync).

use std::ops::Bound;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::StoreError;

mod fault;
mod fjall_store;
mod log_store;
mod memory;
mod overlay;

pub use fault::{FaultPlan, FaultyStore};
pub use fjall_store::{FjallStore, DEFAULT_MEMTABLE_BYTES, MAX_KEY_LEN};
pub use log_store::{LogStore, LogStoreConfig, LogStoreStats};
pub use memory::MemoryStore;

/// A named partition of the store (a keyspace, the metadata, the expiry index).
pub type SpaceId = u32;

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        space: SpaceId,
        key: Bytes,
        value: Bytes,
    },
    Delete {
        space: SpaceId,
        key: Bytes,
    },
}

/// How far [`Store::persist`] pushes written data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistMode {
    /// Into the operating system's buffers: survives a process crash.
    Buffer,
    /// Onto stable storage (fdatasync): survives a power loss.
    SyncData,
}

/// The operations the engine needs from a store. Writes are atomic per batch and visible to
/// reads at once; durability comes from [`Store::persist`].
pub trait Store: Send + Sync + 'static {
    /// Opens (creating if needed) the space with this name.
    fn open_space(&self, name: &str) -> Result<SpaceId, StoreError>;
    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Bytes>, StoreError>;
    /// Applies every op of the batch atomically.
    fn write_batch(&self, ops: Vec<BatchOp>) -> Result<(), StoreError>;
    /// [`Store::write_batch`] of the ops in `ops`, which it leaves empty with its capacity, so
    /// that a writer can reuse one buffer: a fresh one per write was an allocation that found
    /// a cold block (about 80 ns of a SET at depth 1).
    fn write_ops(&self, ops: &mut Vec<BatchOp>) -> Result<(), StoreError> {
        self.write_batch(std::mem::take(ops))
    }
    /// Starts loading the memory that writing these keys of a space will touch, so that a
    /// pipelined batch of writes waits for its cache misses together instead of one after
    /// another. A hint: it changes nothing, and stores without such memory ignore it.
    fn prefetch_writes(&self, _space: SpaceId, _keys: &mut dyn Iterator<Item = &[u8]>) {}
    /// Up to `limit` pairs with keys in the range, in ascending unsigned byte order.
    fn range(
        &self,
        space: SpaceId,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StoreError>;
    fn persist(&self, mode: PersistMode) -> Result<(), StoreError>;
    /// Whether `persist(Buffer)` costs no system call now (the log's segment is mapped): a
    /// writer then flushes its own write at once instead of gathering the ready tasks' writes
    /// into one flush.
    fn flushes_in_place(&self) -> bool {
        false
    }

    /// Starts a direct mirror of the store's log, by which Sync writes become durable without
    /// an fdatasync ([`crate::log::mirror`]); `applied` numbers the writes as the caller waits
    /// for them. Called once, on the async runtime; `None` where the store has no such log or
    /// the mirror cannot work here.
    fn start_mirror(&self, _applied: Arc<AtomicU64>) -> Option<Arc<crate::log::mirror::Mirror>> {
        None
    }
    /// Approximate number of keys in the space (for statistics).
    fn approximate_len(&self, space: SpaceId) -> u64;

    /// Writes a run of entries in strictly ascending key order (`None` deletes), durably once
    /// `persist(SyncData)` returns. Stores that can write such a run straight into their tables
    /// (fjall's ingestion) override this; the default is one batch.
    fn ingest(
        &self,
        space: SpaceId,
        entries: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>,
    ) -> Result<(), StoreError> {
        let ops = entries
            .map(|(key, value)| match value {
                Some(value) => BatchOp::Put {
                    space,
                    key: Bytes::copy_from_slice(key),
                    value: Bytes::copy_from_slice(value),
                },
                None => BatchOp::Delete {
                    space,
                    key: Bytes::copy_from_slice(key),
                },
            })
            .collect();
        self.write_batch(ops)
    }

    /// Stops background work and makes everything written durable. Later calls do nothing.
    fn close(&self) -> Result<(), StoreError> {
        self.persist(PersistMode::SyncData)
    }

    /// [`Store::close`], then lets go of the store's files (its directory lock included) at
    /// once, even while other handles on the store remain: another process can open the same
    /// directory without waiting for every holder to drop. Nothing is answered afterwards.
    /// Stores without files only close.
    fn release(&self) -> Result<(), StoreError> {
        self.close()
    }

    fn put(&self, space: SpaceId, key: Bytes, value: Bytes) -> Result<(), StoreError> {
        self.write_batch(vec![BatchOp::Put { space, key, value }])
    }
    fn delete(&self, space: SpaceId, key: Bytes) -> Result<(), StoreError> {
        self.write_batch(vec![BatchOp::Delete { space, key }])
    }
}

/// The smallest key strictly greater than every key that starts with `prefix`, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    fn exercise(store: &dyn Store) {
        let a = store.open_space("a").unwrap();
        let b = store.open_space("b").unwrap();
        assert_eq!(store.open_space("a").unwrap(), a);
        store
            .write_batch(vec![
                BatchOp::Put {
                    space: a,
                    key: "k2".into(),
                    value: "2".into(),
                },
                BatchOp::Put {
                    space: a,
                    key: "k1".into(),
                    value: "1".into(),
                },
                BatchOp::Put {
                    space: b,
                    key: "k1".into(),
                    value: "b".into(),
                },
            ])
            .unwrap();
        assert_eq!(store.get(a, b"k1").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(store.get(b, b"k1").unwrap().as_deref(), Some(&b"b"[..]));
        let all = store
            .range(a, Bound::Unbounded, Bound::Unbounded, 10)
            .unwrap();
        let keys: Vec<_> = all.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![Bytes::from("k1"), Bytes::from("k2")]);
        let after = store
            .range(a, Bound::Excluded(b"k1"), Bound::Unbounded, 10)
            .unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(
            store
                .range(a, Bound::Unbounded, Bound::Unbounded, 1)
                .unwrap()
                .len(),
            1
        );
        store.delete(a, "k1".into()).unwrap();
        assert_eq!(store.get(a, b"k1").unwrap(), None);
        // Empty keys are keys like any other.
        store.put(a, Bytes::new(), "empty".into()).unwrap();
        assert_eq!(store.get(a, b"").unwrap().as_deref(), Some(&b"empty"[..]));
        let first = store
            .range(a, Bound::Unbounded, Bound::Unbounded, 1)
            .unwrap();
        assert_eq!(first[0].0, Bytes::new());
        store.persist(PersistMode::SyncData).unwrap();
    }

    #[test]
    fn memory_store_behaves() {
        exercise(&MemoryStore::new());
    }

    #[test]
    fn fjall_store_refuses_overlong_keys_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path()).unwrap();
        let a = store.open_space("a").unwrap();
        let longest = Bytes::from(vec![1u8; MAX_KEY_LEN]);
        store.put(a, longest.clone(), "v".into()).unwrap();
        assert!(store.get(a, &longest).unwrap().is_some());
        let too_long = Bytes::from(vec![1u8; MAX_KEY_LEN + 1]);
        assert!(store.put(a, too_long.clone(), "v".into()).is_err());
        assert!(store.get(a, &too_long).is_err());
    }

    #[test]
    fn fjall_store_behaves_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FjallStore::open(dir.path()).unwrap();
            exercise(&store);
        }
        let store = FjallStore::open(dir.path()).unwrap();
        let a = store.open_space("a").unwrap();
        assert_eq!(store.get(a, b"k2").unwrap().as_deref(), Some(&b"2"[..]));
    }
}
