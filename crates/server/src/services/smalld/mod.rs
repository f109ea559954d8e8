//! The smalld wing: its service (`service`), its request log (`log`), its configuration
//! (`config`) and its start-up.

mod config;
pub mod log;
pub mod service;

use std::sync::Arc;

pub use config::{RequestLog, SmalldConfig};
pub use service::{secret_key, Smalld};

use crate::metrics::ProtocolMetrics;
use crate::runtime::{Runtime, ServerError};
use crate::services::Protocol;

/// smalld, for the protocol list.
pub struct Wing;

impl Protocol for Wing {
    const NAME: &'static str = "smalld";
    type Config = SmalldConfig;

    fn validate(config: &SmalldConfig) -> Result<(), String> {
        config.validate()
    }

    /// Starts smalld's listener, as configured.
    async fn start(runtime: &mut Runtime, config: &SmalldConfig) -> Result<(), ServerError> {
        let listener = &config.listener;
        if !listener.enabled {
            return Ok(());
        }
        let key = secret_key(config, &runtime.config.data_dir)?;
        let keyspace = runtime.keyspace(&listener.keyspace).await?;
        let tcp = runtime
            .bind_tcp(
                "smalld tcp",
                runtime.listen_addr(&listener.addr, listener.port),
            )
            .await?;
        let service = Arc::new(Smalld {
            engine: runtime.engine.clone(),
            submitter: runtime.submitter.clone(),
            keyspace,
            key,
            config: config.clone(),
            metrics: ProtocolMetrics::new("smalld", service::OPS),
        });
        runtime
            .tasks
            .spawn(service::serve(tcp, service, runtime.context.clone()));
        Ok(())
    }
}
