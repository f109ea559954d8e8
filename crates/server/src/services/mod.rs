//! Protocol services: each maps one protocol's requests onto engine operations. A protocol's
//! quirks (reply codes, flags, value formats) live in its module and nowhere else.

pub mod jsonkv;
pub mod minority;
pub mod nmdb;
pub mod opencluster;
pub mod smalld;

use std::sync::Arc;

use polykv_protocols::ServerCodec;

use crate::metrics::ProtocolMetrics;
use crate::server::{Runtime, ServerError};
use crate::session::{serve_tcp, Service, SessionLimits};

/// Where a protocol's TCP listener binds: its own address (empty = the global `bind`) and port.
pub struct TcpAddr<'a> {
    pub addr: &'a str,
    pub port: u16,
}

/// Binds a protocol's TCP listener (a taken port fails the start) and serves it with the shared
/// session loop until shutdown.
pub async fn serve_tcp_listener<C, S, F>(
    runtime: &mut Runtime,
    name: &'static str,
    at: TcpAddr<'_>,
    limits: SessionLimits,
    codec: C,
    new_service: F,
    metrics: Arc<ProtocolMetrics>,
) -> Result<(), ServerError>
where
    C: ServerCodec<Request = S::Request, Response = S::Response> + Send + Sync + 'static,
    S: Service,
    F: Fn() -> S + Send + 'static,
{
    let listener = runtime
        .bind_tcp(name, runtime.config.listen_addr(at.addr, at.port))
        .await?;
    runtime.tasks.spawn(serve_tcp(
        listener,
        Arc::new(codec),
        new_service,
        limits,
        metrics,
        runtime.context.clone(),
    ));
    Ok(())
}

/// Starts the listeners of every enabled protocol.
pub async fn start_all(runtime: &mut Runtime) -> Result<(), ServerError> {
    nmdb::start(runtime).await?;
    minority::start(runtime).await?;
    smalld::start(runtime).await?;
    opencluster::start(runtime).await?;
    jsonkv::start(runtime).await?;
    Ok(())
}
