//! The nmdb wing: its service (`service`), its configuration (`config`) and its start-up, TCP
//! and UDP.

mod config;
pub mod service;

use std::sync::Arc;

use polykv_protocols::nmdb::{NmdbServerCodec, Transport};

pub use config::NmdbConfig;
pub use service::{NmdbService, NmdbShared};

use crate::metrics::ProtocolMetrics;
use crate::runtime::{Runtime, ServerError};
use crate::services::Protocol;
use crate::session::serve_udp;

/// nmdb, for the protocol list.
pub struct Wing;

impl Protocol for Wing {
    const NAME: &'static str = "nmdb";
    type Config = NmdbConfig;

    /// Starts nmdb's TCP and UDP listeners, as configured.
    async fn start(runtime: &mut Runtime, config: &NmdbConfig) -> Result<(), ServerError> {
        let listener = &config.listener;
        if !listener.enabled && !config.udp_enabled {
            return Ok(());
        }
        let keyspace = runtime.keyspace(&listener.keyspace).await?;
        let shared = Arc::new(NmdbShared::new(
            runtime.submitter.clone(),
            keyspace,
            runtime.read_only.clone(),
        ));
        let metrics = Arc::new(ProtocolMetrics::new("nmdb", service::OPS));
        if listener.enabled {
            let shared = shared.clone();
            runtime
                .serve_tcp(
                    "nmdb tcp",
                    listener,
                    &config.session,
                    NmdbServerCodec {
                        transport: Transport::Tcp,
                    },
                    move || NmdbService::new(shared.clone(), Transport::Tcp),
                    metrics.clone(),
                )
                .await?;
        }
        if config.udp_enabled {
            let socket = runtime
                .bind_udp(
                    "nmdb udp",
                    runtime.listen_addr(&listener.addr, config.udp_port),
                )
                .await?;
            runtime.tasks.spawn(serve_udp(
                socket,
                Arc::new(NmdbServerCodec {
                    transport: Transport::Udp,
                }),
                NmdbService::new(shared, Transport::Udp),
                metrics,
                runtime.context.shutdown.clone(),
            ));
        }
        Ok(())
    }
}
