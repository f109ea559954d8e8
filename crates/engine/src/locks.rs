//! Named locks with a holder and an optional deadline.
//!
//! Locks belong to sessions, which do not outlive the process, so the table lives in memory and
//! is not journaled. It is changed only by `apply` (lock commands carry the time they were
//! proposed at, so expiry decisions replay identically).

use bytes::Bytes;
use hashbrown::HashMap;

/// Result of a lock request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LockOutcome {
    /// Acquired now, or already held by the same holder (its deadline was reset).
    Acquired,
    /// Held by someone else.
    Busy { holder: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Held {
    holder: u64,
    deadline: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct LockTable {
    locks: HashMap<Bytes, Held>,
}

impl LockTable {
    fn live(&self, name: &[u8], now: u64) -> Option<Held> {
        self.locks
            .get(name)
            .copied()
            .filter(|held| held.deadline.is_none_or(|d| d > now))
    }

    pub fn acquire(
        &mut self,
        name: Bytes,
        holder: u64,
        deadline: Option<u64>,
        now: u64,
    ) -> LockOutcome {
        match self.live(&name, now) {
            Some(held) if held.holder != holder => LockOutcome::Busy {
                holder: held.holder,
            },
            _ => {
                self.locks.insert(name, Held { holder, deadline });
                LockOutcome::Acquired
            }
        }
    }

    /// Releases the lock if `holder` holds it (and it has not run out). Returns whether it did.
    pub fn release(&mut self, name: &[u8], holder: u64, now: u64) -> bool {
        match self.live(name, now) {
            Some(held) if held.holder == holder => {
                self.locks.remove(name);
                true
            }
            _ => false,
        }
    }

    /// Releases every lock of `holder`; returns how many were live.
    pub fn release_all(&mut self, holder: u64, now: u64) -> usize {
        let mut released = 0;
        self.locks.retain(|_, held| {
            if held.holder != holder {
                return true;
            }
            if held.deadline.is_none_or(|d| d > now) {
                released += 1;
            }
            false
        });
        released
    }

    /// Forgets locks whose deadline has passed.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.locks.len();
        self.locks
            .retain(|_, held| held.deadline.is_none_or(|d| d > now));
        before - self.locks.len()
    }

    /// Live locks held by `holder`.
    pub fn held_by(&self, holder: u64, now: u64) -> usize {
        self.locks
            .values()
            .filter(|h| h.holder == holder && h.deadline.is_none_or(|d| d > now))
            .count()
    }

    pub fn len(&self) -> usize {
        self.locks.len()
    }

    /// Every live lock: (name, holder, deadline).
    pub fn live_all(&self, now: u64) -> Vec<(Bytes, u64, Option<u64>)> {
        self.locks
            .iter()
            .filter(|(_, held)| held.deadline.is_none_or(|d| d > now))
            .map(|(name, held)| (name.clone(), held.holder, held.deadline))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_until_release_or_deadline() {
        let mut t = LockTable::default();
        let name = Bytes::from("l");
        assert_eq!(
            t.acquire(name.clone(), 1, Some(100), 0),
            LockOutcome::Acquired
        );
        assert_eq!(
            t.acquire(name.clone(), 2, None, 50),
            LockOutcome::Busy { holder: 1 }
        );
        assert_eq!(
            t.acquire(name.clone(), 1, Some(200), 60),
            LockOutcome::Acquired,
            "re-lock resets deadline"
        );
        assert_eq!(
            t.acquire(name.clone(), 2, None, 150),
            LockOutcome::Busy { holder: 1 }
        );
        assert_eq!(
            t.acquire(name.clone(), 2, None, 200),
            LockOutcome::Acquired,
            "deadline passed"
        );
        assert!(!t.release(b"l", 1, 200));
        assert!(t.release(b"l", 2, 200));
        assert!(!t.release(b"l", 2, 200));
    }

    #[test]
    fn release_all_and_expire() {
        let mut t = LockTable::default();
        t.acquire("a".into(), 1, None, 0);
        t.acquire("b".into(), 1, Some(10), 0);
        t.acquire("c".into(), 2, Some(10), 0);
        assert_eq!(t.held_by(1, 0), 2);
        assert_eq!(t.release_all(1, 20), 1, "b had run out");
        assert_eq!(t.expire(20), 1);
        assert_eq!(t.len(), 0);
    }
}
