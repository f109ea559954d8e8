//! Commands: the only way state changes. Each is applied by the engine's one `apply`.
//!
//! On a single node a command is applied at once and its effects go to the store's journal as
//! one atomic batch. In cluster mode the same [`Proposal`] travels through the Raft log and the
//! same `apply` runs on every replica; that is why a proposal carries the time it was made at
//! and `apply` reads no clock.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::locks::LockOutcome;
use crate::value::{Entry, Value};
use crate::KeyspaceId;

/// A precondition on the current state of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    Always,
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this value.
    ValueIs(Value),
    /// The key must exist at exactly this version.
    VersionIs(u64),
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateKeyspace {
        name: String,
    },
    Put {
        ks: KeyspaceId,
        key: Bytes,
        value: Value,
        expires_at: Option<u64>,
        owner: Option<u64>,
        label: Option<Bytes>,
        condition: Condition,
    },
    Delete {
        ks: KeyspaceId,
        key: Bytes,
        condition: Condition,
    },
    /// Adds `delta` (wrapping) to an i32 or i64 value.
    Incr {
        ks: KeyspaceId,
        key: Bytes,
        delta: i64,
    },
    /// Removes the key if it still expires at `expires_at` and that time has passed (the reaper's
    /// command; it publishes no change event).
    Expire {
        ks: KeyspaceId,
        key: Bytes,
        expires_at: u64,
    },
    Lock {
        name: Bytes,
        holder: u64,
        deadline: Option<u64>,
    },
    Unlock {
        name: Bytes,
        holder: u64,
    },
    /// Releases every lock of a holder (its session ended).
    ReleaseHolder {
        holder: u64,
    },
    ExpireLocks,
}

impl Command {
    /// The keyspace and key of a data command (a put, delete, incr or expire), whose apply
    /// reads and writes that key's cache and memtable entries.
    pub fn data_key(&self) -> Option<(KeyspaceId, &[u8])> {
        match self {
            Command::Put { ks, key, .. }
            | Command::Delete { ks, key, .. }
            | Command::Incr { ks, key, .. }
            | Command::Expire { ks, key, .. } => Some((*ks, &key[..])),
            _ => None,
        }
    }

    /// A put that applies only while the key is as `current` says (absent, or at its version):
    /// the write of a read-modify-write.
    pub fn put_unchanged(
        ks: KeyspaceId,
        key: Bytes,
        value: Value,
        current: Option<&Entry>,
    ) -> Command {
        Command::Put {
            ks,
            key,
            value,
            expires_at: None,
            owner: None,
            label: None,
            condition: match current {
                Some(entry) => Condition::VersionIs(entry.version),
                None => Condition::Absent,
            },
        }
    }

    /// A plain create-or-replace.
    pub fn put(ks: KeyspaceId, key: impl Into<Bytes>, value: Value) -> Command {
        Command::Put {
            ks,
            key: key.into(),
            value,
            expires_at: None,
            owner: None,
            label: None,
            condition: Condition::Always,
        }
    }

    pub fn delete(ks: KeyspaceId, key: impl Into<Bytes>) -> Command {
        Command::Delete {
            ks,
            key: key.into(),
            condition: Condition::Always,
        }
    }
}

/// A command stamped with the time it was proposed at: what a log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub at_ms: u64,
    pub command: Command,
}

/// Format tag written before every encoded proposal, so old logs stay readable after an upgrade.
pub const PROPOSAL_FORMAT: u8 = 1;

impl Proposal {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PROPOSAL_FORMAT];
        // Serializing plain enums of bytes and integers into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    pub fn decode(raw: &[u8]) -> Result<Proposal, StoreError> {
        match raw.split_first() {
            Some((&PROPOSAL_FORMAT, body)) => postcard::from_bytes(body)
                .map_err(|e| StoreError::Corrupt(format!("proposal: {e}"))),
            Some((format, _)) => Err(StoreError::Corrupt(format!(
                "proposal format {format} is newer than this server"
            ))),
            None => Err(StoreError::Corrupt("empty proposal".into())),
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    KeyspaceCreated(KeyspaceId),
    /// A put (or incr) took effect at this version.
    Written {
        version: u64,
    },
    /// The key was deleted; the deletion has this version.
    Deleted {
        version: u64,
    },
    /// The key does not exist (delete of an absent key, conditional write on an absent key,
    /// incr of an absent key).
    NotFound,
    /// The condition did not hold; `current` is the state that was found. Boxed: a rare
    /// outcome that would otherwise make every outcome (and every write's reply, moved along
    /// the request path) as large as an entry.
    Mismatch {
        current: Option<Box<Entry>>,
    },
    Incremented {
        value: i64,
        version: u64,
    },
    /// Incr on a value that is not an integer.
    WrongType,
    /// Durability Memory, and the entry is larger than the cache can ever hold.
    TooLarge,
    Expired {
        removed: bool,
    },
    Lock(LockOutcome),
    Unlocked {
        released: bool,
    },
    LocksReleased(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_commands_name_their_key_and_others_none() {
        let key = Bytes::from("k");
        let data = [
            Command::Put {
                ks: 2,
                key: key.clone(),
                value: Value::Str("v".into()),
                expires_at: None,
                owner: None,
                label: None,
                condition: Condition::Always,
            },
            Command::Delete {
                ks: 2,
                key: key.clone(),
                condition: Condition::Always,
            },
            Command::Incr {
                ks: 2,
                key: key.clone(),
                delta: 1,
            },
            Command::Expire {
                ks: 2,
                key: key.clone(),
                expires_at: 5,
            },
        ];
        for command in &data {
            assert_eq!(command.data_key(), Some((2, &b"k"[..])), "{command:?}");
        }
        let others = [
            Command::CreateKeyspace { name: "s".into() },
            Command::Lock {
                name: key.clone(),
                holder: 1,
                deadline: None,
            },
            Command::Unlock {
                name: key,
                holder: 1,
            },
            Command::ReleaseHolder { holder: 1 },
            Command::ExpireLocks,
        ];
        for command in &others {
            assert_eq!(command.data_key(), None, "{command:?}");
        }
    }

    #[test]
    fn proposals_round_trip_with_a_format_tag() {
        let proposal = Proposal {
            at_ms: 42,
            command: Command::Put {
                ks: 3,
                key: Bytes::from("k"),
                value: Value::Str("v".into()),
                expires_at: Some(99),
                owner: Some(5),
                label: Some(Bytes::from("name")),
                condition: Condition::ValueIs(Value::I32(1)),
            },
        };
        let raw = proposal.encode();
        assert_eq!(raw[0], PROPOSAL_FORMAT);
        assert_eq!(Proposal::decode(&raw).unwrap(), proposal);
        assert!(Proposal::decode(&[9, 0]).is_err());
        assert!(Proposal::decode(&[]).is_err());
        assert!(Proposal::decode(&[1, 0xff, 0xff]).is_err());
    }
}
