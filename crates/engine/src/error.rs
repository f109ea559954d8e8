//! Engine errors.

/// Errors of the storage layer underneath the engine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage i/o error: {0}")]
    Io(String),
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
    #[error("the stored value is not an integer")]
    WrongType,
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;
