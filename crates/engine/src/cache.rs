//! The bounded in-memory tier: a sharded cache with a byte budget and CLOCK eviction.
//!
//! Every entry it holds is either in the store already (`durable`), or was written with
//! durability Memory and lives only here. Both kinds may be evicted: a durable entry can be read
//! back from the store, and Memory data is a cache by definition (nmdb CACHE_ONLY).
//!
//! An entry is kept in its stored encoding (the same bytes the log's memtable holds, shared)
//! and decoded on the way out, which costs a few nanoseconds and keeps a slot at 48 bytes where
//! a decoded entry took twice that. The slots live in the hash table itself: a lookup reads the
//! table's control bytes, the slot and the record, three places one after another, each a
//! likely CPU cache miss (a table of slot numbers beside a vector of slots was a fourth).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::Mutex;

use crate::value::{Entry, KeyedEntry};
use crate::KeyspaceId;

/// One cached key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedItem {
    pub entry: Entry,
    /// False for data written with durability Memory, which the store does not have.
    pub durable: bool,
}

struct Probe<'a> {
    ks: KeyspaceId,
    key: &'a [u8],
}

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.ks);
        state.write(self.key);
    }
}

struct Slot {
    /// The key and the entry as [`Entry::encode`] wrote it, in one allocation: a lookup
    /// compares the key on the same cache lines it then reads the entry from.
    record: KeyedEntry,
    ks: KeyspaceId,
    durable: bool,
    referenced: bool,
}

impl Slot {
    fn holds(&self, ks: KeyspaceId, key: &[u8]) -> bool {
        self.ks == ks && self.record.key() == key
    }

    /// Bytes charged to the budget.
    fn size(&self) -> usize {
        SLOT_OVERHEAD + self.record.len()
    }

    fn item(&self) -> Option<CachedItem> {
        // The cache encoded it itself; a failure would be a bug, and is treated as a miss.
        let entry = self.record.entry().ok()?;
        Some(CachedItem {
            entry,
            durable: self.durable,
        })
    }
}

/// Bytes a slot costs beyond its key and encoding: the slot itself in the table (48, and its
/// control byte) with the table's spare room (the table is 44 % to 87 % full: 16 more on
/// average), the reference count and length the record's allocation starts with (12).
const SLOT_OVERHEAD: usize = 76;

/// Most keys [`Cache::prefetch`] takes at once: a pipelined batch's worth. More would evict
/// the first ones' lines before they are read.
pub const PREFETCH_MAX: usize = 32;

/// Asks the CPU to start loading the cache line at `at` (a hint: it never faults, and
/// does nothing on other architectures).
#[inline(always)]
pub(crate) fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it does not access memory architecturally and cannot
    // fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[derive(Default)]
struct Shard {
    /// The slots, hashed by (keyspace, key).
    table: HashTable<Slot>,
    /// The CLOCK hand: a bucket number of the table.
    hand: usize,
    bytes: usize,
    /// Bumped by every write to this shard, so a reader that filled the cache from the store can
    /// tell whether a write raced with it (and must not cache what it read).
    epoch: u64,
    /// Counted under the shard's lock, which a lookup holds anyway: no atomic per lookup.
    hits: u64,
    misses: u64,
}

impl Shard {
    fn find(&self, hash: u64, ks: KeyspaceId, key: &[u8]) -> Option<&Slot> {
        self.table.find(hash, |s| s.holds(ks, key))
    }
}

/// Counters of the cache.
#[derive(Debug, Default)]
pub struct CacheCounters {
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

    fn hash(&self, ks: KeyspaceId, key: &[u8]) -> u64 {
        self.hasher.hash_one(Probe { ks, key })
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[self.shard_index(hash)]
    }

    fn shard_index(&self, hash: u64) -> usize {
        // The high bits pick the shard; the table uses the low ones inside it.
        ((hash >> 40) as usize) % self.shards.len()
    }

    /// Looks a key up, marking it recently used.
    pub fn get(&self, ks: KeyspaceId, key: &[u8]) -> Option<CachedItem> {
        let hash = self.hash(ks, key);
        let mut shard = self.shard(hash).lock();
        let item = shard
            .table
            .find_mut(hash, |s| s.holds(ks, key))
            .and_then(|slot| {
                slot.referenced = true;
                slot.item()
            });
        if item.is_some() {
            shard.hits += 1;
        } else {
            shard.misses += 1;
        }
        item
    }

    /// Starts loading the memory that looking up `keys` will read (at most [`PREFETCH_MAX`] of
    /// them), so that the lookups that follow find it in the CPU cache. A lookup reads three
    /// places one after another (the control bytes, the slot, the record), each a likely miss
    /// once the cache is larger than the CPU's: one key at a time, a pipelined batch waits for
    /// every miss in turn; this way the misses of the whole batch overlap. Changes nothing; a
    /// key that is not cached costs a table probe.
    pub fn prefetch<'k>(&self, keys: impl IntoIterator<Item = (KeyspaceId, &'k [u8])>) {
        let mut found = [(0u32, 0usize); PREFETCH_MAX];
        let mut count = 0;
        // First the control bytes: the bucket of the first slot whose hash tag matches (the key
        // itself is not compared, which would wait for the slot and the record), and the slot.
        for (ks, key) in keys.into_iter().take(PREFETCH_MAX) {
            let hash = self.hash(ks, key);
            let shard_no = self.shard_index(hash);
            let shard = self.shards[shard_no].lock();
            // Taking a reference to a slot does not read it.
            let candidate = shard.table.find_bucket_index(hash, |_| true);
            if let Some(bucket) = candidate {
                if let Some(slot) = shard.table.get_bucket(bucket) {
                    // Both ends: a 48-byte slot crosses a line boundary every other bucket, and
                    // the lookup compares the keyspace at its end.
                    let at = (slot as *const Slot).cast::<u8>();
                    prefetch(at);
                    prefetch(at.wrapping_add(std::mem::size_of::<Slot>() - 1));
                    found[count] = (shard_no as u32, bucket);
                    count += 1;
                }
            }
        }
        // Then each record, now that its slot is on its way. The table may have changed in
        // between: then this is a useless hint, never a wrong read.
        for &(shard_no, bucket) in &found[..count] {
            let shard = self.shards[shard_no as usize].lock();
            if let Some(slot) = shard.table.get_bucket(bucket) {
                slot.record.prefetch();
            }
        }
    }

    /// Like [`Cache::get`] but counts nothing and does not touch the CLOCK bit (for writers that
    /// read the current state).
    pub fn peek(&self, ks: KeyspaceId, key: &[u8]) -> Option<CachedItem> {
        let hash = self.hash(ks, key);
        let shard = self.shard(hash).lock();
        shard.find(hash, ks, key)?.item()
    }

    /// Inserts or replaces. Returns false when the item alone exceeds a shard's budget (it is
    /// then not cached, and any older item for the key is removed).
    pub fn insert(&self, ks: KeyspaceId, key: &[u8], mut item: CachedItem) -> bool {
        self.insert_keyed(ks, item.entry.encode_keyed(key), item.durable)
    }

    /// [`Cache::insert`] of a key and entry already encoded together.
    pub fn insert_keyed(&self, ks: KeyspaceId, record: KeyedEntry, durable: bool) -> bool {
        let hash = self.hash(ks, record.key());
        let mut shard = self.shard(hash).lock();
        shard.epoch += 1;
        self.insert_locked(&mut shard, hash, ks, record, durable)
    }

    /// Inserts what a reader found in the store (its raw encoding), unless a write touched the
    /// shard since the reader took `epoch` (then the read may be stale and is not cached).
    pub fn fill(&self, ks: KeyspaceId, key: &[u8], encoded: &[u8], epoch: u64) {
        let hash = self.hash(ks, key);
        let mut shard = self.shard(hash).lock();
        if shard.epoch == epoch {
            let record = KeyedEntry::new(key, encoded);
            self.insert_locked(&mut shard, hash, ks, record, true);
        }
    }

    /// The write epoch of the key's shard, to pass to [`Cache::fill`].
    pub fn epoch(&self, ks: KeyspaceId, key: &[u8]) -> u64 {
        self.shard(self.hash(ks, key)).lock().epoch
    }

    pub fn remove(&self, ks: KeyspaceId, key: &[u8]) -> Option<CachedItem> {
        let hash = self.hash(ks, key);
        let mut shard = self.shard(hash).lock();
        shard.epoch += 1;
        Self::remove_locked(&mut shard, hash, ks, key).and_then(|slot| slot.item())
    }

    fn remove_locked(shard: &mut Shard, hash: u64, ks: KeyspaceId, key: &[u8]) -> Option<Slot> {
        let found = shard.table.find_entry(hash, |s| s.holds(ks, key)).ok()?;
        let (slot, _) = found.remove();
        shard.bytes -= slot.size();
        Some(slot)
    }

    fn insert_locked(
        &self,
        shard: &mut Shard,
        hash: u64,
        ks: KeyspaceId,
        record: KeyedEntry,
        durable: bool,
    ) -> bool {
        let size = SLOT_OVERHEAD + record.len();
        // Overwriting a cached key with something that fits without evicting: replace the entry
        // in its slot (one hash lookup; the key and the slot are reused).
        let Shard { table, bytes, .. } = shard;
        if let Some(slot) = table.find_mut(hash, |s| s.holds(ks, record.key())) {
            let new_total = *bytes - slot.size() + size;
            if new_total <= self.shard_budget {
                slot.record = record;
                slot.durable = durable;
                *bytes = new_total;
                return true;
            }
        }
        Self::remove_locked(shard, hash, ks, record.key());
        if size > self.shard_budget {
            return false;
        }
        self.evict_for(shard, size);
        let slot = Slot {
            record,
            ks,
            durable,
            referenced: false,
        };
        let hasher = &self.hasher;
        shard.table.insert_unique(hash, slot, |s| {
            hasher.hash_one(Probe {
                ks: s.ks,
                key: s.record.key(),
            })
        });
        shard.bytes += size;
        true
    }

    /// CLOCK over the table's buckets: sweep the hand, giving referenced entries a second
    /// chance, until `size` fits.
    fn evict_for(&self, shard: &mut Shard, size: usize) {
        // Removing never shrinks the table: the bucket count holds for the whole sweep.
        let buckets = shard.table.num_buckets();
        let mut budget_steps = buckets * 2 + 1;
        while shard.bytes + size > self.shard_budget && budget_steps > 0 {
            budget_steps -= 1;
            if shard.table.is_empty() {
                return;
            }
            let hand = shard.hand % buckets;
            shard.hand = hand + 1;
            let Ok(mut found) = shard.table.get_bucket_entry(hand) else {
                continue;
            };
            let slot = found.get_mut();
            if slot.referenced {
                slot.referenced = false;
                continue;
            }
            let (slot, _) = found.remove();
            shard.bytes -= slot.size();
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let (mut entries, mut bytes, mut hits, mut misses) = (0u64, 0u64, 0u64, 0u64);
        for shard in self.shards.iter() {
            let shard = shard.lock();
            entries += shard.table.len() as u64;
            bytes += shard.bytes as u64;
            hits += shard.hits;
            misses += shard.misses;
        }
        CacheStats {
            entries,
            bytes,
            budget: self.budget as u64,
            hits,
            misses,
            evictions: self.counters.evictions.load(Ordering::Relaxed),
        }
    }

    /// Whether an entry of this encoded size could ever be cached.
    pub fn fits(&self, size: usize) -> bool {
        SLOT_OVERHEAD + size <= self.shard_budget
    }
}

// A slot is 48 bytes; a larger one costs a million-key cache 8 MB more per 8 bytes (more with
// the table's spare room).
const _: () = assert!(std::mem::size_of::<Slot>() == 48);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;
    use bytes::Bytes;

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
        assert!(cache.insert(1, b"a", item(b"x")));
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
    fn a_cache_that_grew_and_shrank_finds_every_key() {
        let cache = Cache::new(64 << 20, 2);
        let key = |k: u32| format!("key-{k}").into_bytes();
        for k in 0..20_000 {
            assert!(cache.insert(1, &key(k), item(&k.to_le_bytes())));
        }
        for k in (0..20_000).step_by(2) {
            assert!(cache.remove(1, &key(k)).is_some());
        }
        for k in 0..20_000 {
            let found = cache.get(1, &key(k)).map(|i| i.entry);
            let expected = (k % 2 == 1).then(|| item(&k.to_le_bytes()).entry);
            assert_eq!(found, expected, "key {k}");
        }
        assert_eq!(cache.stats().entries, 10_000);
    }

    #[test]
    fn prefetch_changes_nothing() {
        let cache = Cache::new(1 << 20, 4);
        for k in 0..100u8 {
            cache.insert(1, &[k], item(&[k; 100]));
        }
        let before = cache.stats();
        let keys: Vec<[u8; 1]> = (0..=255u8).map(|k| [k]).collect();
        // Cached and uncached keys, more than it takes at once, another keyspace.
        cache.prefetch(keys.iter().map(|k| (1, &k[..])));
        cache.prefetch(keys.iter().map(|k| (2, &k[..])));
        // Nothing counted as a hit or a miss, nothing moved.
        assert_eq!(cache.stats(), before);
        for k in 0..100u8 {
            assert_eq!(
                cache.peek(1, &[k]).map(|i| i.entry),
                Some(item(&[k; 100]).entry)
            );
        }
    }

    #[test]
    fn stays_within_budget_and_evicts() {
        let budget = 64 * 1024;
        let cache = Cache::new(budget, 2);
        for i in 0..10_000u32 {
            cache.insert(0, &i.to_be_bytes(), item(&[0u8; 100]));
            assert!(cache.stats().bytes <= budget as u64);
        }
        let stats = cache.stats();
        assert!(stats.evictions > 9_000, "{stats:?}");
        assert!(stats.entries > 100, "{stats:?}");
    }

    #[test]
    fn too_large_items_are_not_cached_and_replace_old_ones() {
        let cache = Cache::new(1024, 1);
        assert!(cache.insert(0, b"k", item(b"small")));
        assert!(!cache.insert(0, b"k", item(&[0u8; 2048])));
        assert!(cache.get(0, b"k").is_none());
        assert!(!cache.fits(2048));
        let none = Cache::new(0, 4);
        assert!(!none.insert(0, b"k", item(b"v")));
    }

    #[test]
    fn overwrites_keep_the_byte_count_exact() {
        let cache = Cache::new(4 * 200, 1);
        cache.insert(0, b"a", item(&[0u8; 80]));
        let one = cache.stats().bytes;
        // Same size, smaller, larger: replaced in place, accounted exactly.
        cache.insert(0, b"a", item(&[1u8; 80]));
        assert_eq!(cache.stats().bytes, one);
        cache.insert(0, b"a", item(&[2u8; 10]));
        assert_eq!(cache.stats().bytes, one - 70);
        cache.insert(0, b"a", item(&[3u8; 80]));
        assert_eq!((cache.stats().bytes, cache.stats().entries), (one, 1));
        assert_eq!(cache.peek(0, b"a"), Some(item(&[3u8; 80])));
        // A growth that needs eviction still evicts others and keeps the new value.
        for k in [b"b", b"c", b"d"] {
            cache.insert(0, k, item(&[0u8; 80]));
        }
        cache.insert(0, b"a", item(&[4u8; 250]));
        assert_eq!(cache.peek(0, b"a"), Some(item(&[4u8; 250])));
        assert!(cache.stats().bytes <= 800, "{:?}", cache.stats());
        assert!(cache.stats().evictions > 0);
    }

    #[test]
    fn referenced_entries_survive_a_sweep() {
        let cache = Cache::new(4 * 200, 1);
        for k in [b"a", b"b", b"c"] {
            cache.insert(0, k, item(&[0u8; 80]));
        }
        cache.get(0, b"a");
        cache.insert(0, b"d", item(&[0u8; 80]));
        cache.insert(0, b"e", item(&[0u8; 80]));
        assert!(cache.peek(0, b"a").is_some(), "recently used entry kept");
    }

    #[test]
    fn fill_is_skipped_after_a_racing_write() {
        let cache = Cache::new(1 << 20, 1);
        let epoch = cache.epoch(0, b"k");
        cache.insert(0, b"k", item(b"new"));
        cache.fill(0, b"k", &item(b"stale").entry.encode(), epoch);
        assert_eq!(cache.peek(0, b"k"), Some(item(b"new")));
        let epoch = cache.epoch(0, b"j");
        cache.fill(0, b"j", &item(b"fresh").entry.encode(), epoch);
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
                        let cached = cache.insert(ks as u32, &model_key(k), value.clone());
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
