//! Engine errors.

use std::sync::Arc;

/// Errors of the storage layer underneath the engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A system or storage-library call failed; `source` is its error, kept as it was.
    #[error("storage i/o error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A request the store cannot carry out: an unknown space, a key or a batch over a limit,
    /// or a store that stopped accepting writes.
    #[error("storage error: {0}")]
    Refused(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

/// Errors returned by engine operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A write or sync failed earlier; no later write is accepted until restart (the fsyncgate
    /// rule: after a failed fsync the kernel may have dropped dirty pages, so nothing written
    /// since can be trusted to be durable).
    #[error(
        "the store is poisoned after an earlier write or sync failure ({0}); restart the server"
    )]
    Poisoned(String),
    #[error("unknown keyspace id {0}")]
    UnknownKeyspace(u32),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// Cluster mode: the write or read could not be served in time (no leader reachable, or
    /// this node is cut off from the majority). A write may or may not have been applied.
    #[error("the cluster cannot serve the request now: {0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl StoreError {
    /// An I/O failure of `context` (what was being done, to what), keeping its source.
    pub fn io(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}
