//! polykv's replicated cluster: one Raft group (openraft 0.9, vendored with one change: a
//! leader's log append overlaps replication, see `vendor/README.md`) over the engine.
//!
//! - The Raft log is the engine's segmented [`Log`](polykv_engine::log::Log) ([`log_store`]).
//! - The state machine is the engine's one deterministic `apply`, with the log position written
//!   atomically with each proposal's effects ([`state_machine`]); snapshots are the engine's
//!   contents streamed into a file and from it, in chunks ([`snapshot`]).
//! - Peers talk over a [`Transport`](transport::Transport): the real one is TCP with a
//!   challenge–response on a shared secret and size-bounded frames ([`wire`], [`tcp`]); tests
//!   use an in-process one that drops, delays, duplicates and partitions ([`sim`]).
//! - The server sees only [`Node::submit`] ("apply this command, replicated") and
//!   [`Node::read_barrier`] ("a read after this is linearizable").
//!
//! Which Raft group a bucket belongs to is decided in one place, [`group_of_bucket`]: at this
//! stage there is one group for everything.

// openraft's storage traits return its StorageError, which is large; the helpers that build
// it return it too rather than box and unbox it at every call.
#![allow(clippy::result_large_err)]

pub mod auth;
mod batch;
mod frames;
pub mod identity;
pub mod linearizability;
pub mod log_store;
mod merge;
pub mod network;
pub mod node;
pub mod sim;
pub mod snapshot;
pub mod state_file;
pub mod state_machine;
pub mod tcp;
pub mod timing;
pub mod transport;
mod tuning;
mod window;
pub mod wire;

use std::fmt;

use polykv_engine::{Outcome, Proposal};
use serde::{Deserialize, Serialize};

pub use node::{Node, NodeConfig};

/// A node's id in the cluster.
pub type NodeId = u64;

/// What the cluster knows of a member: where its peers reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The cluster port (`host:port`).
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Commands as one Raft entry carries them: every proposal that arrived at the leader while
/// earlier entries were in flight (batching is what lets concurrent writes share an fsync).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub proposals: Vec<Proposal>,
    /// Durable on every voter of the majority before it counts (Sync: any proposal asked for
    /// it), or only written (Async: committed on a majority, in their OS buffers).
    pub sync: bool,
}

/// What applying each proposal of a [`Request`] gave, in order (None: the engine refused it,
/// the same on every replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub outcomes: Vec<Option<Outcome>>,
}

openraft::declare_raft_types!(
    /// The Raft types of polykv.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = crate::batch::BatchResponder,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;

/// The Raft group that holds a bucket (`hash & mask` of OpenCluster, or any keyspace's key
/// hash). One group for everything at this stage; spreading buckets over several groups so
/// their leaders live on different nodes changes only this function and what it indexes.
pub fn group_of_bucket(_bucket: u32) -> u32 {
    0
}

/// Errors a caller of the cluster sees.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known, or it could not be reached within the write timeout: the node is
    /// cut off from the majority (or an election is under way).
    #[error("no leader reachable: {0}")]
    Unavailable(String),
    /// The engine refused the command (the same on every replica).
    #[error("refused: {0}")]
    Refused(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("the cluster node is shutting down")]
    ShuttingDown,
}
