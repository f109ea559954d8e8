//! How a node reaches its peers: one call, one reply. TCP in production ([`crate::tcp`]), an
//! in-process router with faults in tests ([`crate::sim`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use std::sync::Arc;

use crate::identity::Identity;
use crate::wire::{Reply, Rpc};
use crate::NodeId;

/// Why a call got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Not delivered (no connection, refused, partitioned): safe to retry.
    #[error("peer {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// Sent, but no reply in time: it may have been acted on.
    #[error("peer {0} did not answer in time")]
    Timeout(NodeId),
    #[error("message too large: {0}")]
    TooLarge(String),
}

pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Reply, TransportError>> + Send + 'a>>;

/// Sends requests to peers.
pub trait Transport: Send + Sync + 'static {
    /// Sends `rpc` to node `target` at cluster address `addr` and waits at most `timeout`.
    fn call<'a>(
        &'a self,
        target: NodeId,
        addr: &'a str,
        rpc: Rpc,
        timeout: Duration,
    ) -> CallFuture<'a>;

    /// The cluster id this transport checks peers against, if it checks any (the TCP one
    /// does, in its handshake; the in-process one of the tests does not).
    fn identity(&self) -> Option<Arc<Identity>> {
        None
    }

    /// Drops the connections to peers, so the next call handshakes again (after this node
    /// drew a cluster id, for the peers to learn it).
    fn reconnect(&self) {}
}

/// What serves the requests that arrive from peers (the node).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, from: NodeId, rpc: Rpc) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>>;
}
