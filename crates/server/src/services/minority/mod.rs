//! The minority wing: its service (`service`), the engine keys of its ids (`keys`), its
//! configuration (`config`) and its start-up.

mod config;
pub mod fanout;
pub mod keys;
pub mod service;

use std::sync::Arc;

use polykv_protocols::minority::MinorityServerCodec;

pub use config::MinorityConfig;
pub use service::{MinorityService, MinorityShared};

use crate::metrics::ProtocolMetrics;
use crate::runtime::{Runtime, ServerError};
use crate::services::Protocol;

/// minority, for the protocol list.
pub struct Wing;

impl Protocol for Wing {
    const NAME: &'static str = "minority";
    type Config = MinorityConfig;

    /// Starts minority's listener, as configured.
    async fn start(runtime: &mut Runtime, config: &MinorityConfig) -> Result<(), ServerError> {
        let listener = &config.listener;
        if !listener.enabled {
            return Ok(());
        }
        let keyspace = runtime.keyspace(&listener.keyspace).await?;
        let codec = MinorityServerCodec {
            max_body: u32::try_from(config.max_body).unwrap_or(u32::MAX),
        };
        let shared = Arc::new(MinorityShared {
            engine: runtime.engine.clone(),
            submitter: runtime.submitter.clone(),
            keyspace,
            config: config.clone(),
            fanout: fanout::Fanout::new(runtime.engine.clone(), keyspace, codec),
            local_reads: runtime.submitter.reads_locally(),
        });
        runtime
            .serve_tcp(
                "minority tcp",
                listener,
                &config.session,
                codec,
                move || MinorityService::new(shared.clone()),
                Arc::new(ProtocolMetrics::new("minority", service::OPS)),
            )
            .await
    }
}
