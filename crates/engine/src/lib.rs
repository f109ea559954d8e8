//! polykv's engine: keyspaces of typed entries over a bounded cache and a durable ordered store.
//!
//! - Every mutation is a [`Command`] applied by one deterministic `apply` (see [`command`]).
//! - Writes choose their [`Durability`]: Memory, Async or Sync (group-committed).
//! - Reads come from the cache or the store and say which ([`Source`]).
//! - Changes are published to watchers in version order ([`watch`]).
//!
//! The engine knows nothing of wire protocols.

pub mod cache;
pub mod clock;
pub mod command;
pub mod counters;
mod engine;
pub mod error;
pub mod fuzz;
pub mod locks;
pub mod log;
mod persist;
mod record;
pub mod store;
pub mod value;
pub mod watch;

/// Index of a keyspace in the engine's keyspace table.
pub type KeyspaceId = u32;

pub use clock::{Clock, ManualClock, SystemClock};
pub use command::{Command, Condition, Outcome, Proposal};
pub use engine::{
    valid_keyspace_name, Durability, Engine, EngineConfig, EngineStats, Exported, FlushDue,
    KeyspaceStats, Pending, Read, Source, INSTALLING, MAX_KEY_LEN,
};
pub use error::{Error, Result, StoreError};
pub use locks::LockOutcome;
pub use value::{Entry, KeyedEntry, Value};
pub use watch::{recv_oldest, Change, Event, Selector, Subscription};
