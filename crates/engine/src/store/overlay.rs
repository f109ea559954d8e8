//! The log-first store's overlay: writes the inner store has not taken yet.
//!
//! The active memtable takes every write: one hash map per space, so a write costs one hash
//! insert (an ordered tree cost four times that on the request path: 29 % of the server at
//! depth 16). Order is only needed by scans and checkpoints, which are rare, so it is computed
//! when a memtable is sealed (frozen): once, off the request path, and shared by every later
//! scan and by the checkpoint that moves it into the store.

use std::ops::Bound;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::SpaceId;
use crate::cache::{prefetch, PREFETCH_MAX};

/// Bytes an entry is charged beyond its key and value (table slot, `Bytes` handles).
const ENTRY_OVERHEAD: usize = 48;

/// Entries of one space by key. A table rather than a map so that an overwrite replaces the
/// stored key too: it then points into the newest record, the one the cache holds, and the next
/// write of the key compares against memory the cache's lookup has just touched. An entry is 64
/// bytes, one cache line: a hash tag beside it (so that growing needs no key) made it 72, two
/// lines for most entries, and SET at depth 16 cost about 10 % more CPU.
type Map = HashTable<(Bytes, Option<Bytes>)>;

/// Tables a space's entries are spread over (by bits 48–51 of the hash, which neither a
/// table's buckets nor its control bytes use): each one doubles in turn, moving and rehashing
/// a sixteenth of the entries at once (a single table of 100 000 keys held the request path
/// 40 ms when it doubled).
const PARTS: usize = 16;

/// One space's entries.
struct Space {
    parts: Vec<Map>,
}

impl Space {
    fn new() -> Space {
        Space {
            parts: (0..PARTS).map(|_| Map::new()).collect(),
        }
    }

    fn part_of(hash: u64) -> usize {
        (hash >> 48) as usize % PARTS
    }

    fn part(&self, hash: u64) -> &Map {
        &self.parts[Self::part_of(hash)]
    }

    fn part_mut(&mut self, hash: u64) -> &mut Map {
        &mut self.parts[Self::part_of(hash)]
    }

    fn len(&self) -> usize {
        self.parts.iter().map(Map::len).sum()
    }

    fn is_empty(&self) -> bool {
        self.parts.iter().all(Map::is_empty)
    }

    fn entries(&self) -> impl Iterator<Item = &(Bytes, Option<Bytes>)> {
        self.parts.iter().flat_map(Map::iter)
    }
}

fn hash_key(key: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(0x006f_7665_726c_6179).hash_one(key)
}

/// Entries of one space in ascending key order; `None` is a delete.
pub(super) type Run = Vec<(Bytes, Option<Bytes>)>;

/// Whether the bounds select nothing.
pub(super) fn empty_range(lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u))
        | (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
        _ => false,
    }
}

fn above_lower(key: &[u8], lower: Bound<&[u8]>) -> bool {
    match lower {
        Bound::Included(l) => key >= l,
        Bound::Excluded(l) => key > l,
        Bound::Unbounded => true,
    }
}

fn below_upper(key: &[u8], upper: Bound<&[u8]>) -> bool {
    match upper {
        Bound::Included(u) => key <= u,
        Bound::Excluded(u) => key < u,
        Bound::Unbounded => true,
    }
}

/// The memtable that takes writes.
#[derive(Default)]
pub(super) struct Memtable {
    spaces: Vec<Space>,
    pub bytes: usize,
    /// Bytes of the log records applied to it (overwrites included).
    pub log_bytes: usize,
    /// Sequence of the last log record applied to it.
    pub last_seq: u64,
}

impl Memtable {
    pub fn is_empty(&self) -> bool {
        self.spaces.iter().all(Space::is_empty)
    }

    pub fn len_of(&self, space: SpaceId) -> usize {
        self.spaces.get(space as usize).map_or(0, Space::len)
    }

    pub fn lookup(&self, space: SpaceId, key: &[u8]) -> Option<&Option<Bytes>> {
        let hash = hash_key(key);
        self.spaces
            .get(space as usize)?
            .part(hash)
            .find(hash, |(k, _)| k.as_ref() == key)
            .map(|(_, value)| value)
    }

    /// Starts loading the table entries that writing these keys will compare (at most
    /// [`PREFETCH_MAX`]): the probe reads the control bytes, and prefetches each candidate
    /// instead of comparing it, so the misses of a batch overlap.
    pub fn prefetch(&self, space: SpaceId, keys: &mut dyn Iterator<Item = &[u8]>) {
        let Some(entries) = self.spaces.get(space as usize) else {
            return;
        };
        for key in keys.take(PREFETCH_MAX) {
            let hash = hash_key(key);
            entries.part(hash).find(hash, |entry| {
                prefetch(entry as *const (Bytes, Option<Bytes>));
                false
            });
        }
    }

    pub fn apply(&mut self, space: SpaceId, key: Bytes, value: Option<Bytes>) {
        let index = space as usize;
        if self.spaces.len() <= index {
            self.spaces.resize_with(index + 1, Space::new);
        }
        let key_len = key.len();
        let charge = |value: &Option<Bytes>| key_len + value.as_ref().map_or(0, Bytes::len);
        let added = charge(&value) + ENTRY_OVERHEAD;
        let hash = hash_key(&key);
        let map = self.spaces[index].part_mut(hash);
        match map.find_mut(hash, |(k, _)| *k == key) {
            Some(stored) => {
                let (_, old) = std::mem::replace(stored, (key, value));
                // `bytes` includes the replaced entry's charge, so this cannot underflow.
                self.bytes = self.bytes + added - (charge(&old) + ENTRY_OVERHEAD);
            }
            None => {
                map.insert_unique(hash, (key, value), |(k, _)| hash_key(k));
                self.bytes += added;
            }
        }
    }

    /// Up to `limit` entries of a space within the bounds, in key order: a sort of the matching
    /// entries, so only for small memtables (the caller seals large ones first).
    pub fn take_sorted(
        &self,
        space: SpaceId,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        limit: usize,
    ) -> Run {
        let Some(entries) = self.spaces.get(space as usize) else {
            return Vec::new();
        };
        let mut out: Run = entries
            .entries()
            .filter(|(k, _)| above_lower(k, lower) && below_upper(k, upper))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out.truncate(limit);
        out
    }

    fn sorted_runs(&self) -> Vec<Run> {
        self.spaces
            .iter()
            .map(|entries| {
                let mut run: Run = entries
                    .entries()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                run.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                run
            })
            .collect()
    }
}

/// A sealed memtable: read-only, with its key order computed on first need.
pub(super) struct Frozen {
    memtable: Memtable,
    sorted: OnceLock<Vec<Run>>,
}

impl Frozen {
    pub fn bytes(&self) -> usize {
        self.memtable.bytes
    }

    pub fn last_seq(&self) -> u64 {
        self.memtable.last_seq
    }

    pub fn lookup(&self, space: SpaceId, key: &[u8]) -> Option<&Option<Bytes>> {
        self.memtable.lookup(space, key)
    }

    /// Every space's entries in key order (computed once).
    pub fn runs(&self) -> &[Run] {
        self.sorted.get_or_init(|| self.memtable.sorted_runs())
    }

    /// Up to `limit` entries of a space within the bounds, in key order.
    pub fn take(
        &self,
        space: SpaceId,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        limit: usize,
    ) -> Run {
        let Some(run) = self.runs().get(space as usize) else {
            return Vec::new();
        };
        let start = run.partition_point(|(k, _)| !above_lower(k, lower));
        run[start..]
            .iter()
            .take_while(|(k, _)| below_upper(k, upper))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// Written data not yet in the inner store.
#[derive(Default)]
pub(super) struct Overlay {
    pub active: Memtable,
    /// Sealed memtables waiting for (or in) a checkpoint, oldest first.
    pub sealed: Vec<Arc<Frozen>>,
}

impl Overlay {
    /// The newest state of a key here: `Some(None)` is a delete, `None` means "ask the store".
    pub fn lookup(&self, space: SpaceId, key: &[u8]) -> Option<Option<Bytes>> {
        if let Some(found) = self.active.lookup(space, key) {
            return Some(found.clone());
        }
        self.sealed
            .iter()
            .rev()
            .find_map(|m| m.lookup(space, key).cloned())
    }

    /// Seals the active memtable if it holds anything.
    pub fn seal(&mut self) {
        if self.active.is_empty() {
            return;
        }
        let last_seq = self.active.last_seq;
        let memtable = std::mem::take(&mut self.active);
        self.active.last_seq = last_seq;
        self.sealed.push(Arc::new(Frozen {
            memtable,
            sorted: OnceLock::new(),
        }));
    }
}

/// The runs of several frozen memtables merged per space, the newest entry of each key winning.
pub(super) fn merge(frozen: &[Arc<Frozen>]) -> Vec<Run> {
    let spaces = frozen.iter().map(|f| f.runs().len()).max().unwrap_or(0);
    (0..spaces)
        .map(|space| {
            let mut all: Run = frozen
                .iter()
                .filter_map(|f| f.runs().get(space))
                .flatten()
                .cloned()
                .collect();
            // Stable: equal keys stay oldest first, so the last of each group is the newest.
            all.sort_by(|a, b| a.0.cmp(&b.0));
            let mut merged: Run = Vec::with_capacity(all.len());
            for entry in all {
                match merged.last_mut() {
                    Some(last) if last.0 == entry.0 => *last = entry,
                    _ => merged.push(entry),
                }
            }
            merged
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn byte_charge_follows_inserts_and_overwrites() {
        let mut m = Memtable::default();
        m.apply(0, b("key"), Some(b("value")));
        assert_eq!(m.bytes, 3 + 5 + ENTRY_OVERHEAD);
        m.apply(0, b("key"), None);
        assert_eq!(m.bytes, 3 + ENTRY_OVERHEAD);
        m.apply(2, b("k"), Some(b("vv")));
        assert_eq!(m.bytes, 3 + ENTRY_OVERHEAD + 1 + 2 + ENTRY_OVERHEAD);
    }

    #[test]
    fn prefetch_changes_nothing() {
        let mut m = Memtable::default();
        m.apply(0, b("a"), Some(b("1")));
        m.apply(0, b("b"), None);
        let keys: [&[u8]; 4] = [b"a", b"b", b"missing", b""];
        m.prefetch(0, &mut keys.into_iter());
        m.prefetch(7, &mut keys.into_iter());
        assert_eq!(m.lookup(0, b"a"), Some(&Some(b("1"))));
        assert_eq!(m.lookup(0, b"b"), Some(&None));
        assert_eq!(m.lookup(0, b"missing"), None);
        assert_eq!(m.len_of(0), 2);
    }

    #[test]
    fn a_space_spreads_over_every_part_and_still_finds_and_orders_every_key() {
        let mut overlay = Overlay::default();
        for k in 0..5_000 {
            overlay
                .active
                .apply(1, b(&format!("k{k:05}")), Some(b("v")));
        }
        let parts = &overlay.active.spaces[1].parts;
        assert!(
            parts.iter().all(|part| part.len() > 200),
            "every part takes a share"
        );
        assert_eq!(overlay.active.len_of(1), 5_000);
        assert_eq!(overlay.active.len_of(0), 0);
        // Every key is still found after the tables grew, and in order once sealed.
        overlay.seal();
        assert!(overlay.active.is_empty());
        for k in 0..5_000 {
            let key = format!("k{k:05}");
            assert_eq!(
                overlay.lookup(1, key.as_bytes()),
                Some(Some(b("v"))),
                "{key}"
            );
        }
        let run = &overlay.sealed[0].runs()[1];
        assert_eq!(run.len(), 5_000);
        assert!(run.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn merge_keeps_the_newest_entry_of_each_key_in_order() {
        let mut overlay = Overlay::default();
        overlay.active.apply(0, b("a"), Some(b("1")));
        overlay.active.apply(0, b("c"), Some(b("1")));
        overlay.seal();
        overlay.active.apply(0, b("b"), Some(b("2")));
        overlay.active.apply(0, b("c"), None);
        overlay.seal();
        let runs = merge(&overlay.sealed);
        assert_eq!(
            runs[0],
            vec![
                (b("a"), Some(b("1"))),
                (b("b"), Some(b("2"))),
                (b("c"), None)
            ]
        );
        assert_eq!(overlay.lookup(0, b"c"), Some(None));
        assert_eq!(overlay.lookup(0, b"a"), Some(Some(b("1"))));
        assert_eq!(overlay.lookup(0, b"z"), None);
    }

    #[test]
    fn take_honours_both_bounds_and_the_limit() {
        let mut overlay = Overlay::default();
        for k in ["a", "b", "c", "d"] {
            overlay.active.apply(0, b(k), Some(b(k)));
        }
        let small = overlay
            .active
            .take_sorted(0, Bound::Excluded(b"a"), Bound::Included(b"c"), 10);
        overlay.seal();
        let frozen = overlay.sealed[0].take(0, Bound::Excluded(b"a"), Bound::Included(b"c"), 10);
        assert_eq!(small, frozen);
        assert_eq!(
            frozen.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            vec![b("b"), b("c")]
        );
        let limited = overlay.sealed[0].take(0, Bound::Unbounded, Bound::Unbounded, 1);
        assert_eq!(limited.len(), 1);
    }
}
