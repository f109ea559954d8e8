//! A store wrapper that fails or freezes the Nth write batch or sync, for tests of the engine's
//! error handling (the approach of redb's and fjall's own crash tests).

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::{BatchOp, PersistMode, SpaceId, Store};
use crate::error::StoreError;

/// Which operations misbehave. Counts start at 1; 0 means never.
#[derive(Debug, Default, Clone, Copy)]
pub struct FaultPlan {
    pub fail_write: u64,
    pub fail_sync: u64,
    pub freeze_write: u64,
    pub freeze_sync: u64,
}

pub struct FaultyStore<S: Store> {
    inner: Arc<S>,
    plan: Mutex<FaultPlan>,
    writes: AtomicU64,
    syncs: AtomicU64,
    frozen: Mutex<bool>,
    thaw: Condvar,
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: Arc<S>, plan: FaultPlan) -> Self {
        FaultyStore {
            inner,
            plan: Mutex::new(plan),
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            frozen: Mutex::new(false),
            thaw: Condvar::new(),
        }
    }

    pub fn set_plan(&self, plan: FaultPlan) {
        *self.plan.lock() = plan;
    }

    /// Write batches and syncs seen so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::SeqCst),
            self.syncs.load(Ordering::SeqCst),
        )
    }

    /// Whether an operation is currently held frozen.
    pub fn is_frozen(&self) -> bool {
        *self.frozen.lock()
    }

    /// Lets a frozen operation go on.
    pub fn thaw(&self) {
        *self.frozen.lock() = false;
        self.thaw.notify_all();
    }

    fn freeze(&self) {
        let mut frozen = self.frozen.lock();
        *frozen = true;
        while *frozen {
            self.thaw.wait(&mut frozen);
        }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn open_space(&self, name: &str) -> Result<SpaceId, StoreError> {
        self.inner.open_space(name)
    }

    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.inner.get(space, key)
    }

    fn write_batch(&self, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let plan = *self.plan.lock();
        if plan.freeze_write == n {
            self.freeze();
        }
        if plan.fail_write == n {
            return Err(StoreError::Injected("write failed"));
        }
        self.inner.write_batch(ops)
    }

    fn range(
        &self,
        space: SpaceId,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StoreError> {
        self.inner.range(space, start, end, limit)
    }

    fn persist(&self, mode: PersistMode) -> Result<(), StoreError> {
        if mode == PersistMode::SyncData {
            let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
            let plan = *self.plan.lock();
            if plan.freeze_sync == n {
                self.freeze();
            }
            if plan.fail_sync == n {
                return Err(StoreError::Injected("sync failed"));
            }
        }
        self.inner.persist(mode)
    }

    fn flushes_in_place(&self) -> bool {
        self.inner.flushes_in_place()
    }

    fn approximate_len(&self, space: SpaceId) -> u64 {
        self.inner.approximate_len(space)
    }
}
