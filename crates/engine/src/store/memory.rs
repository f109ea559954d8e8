//! An in-memory model store: a `BTreeMap` per space. Writes are "durable" at once.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use parking_lot::RwLock;

use super::{BatchOp, PersistMode, SpaceId, Store};
use crate::error::StoreError;

#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    names: Vec<String>,
    spaces: Vec<BTreeMap<Bytes, Bytes>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn open_space(&self, name: &str) -> Result<SpaceId, StoreError> {
        let mut inner = self.inner.write();
        if let Some(id) = inner.names.iter().position(|n| n == name) {
            return Ok(id as SpaceId);
        }
        inner.names.push(name.to_string());
        inner.spaces.push(BTreeMap::new());
        Ok((inner.spaces.len() - 1) as SpaceId)
    }

    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let inner = self.inner.read();
        let map = inner
            .spaces
            .get(space as usize)
            .ok_or(StoreError::Injected("unknown space"))?;
        Ok(map.get(key).cloned())
    }

    fn write_batch(&self, ops: Vec<BatchOp>) -> Result<(), StoreError> {
        let mut inner = self.inner.write();
        let count = inner.spaces.len();
        let known = |space: SpaceId| (space as usize) < count;
        if !ops.iter().all(|op| match op {
            BatchOp::Put { space, .. } | BatchOp::Delete { space, .. } => known(*space),
        }) {
            return Err(StoreError::Injected("unknown space"));
        }
        for op in ops {
            match op {
                BatchOp::Put { space, key, value } => {
                    inner.spaces[space as usize].insert(key, value);
                }
                BatchOp::Delete { space, key } => {
                    inner.spaces[space as usize].remove(&key);
                }
            }
        }
        Ok(())
    }

    fn range(
        &self,
        space: SpaceId,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, StoreError> {
        let inner = self.inner.read();
        let map = inner
            .spaces
            .get(space as usize)
            .ok_or(StoreError::Injected("unknown space"))?;
        Ok(map
            .range::<[u8], _>((start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn persist(&self, _mode: PersistMode) -> Result<(), StoreError> {
        Ok(())
    }

    fn approximate_len(&self, space: SpaceId) -> u64 {
        self.inner
            .read()
            .spaces
            .get(space as usize)
            .map_or(0, |m| m.len() as u64)
    }
}
