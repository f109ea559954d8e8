//! The OpenCluster wing: its service (`service`), its configuration (`config`) and its
//! start-up.

mod config;
pub mod service;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use polykv_protocols::opencluster::OpenClusterServerCodec;

pub use config::OpenClusterConfig;
pub use service::{OpenClusterService, OpenClusterShared};

use crate::metrics::ProtocolMetrics;
use crate::runtime::{Runtime, ServerError};
use crate::services::Protocol;

/// OpenCluster, for the protocol list.
pub struct Wing;

impl Protocol for Wing {
    const NAME: &'static str = "opencluster";
    const TITLE: &'static str = "OpenCluster";
    type Config = OpenClusterConfig;

    fn validate(config: &OpenClusterConfig) -> Result<(), String> {
        config.validate()
    }

    /// Starts OpenCluster's listener, as configured.
    async fn start(runtime: &mut Runtime, config: &OpenClusterConfig) -> Result<(), ServerError> {
        let listener = &config.listener;
        if !listener.enabled {
            return Ok(());
        }
        let keyspace = runtime.keyspace(&listener.keyspace).await?;
        let codec = OpenClusterServerCodec {
            max_payload: u32::try_from(config.max_payload).unwrap_or(u32::MAX),
        };
        let shared = Arc::new(OpenClusterShared {
            engine: runtime.engine.clone(),
            submitter: runtime.submitter.clone(),
            keyspace,
            config: config.clone(),
            next_holder: AtomicU64::new(1),
            view: runtime.view.clone(),
        });
        runtime
            .serve_tcp(
                "opencluster tcp",
                listener,
                &config.session,
                codec,
                move || OpenClusterService::new(shared.clone()),
                Arc::new(ProtocolMetrics::new("opencluster", service::OPS)),
            )
            .await
    }
}
