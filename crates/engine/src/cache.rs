//! The bounded in-memory tier: a sharded cache with a byte budget and CLOCK eviction.
//!
//! Every entry it holds is either in the store already (`durable`), or was written with
//! durability Memory and lives only here. Both kinds may be evicted: a durable entry can be read
//! back from the store, and Memory data is a cache by definition (nmdb CACHE_ONLY).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hashbrown::{Equivalent, HashMap};
use parking_lot::Mutex;

use crate::value::Entry;
use crate::KeyspaceId;

/// One cached key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedItem {
    pub entry: Entry,
    /// False for data written with durability Memory, which the store does not have.
    pub durable: bool,
}

#[derive(Clone, PartialEq, Eq)]
struct CacheKey {
    ks: KeyspaceId,
    key: Bytes,
}

struct Probe<'a> {
    ks: KeyspaceId,
    key: &'a [u8],
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Probe {
            ks: self.ks,
            key: &self.key,
        }
        .hash(state)
    }
}

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.ks);
        state.write(self.key);
    }
}

impl Equivalent<CacheKey> for Probe<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        self.ks == key.ks && self.key == key.key.as_ref()
    }
}

struct Slot {
    key: CacheKey,
    item: CachedItem,
    size: usize,
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<CacheKey, usize, foldhash::quality::FixedState>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    hand: usize,
    bytes: usize,
    /// Bumped by every write to this shard, so a reader that filled the cache from the store can
    /// tell whether a write raced with it (and must not cache what it read).
    epoch: u64,
}

/// Counters of the cache.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

/// A point-in-time view of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub budget: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

pub struct Cache {
    shards: Box<[Mutex<Shard>]>,
    shard_budget: usize,
    budget: usize,
    hasher: foldhash::quality::FixedState,
    counters: CacheCounters,
}

impl Cache {
    /// A cache holding at most `budget` bytes, split evenly over `shards` shards.
    pub fn new(budget: usize, shards: usize) -> Self {
        let shards = shards.clamp(1, 1024);
        Cache {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            shard_budget: budget / shards,
            budget,
            hasher: foldhash::quality::FixedState::with_seed(0x706f_6c79_6b76),
            counters: CacheCounters::default(),
        }
    }

    fn shard(&self, ks: KeyspaceId, key: &[u8]) -> &Mutex<Shard> {
        let hash = self.hasher.hash_one(Probe { ks, key });
        // The high bits pick the shard; hashbrown uses the low ones inside it.
        let index = ((hash >> 40) as usize) % self.shards.len();
        &self.shards[index]
    }

    /// Looks a key up, marking it recently used.
    pub fn get(&self, ks: KeyspaceId, key: &[u8]) -> Option<CachedItem> {
        let mut shard = self.shard(ks, key).lock();
        let found = shard.map.get(&Probe { ks, key }).copied();
        let item = found.and_then(|index| {
            let slot = shard.slots.get_mut(index)?.as_mut()?;
            slot.referenced = true;
            Some(slot.item.clone())
        });
        drop(shard);
        let counter = if item.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        item
    }

    /// Like [`Cache::get`] but counts nothing and does not touch the CLOCK bit (for writers that
    /// read the current state).
    pub fn peek(&self, ks: KeyspaceId, key: &[u8]) -> Option<CachedItem> {
        let shard = self.shard(ks, key).lock();
        let index = *shard.map.get(&Probe { ks, key })?;
        shard.slots.get(index)?.as_ref().map(|s| s.item.clone())
    }

    /// Inserts or replaces. Returns false when the item alone exceeds a shard's budget (it is
    /// then not cached, and any older item for the key is removed).
    pub fn insert(&self, ks: KeyspaceId, key: Bytes, item: CachedItem) -> bool {
        let mut shard = self.shard(ks, &key).lock();
        shard.epoch += 1;
        self.insert_locked(&mut shard, ks, key, item)
    }

    /// Inserts what a reader found in the store, unless a write touched the shard since the
    /// reader took `epoch` (then the read may be stale and is not cached).
    pub fn fill(&self, ks: KeyspaceId, key: Bytes, item: CachedItem, epoch: u64) {
        let mut shard = self.shard(ks, &key).lock();
        if shard.epoch == epoch {
            self.insert_locked(&mut shard, ks, key, item);
        }
    }

    /// The write epoch of the key's shard, to pass to [`Cache::fill`].
    pub fn epoch(&self, ks: KeyspaceId, key: &[u8]) -> u64 {
        self.shard(ks, key).lock().epoch
    }

    pub fn remove(&self, ks: KeyspaceId, key: &[u8]) -> Option<CachedItem> {
        let mut shard = self.shard(ks, key).lock();
        shard.epoch += 1;
        Self::remove_locked(&mut shard, ks, key)
    }

    fn remove_locked(shard: &mut Shard, ks: KeyspaceId, key: &[u8]) -> Option<CachedItem> {
        let index = shard.map.remove(&Probe { ks, key })?;
        let slot = shard.slots.get_mut(index)?.take()?;
        shard.bytes -= slot.size;
        shard.free.push(index);
        Some(slot.item)
    }

    fn insert_locked(
        &self,
        shard: &mut Shard,
        ks: KeyspaceId,
        key: Bytes,
        item: CachedItem,
    ) -> bool {
        let size = item.entry.footprint(key.len());
        // Overwriting a cached key with something that fits without evicting: replace the item
        // in its slot (one hash lookup; the key and the slot are reused).
        if let Some(&index) = shard.map.get(&Probe { ks, key: &key }) {
            let bytes = shard.bytes;
            if let Some(slot) = shard.slots.get_mut(index).and_then(Option::as_mut) {
                if bytes - slot.size + size <= self.shard_budget {
                    shard.bytes = bytes - slot.size + size;
                    slot.item = item;
                    slot.size = size;
                    return true;
                }
            }
        }
        Self::remove_locked(shard, ks, &key);
        if size > self.shard_budget {
            return false;
        }
        self.evict_for(shard, size);
        let slot = Slot {
            key: CacheKey { ks, key },
            item,
            size,
            referenced: false,
        };
        let cache_key = slot.key.clone();
        let index = match shard.free.pop() {
            Some(index) => {
                shard.slots[index] = Some(slot);
                index
            }
            None => {
                shard.slots.push(Some(slot));
                shard.slots.len() - 1
            }
        };
        shard.map.insert(cache_key, index);
        shard.bytes += size;
        true
    }

    /// CLOCK: sweep the hand, giving referenced entries a second chance, until `size` fits.
    fn evict_for(&self, shard: &mut Shard, size: usize) {
        let mut budget_steps = shard.slots.len() * 2 + 1;
        while shard.bytes + size > self.shard_budget && budget_steps > 0 {
            budget_steps -= 1;
            if shard.slots.is_empty() {
                return;
            }
            let hand = shard.hand % shard.slots.len();
            shard.hand = hand + 1;
            let victim = match &mut shard.slots[hand] {
                None => continue,
                Some(slot) if slot.referenced => {
                    slot.referenced = false;
                    continue;
                }
                Some(slot) => slot.key.clone(),
            };
            Self::remove_locked(shard, victim.ks, &victim.key);
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let (mut entries, mut bytes) = (0u64, 0u64);
        for shard in self.shards.iter() {
            let shard = shard.lock();
            entries += shard.map.len() as u64;
            bytes += shard.bytes as u64;
        }
        CacheStats {
            entries,
            bytes,
            budget: self.budget as u64,
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
        }
    }

    /// Whether an item of this size could ever be cached.
    pub fn fits(&self, size: usize) -> bool {
        size <= self.shard_budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn item(value: &[u8]) -> CachedItem {
        CachedItem {
            entry: Entry {
                value: Value::from(value),
                version: 1,
                expires_at: None,
                owner: None,
                label: None,
            },
            durable: true,
        }
    }

    #[test]
    fn get_insert_remove() {
        let cache = Cache::new(1 << 20, 4);
        assert!(cache.get(1, b"a").is_none());
        assert!(cache.insert(1, Bytes::from("a"), item(b"x")));
        assert_eq!(cache.get(1, b"a"), Some(item(b"x")));
        assert!(cache.get(2, b"a").is_none(), "keyspaces are separate");
        assert!(cache.remove(1, b"a").is_some());
        assert!(cache.get(1, b"a").is_none());
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.entries, stats.bytes),
            (1, 3, 0, 0)
        );
    }

    #[test]
    fn stays_within_budget_and_evicts() {
        let budget = 64 * 1024;
        let cache = Cache::new(budget, 2);
        for i in 0..10_000u32 {
            cache.insert(0, Bytes::from(i.to_be_bytes().to_vec()), item(&[0u8; 100]));
            assert!(cache.stats().bytes <= budget as u64);
        }
        let stats = cache.stats();
        assert!(stats.evictions > 9_000, "{stats:?}");
        assert!(stats.entries > 100, "{stats:?}");
    }

    #[test]
    fn too_large_items_are_not_cached_and_replace_old_ones() {
        let cache = Cache::new(1024, 1);
        assert!(cache.insert(0, Bytes::from("k"), item(b"small")));
        assert!(!cache.insert(0, Bytes::from("k"), item(&[0u8; 2048])));
        assert!(cache.get(0, b"k").is_none());
        assert!(!cache.fits(2048));
        let none = Cache::new(0, 4);
        assert!(!none.insert(0, Bytes::from("k"), item(b"v")));
    }

    #[test]
    fn overwrites_keep_the_byte_count_exact() {
        let cache = Cache::new(4 * 200, 1);
        cache.insert(0, Bytes::from("a"), item(&[0u8; 80]));
        let one = cache.stats().bytes;
        // Same size, smaller, larger: replaced in place, accounted exactly.
        cache.insert(0, Bytes::from("a"), item(&[1u8; 80]));
        assert_eq!(cache.stats().bytes, one);
        cache.insert(0, Bytes::from("a"), item(&[2u8; 10]));
        assert_eq!(cache.stats().bytes, one - 70);
        cache.insert(0, Bytes::from("a"), item(&[3u8; 80]));
        assert_eq!((cache.stats().bytes, cache.stats().entries), (one, 1));
        assert_eq!(cache.peek(0, b"a"), Some(item(&[3u8; 80])));
        // A growth that needs eviction still evicts others and keeps the new value.
        for k in [b"b", b"c", b"d"] {
            cache.insert(0, Bytes::copy_from_slice(k), item(&[0u8; 80]));
        }
        cache.insert(0, Bytes::from("a"), item(&[4u8; 250]));
        assert_eq!(cache.peek(0, b"a"), Some(item(&[4u8; 250])));
        assert!(cache.stats().bytes <= 800, "{:?}", cache.stats());
        assert!(cache.stats().evictions > 0);
    }

    #[test]
    fn referenced_entries_survive_a_sweep() {
        let cache = Cache::new(4 * 200, 1);
        for k in [b"a", b"b", b"c"] {
            cache.insert(0, Bytes::copy_from_slice(k), item(&[0u8; 80]));
        }
        cache.get(0, b"a");
        cache.insert(0, Bytes::from("d"), item(&[0u8; 80]));
        cache.insert(0, Bytes::from("e"), item(&[0u8; 80]));
        assert!(cache.peek(0, b"a").is_some(), "recently used entry kept");
    }

    #[test]
    fn fill_is_skipped_after_a_racing_write() {
        let cache = Cache::new(1 << 20, 1);
        let epoch = cache.epoch(0, b"k");
        cache.insert(0, Bytes::from("k"), item(b"new"));
        cache.fill(0, Bytes::from("k"), item(b"stale"), epoch);
        assert_eq!(cache.peek(0, b"k"), Some(item(b"new")));
        let epoch = cache.epoch(0, b"j");
        cache.fill(0, Bytes::from("j"), item(b"fresh"), epoch);
        assert_eq!(cache.peek(0, b"j"), Some(item(b"fresh")));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8, usize),
        Remove(u8, u8),
        Get(u8, u8),
    }

    /// Keys of 1 to 40 bytes (used in two keyspaces).
    fn model_key(k: u8) -> Bytes {
        Bytes::from(vec![k; (k as usize % 40) + 1])
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..2, 0u8..40, 0usize..300).prop_map(|(ks, k, n)| Op::Insert(ks, k, n)),
            (0u8..2, 0u8..40).prop_map(|(ks, k)| Op::Remove(ks, k)),
            (0u8..2, 0u8..40).prop_map(|(ks, k)| Op::Get(ks, k)),
        ]
    }

    proptest::proptest! {
        /// With room for everything the cache is a map; with little room it may forget keys but
        /// never returns a stale or foreign value and never exceeds its budget.
        #[test]
        fn behaves_like_a_map_that_may_forget(
            ops in proptest::collection::vec(op(), 1..400),
            small in proptest::bool::ANY,
        ) {
            let budget = if small { 2_000 } else { 1 << 20 };
            let cache = Cache::new(budget, 2);
            let mut model: std::collections::HashMap<(u32, Bytes), CachedItem> = Default::default();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(ks, k, n) => {
                        let mut value = item(&vec![k; n]);
                        value.entry.version = i as u64;
                        let cached = cache.insert(ks as u32, model_key(k), value.clone());
                        proptest::prop_assert!(cached || small);
                        if cached {
                            model.insert((ks as u32, model_key(k)), value);
                        } else {
                            model.remove(&(ks as u32, model_key(k)));
                        }
                    }
                    Op::Remove(ks, k) => {
                        let removed = cache.remove(ks as u32, &model_key(k));
                        let expected = model.remove(&(ks as u32, model_key(k)));
                        if small {
                            proptest::prop_assert!(removed.is_none() || removed == expected);
                        } else {
                            proptest::prop_assert_eq!(removed, expected);
                        }
                    }
                    Op::Get(ks, k) => {
                        let got = cache.get(ks as u32, &model_key(k));
                        let expected = model.get(&(ks as u32, model_key(k))).cloned();
                        if small {
                            proptest::prop_assert!(got.is_none() || got == expected);
                        } else {
                            proptest::prop_assert_eq!(got, expected);
                        }
                    }
                }
                let stats = cache.stats();
                proptest::prop_assert!(stats.bytes <= budget as u64, "{:?}", stats);
                if !small {
                    proptest::prop_assert_eq!(stats.entries, model.len() as u64);
                }
            }
        }
    }
}
