//! The Raft log's entries kept in memory: every entry not yet applied, and the newest applied
//! ones up to a byte budget. Replication and the apply read these; older entries (for a
//! follower that lags behind, or a restart's apply) are read back from the log's files.
//!
//! Without the bound a node held every entry since the last snapshot, whatever their size:
//! with large values that is more memory than the machine has, and even with small ones the
//! growth was fresh memory, which this kind of virtual machine makes expensive
//! (docs/performance.md, twentieth session).

use std::collections::BTreeMap;
use std::ops::Range;

use crate::{Entry, LogId};

/// Applied entries kept in memory at most, in encoded bytes, by default
/// ([`crate::node::NodeConfig::log_window_bytes`]).
pub(crate) const WINDOW_BYTES: usize = 16 << 20;

struct Kept {
    entry: Entry,
    bytes: usize,
}

pub(crate) struct Window {
    entries: BTreeMap<u64, Kept>,
    /// Encoded bytes of every entry kept.
    bytes: usize,
    budget: usize,
}

impl Window {
    pub(crate) fn new(budget: usize) -> Window {
        Window {
            entries: BTreeMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// Adds `entry` (`bytes` long encoded) as the newest.
    pub(crate) fn push(&mut self, entry: Entry, bytes: usize) {
        self.bytes += bytes;
        if let Some(old) = self
            .entries
            .insert(entry.log_id.index, Kept { entry, bytes })
        {
            self.bytes -= old.bytes;
        }
    }

    /// Lets the oldest entries go while more than the budget is kept, as long as they are
    /// applied (`applied` is the applied index + 1) and not the last applied one: the newest
    /// entry kept then always gives the log's last id.
    pub(crate) fn evict(&mut self, applied: u64) {
        while self.bytes > self.budget {
            match self.entries.first_entry() {
                Some(first) if first.key() + 1 < applied => {
                    self.bytes -= first.remove().bytes;
                }
                _ => break,
            }
        }
    }

    /// The index of the oldest entry kept.
    pub(crate) fn first_index(&self) -> Option<u64> {
        self.entries.first_key_value().map(|(index, _)| *index)
    }

    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .last_key_value()
            .map(|(_, kept)| kept.entry.log_id)
    }

    /// Copies of the entries kept in `range`.
    pub(crate) fn copy(&self, range: Range<u64>) -> impl Iterator<Item = Entry> + '_ {
        self.entries
            .range(range)
            .map(|(_, kept)| kept.entry.clone())
    }

    /// Drops the entries from `index` on (a conflicting suffix).
    pub(crate) fn cut_from(&mut self, index: u64) {
        let cut = self.entries.split_off(&index);
        self.bytes -= cut.values().map(|kept| kept.bytes).sum::<usize>();
    }

    /// Drops the entries up to and including `index` (purged behind a snapshot).
    pub(crate) fn purge_upto(&mut self, index: u64) {
        let kept = self.entries.split_off(&(index + 1));
        let purged = std::mem::replace(&mut self.entries, kept);
        self.bytes -= purged.values().map(|kept| kept.bytes).sum::<usize>();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(window: &Window, range: Range<u64>) -> Vec<u64> {
        window.copy(range).map(|e| e.log_id.index).collect()
    }

    #[test]
    fn only_applied_entries_past_the_budget_go_and_the_last_applied_stays() {
        let mut window = Window::new(100);
        for index in 0..20 {
            window.push(entry(index), 10);
        }
        assert_eq!(window.bytes(), 200);
        // Nothing applied: everything stays, whatever the budget.
        window.evict(0);
        assert_eq!(window.first_index(), Some(0));
        // Entries 0..=4 applied: 0..=3 may go, 4 (the last applied) stays.
        window.evict(5);
        assert_eq!(window.first_index(), Some(4));
        assert_eq!(window.bytes(), 160);
        // Everything applied: down to the budget.
        window.evict(20);
        assert_eq!(window.first_index(), Some(10));
        assert_eq!(window.bytes(), 100);
        assert_eq!(window.last_log_id().map(|id| id.index), Some(19));
        assert_eq!(indexes(&window, 0..12), vec![10, 11]);
    }

    #[test]
    fn cuts_and_purges_keep_the_byte_count() {
        let mut window = Window::new(1 << 20);
        for index in 0..10 {
            window.push(entry(index), 1 + index as usize);
        }
        window.cut_from(7);
        assert_eq!(window.bytes(), (1..=7).sum::<usize>());
        assert_eq!(window.last_log_id().map(|id| id.index), Some(6));
        window.purge_upto(2);
        assert_eq!(window.bytes(), (4..=7).sum::<usize>());
        assert_eq!(window.first_index(), Some(3));
        // An entry written again at an index it holds replaces it.
        window.push(entry(6), 100);
        assert_eq!(window.bytes(), 4 + 5 + 6 + 100);
        window.purge_upto(6);
        assert!(window.is_empty());
        assert_eq!(window.bytes(), 0);
    }
}
