//! Protocol services: each maps one protocol's requests onto engine operations. A protocol's
//! quirks (reply codes, flags, value formats) live in its module and nowhere else.

pub mod jsonkv;
pub mod minority;
pub mod nmdb;
pub mod opencluster;
pub mod smalld;

use crate::runtime::{Runtime, ServerError};

/// Starts the listeners of every enabled protocol.
pub async fn start_all(runtime: &mut Runtime) -> Result<(), ServerError> {
    nmdb::start(runtime).await?;
    minority::start(runtime).await?;
    smalld::start(runtime).await?;
    opencluster::start(runtime).await?;
    jsonkv::start(runtime).await?;
    Ok(())
}
