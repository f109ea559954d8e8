//! The one seam every protocol writes through: the local engine on a single node, the Raft
//! group in cluster mode. Services call [`Submitter::submit`] where they called
//! `engine.submit`, and [`Submitter::read_barrier`] before a read that must be linearizable.
//!
//! On a single node nothing changes: `submit` is the engine's, and the reply still waits for
//! durability after the batch (group commit). In cluster mode the outcome is known only once
//! the command is committed on a majority (and fsynced there for Sync) and applied, so
//! `submit` returns then; a node that cannot reach a leader in `cluster.write_timeout_ms`
//! answers [`Error::Unavailable`], which every protocol maps to its own error reply.
//! Memory-durability writes (nmdb CACHE_ONLY) and locks stay on the node that took them.

use bytes::Bytes;
use polykv_cluster::{ClusterError, Node};
use polykv_engine::{
    Command, Durability, Engine, Entry, Error, KeyspaceId, Outcome, Pending, Value,
};

/// Where writes go.
#[derive(Clone)]
pub enum Submitter {
    Local(Engine),
    Cluster {
        engine: Engine,
        node: Node,
        /// Serve reads from this node's state without a read index.
        stale_reads: bool,
    },
}

/// A write that has been applied: its outcome, and (single node) what is left to wait for.
pub enum Submitted {
    Local(Pending),
    /// Committed and applied (cluster mode): nothing left to wait for.
    Done(Outcome),
}

impl Submitted {
    pub fn outcome(&self) -> &Outcome {
        match self {
            Submitted::Local(pending) => &pending.outcome,
            Submitted::Done(outcome) => outcome,
        }
    }

    /// Waits until the write is as durable as it asked (at once in cluster mode).
    pub async fn durable(self) -> polykv_engine::Result<Outcome> {
        match self {
            Submitted::Local(pending) => pending.durable().await,
            Submitted::Done(outcome) => Ok(outcome),
        }
    }
}

/// Compare-and-swap attempts of a read-modify-write in cluster mode before giving up.
const UPDATE_ATTEMPTS: usize = 8;

fn cluster_error(e: ClusterError) -> Error {
    match e {
        ClusterError::Unavailable(why) | ClusterError::Storage(why) => Error::Unavailable(why),
        ClusterError::Refused(_) => Error::Invalid("the command was refused by the cluster"),
        ClusterError::ShuttingDown => Error::ShuttingDown,
    }
}

impl Submitter {
    pub fn engine(&self) -> &Engine {
        match self {
            Submitter::Local(engine) | Submitter::Cluster { engine, .. } => engine,
        }
    }

    pub fn node(&self) -> Option<&Node> {
        match self {
            Submitter::Local(_) => None,
            Submitter::Cluster { node, .. } => Some(node),
        }
    }

    /// Applies a command: at once on a single node; through the Raft group in cluster mode
    /// (except Memory durability, which stays on this node).
    pub async fn submit(
        &self,
        command: Command,
        durability: Durability,
    ) -> polykv_engine::Result<Submitted> {
        match self {
            Submitter::Local(engine) => engine.submit(command, durability).map(Submitted::Local),
            Submitter::Cluster { engine, .. } if durability == Durability::Memory => {
                engine.submit(command, durability).map(Submitted::Local)
            }
            // Boxed: the Raft write's future is large, and every future that awaits this one
            // (every protocol's request) would otherwise be as large and be copied that much
            // per request on a single node too.
            Submitter::Cluster { node, .. } => Box::pin(node.submit(command, durability))
                .await
                .map(Submitted::Done)
                .map_err(cluster_error),
        }
    }

    /// Atomic read-modify-write (see `Engine::submit_update`). In cluster mode: a read after
    /// a read barrier, then a put conditioned on the version read, retried when another write
    /// came between; `change` may then be called more than once.
    pub async fn submit_update(
        &self,
        ks: KeyspaceId,
        key: Bytes,
        durability: Durability,
        change: impl FnMut(Option<&Entry>) -> Option<Value>,
    ) -> polykv_engine::Result<(Option<Entry>, Option<Submitted>)> {
        match self {
            Submitter::Cluster { node, .. } if durability != Durability::Memory => {
                // Boxed for the reason given in `submit`.
                Box::pin(self.update_through_raft(node, ks, key, durability, change)).await
            }
            _ => {
                let (current, pending) =
                    self.engine().submit_update(ks, key, durability, change)?;
                Ok((current, pending.map(Submitted::Local)))
            }
        }
    }

    /// [`Submitter::submit_update`] in cluster mode.
    async fn update_through_raft(
        &self,
        node: &Node,
        ks: KeyspaceId,
        key: Bytes,
        durability: Durability,
        mut change: impl FnMut(Option<&Entry>) -> Option<Value>,
    ) -> polykv_engine::Result<(Option<Entry>, Option<Submitted>)> {
        for _ in 0..UPDATE_ATTEMPTS {
            node.read_barrier().await.map_err(cluster_error)?;
            let current = self.engine().get(ks, &key)?.map(|read| read.entry);
            let Some(value) = change(current.as_ref()) else {
                return Ok((current, None));
            };
            let command = Command::put_unchanged(ks, key.clone(), value, current.as_ref());
            match node
                .submit(command, durability)
                .await
                .map_err(cluster_error)?
            {
                Outcome::Mismatch { .. } | Outcome::NotFound => continue,
                outcome => return Ok((current, Some(Submitted::Done(outcome)))),
            }
        }
        Err(Error::Unavailable(
            "the key kept changing under a read-modify-write".into(),
        ))
    }

    /// Whether a read of this node's state needs no barrier first: a single node, or a
    /// cluster with `cluster.stale_reads` (services then answer a read without an await).
    pub fn reads_locally(&self) -> bool {
        !matches!(
            self,
            Submitter::Cluster {
                stale_reads: false,
                ..
            }
        )
    }

    /// Returns once a read of this node's state is linearizable (at once where
    /// [`Submitter::reads_locally`]).
    pub async fn read_barrier(&self) -> polykv_engine::Result<()> {
        match self {
            Submitter::Cluster {
                node,
                stale_reads: false,
                ..
            } => Box::pin(node.read_barrier()).await.map_err(cluster_error),
            _ => Ok(()),
        }
    }
}
