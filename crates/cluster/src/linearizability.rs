//! A linearizability checker for histories of one register (one key): Wing & Gong's search
//! with the memoization of Lowe and porcupine.
//!
//! A history is what concurrent clients saw: each operation's invocation and completion times
//! and its result. An operation that never completed (a timeout, a node killed under it) may
//! have taken effect at any time after its invocation, or not at all. The history is
//! linearizable when some order of the operations, each placed between its invocation and its
//! completion, is a legal sequence of a register; the search tries orders depth first and
//! remembers every (set of placed operations, register value) it has already tried.

use std::collections::HashSet;

/// A register value (None: absent).
pub type Value = Option<i64>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `Some(result)`; None when the read never completed.
    Get(Option<Value>),
    Put(i64),
    /// Compare-and-swap from `expected` to `new`; its result when it completed.
    Cas {
        expected: Value,
        new: i64,
        swapped: Option<bool>,
    },
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub invoke: u64,
    /// None: never completed (outcome unknown).
    pub complete: Option<u64>,
    pub op: Op,
}

/// The register values `op` may leave when applied to `value`, if it can apply at all.
fn step(value: Value, op: &Op) -> Vec<Value> {
    match op {
        Op::Get(Some(read)) => {
            if *read == value {
                vec![value]
            } else {
                vec![]
            }
        }
        Op::Get(None) => vec![value],
        Op::Put(v) => vec![Some(*v)],
        Op::Cas {
            expected,
            new,
            swapped,
        } => {
            let matches = value == *expected;
            match swapped {
                Some(true) if matches => vec![Some(*new)],
                Some(false) if !matches => vec![value],
                None if matches => vec![Some(*new)],
                None => vec![value],
                _ => vec![],
            }
        }
    }
}

struct Search<'a> {
    events: &'a [Event],
    seen: HashSet<(Vec<u64>, Value)>,
    budget: u64,
}

/// The verdict on a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search gave up after its step budget (too many concurrent operations).
    Unknown,
}

fn placed(set: &[u64], i: usize) -> bool {
    set[i / 64] & (1 << (i % 64)) != 0
}

impl Search<'_> {
    fn run(&mut self, set: &mut Vec<u64>, value: Value) -> Option<bool> {
        if self.budget == 0 {
            return None;
        }
        self.budget -= 1;
        let pending: Vec<usize> = (0..self.events.len())
            .filter(|i| !placed(set, *i))
            .collect();
        // An operation can go next only if it was invoked before every unplaced operation
        // that has completed did complete.
        let Some(horizon) = pending
            .iter()
            .filter_map(|i| self.events[*i].complete)
            .min()
        else {
            // Only operations that never completed are left: they need not take effect.
            return Some(true);
        };
        for i in pending {
            let event = &self.events[i];
            if event.invoke > horizon {
                continue;
            }
            for next in step(value, &event.op) {
                set[i / 64] |= 1 << (i % 64);
                let fresh = self.seen.insert((set.clone(), next));
                let found = if fresh {
                    self.run(set, next)
                } else {
                    Some(false)
                };
                set[i / 64] &= !(1 << (i % 64));
                match found {
                    Some(true) => return Some(true),
                    None => return None,
                    Some(false) => {}
                }
            }
        }
        Some(false)
    }
}

/// Checks one key's history, starting from `initial`, within `budget` search steps.
pub fn check(events: &[Event], initial: Value, budget: u64) -> Verdict {
    let mut search = Search {
        events,
        seen: HashSet::new(),
        budget,
    };
    let mut set = vec![0u64; events.len().div_ceil(64).max(1)];
    match search.run(&mut set, initial) {
        Some(true) => Verdict::Linearizable,
        Some(false) => Verdict::NotLinearizable,
        None => Verdict::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(invoke: u64, complete: u64, op: Op) -> Event {
        Event {
            invoke,
            complete: Some(complete),
            op,
        }
    }

    #[test]
    fn a_valid_concurrent_history_is_accepted() {
        // put 1 and put 2 overlap; the reads see 1 then 2: put 1 first, then put 2.
        let history = vec![
            ev(0, 10, Op::Put(1)),
            ev(5, 15, Op::Put(2)),
            ev(11, 12, Op::Get(Some(Some(1)))),
            ev(16, 17, Op::Get(Some(Some(2)))),
            ev(
                18,
                20,
                Op::Cas {
                    expected: Some(2),
                    new: 3,
                    swapped: Some(true),
                },
            ),
            ev(21, 22, Op::Get(Some(Some(3)))),
        ];
        assert_eq!(check(&history, None, 100_000), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_rejected() {
        // put 1 completes, then put 2 completes, then a read returns 1: not linearizable.
        let history = vec![
            ev(0, 1, Op::Put(1)),
            ev(2, 3, Op::Put(2)),
            ev(4, 5, Op::Get(Some(Some(1)))),
        ];
        assert_eq!(check(&history, None, 100_000), Verdict::NotLinearizable);
        // Two successful swaps from the same value cannot both happen.
        let cas = |swapped| Op::Cas {
            expected: Some(1),
            new: 2,
            swapped: Some(swapped),
        };
        let history = vec![
            ev(0, 1, Op::Put(1)),
            ev(2, 5, cas(true)),
            ev(3, 6, cas(true)),
        ];
        assert_eq!(check(&history, None, 100_000), Verdict::NotLinearizable);
    }

    #[test]
    fn a_write_that_never_completed_may_or_may_not_have_happened() {
        let lost = Event {
            invoke: 0,
            complete: None,
            op: Op::Put(7),
        };
        let saw_it = vec![lost.clone(), ev(5, 6, Op::Get(Some(Some(7))))];
        assert_eq!(check(&saw_it, None, 1000), Verdict::Linearizable);
        let missed_it = vec![lost.clone(), ev(5, 6, Op::Get(Some(None)))];
        assert_eq!(check(&missed_it, None, 1000), Verdict::Linearizable);
        // But once seen, it cannot disappear again.
        let flicker = vec![
            lost,
            ev(5, 6, Op::Get(Some(Some(7)))),
            ev(7, 8, Op::Get(Some(None))),
        ];
        assert_eq!(check(&flicker, None, 1000), Verdict::NotLinearizable);
    }
}
