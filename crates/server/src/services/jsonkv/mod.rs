//! jsonkv (jsonkv.md): one keyspace served over TCP (15001), UDP (15002) and JSON-RPC 2.0 over
//! HTTP (15003), and the jsonagent discovery service (15000), which lists this node.
//!
//! The jsonkv wing: `kv` maps put/get/delete onto the engine and answers framed requests (TCP
//! and UDP), `rpc` is the HTTP listener, `agent` the registry and its connections, `config` its
//! configuration section; start-up is here.

pub mod agent;
mod config;
pub mod kv;
pub mod rpc;

use std::sync::Arc;
use std::time::Duration;

use polykv_engine::Durability;
use polykv_protocols::jsonkv::{AgentServerCodec, JsonkvServerCodec, Limits};

pub use config::JsonkvConfig;

use crate::metrics::ProtocolMetrics;
use crate::runtime::{bind_if, Runtime, ServerError};
use crate::services::Protocol;
use crate::session::{serve_tcp, serve_udp, SessionLimits};
use agent::{AgentContext, Ports, Registry};
use kv::{JsonkvService, KvStore, UdpCodec};

fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

fn size(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// jsonkv, for the protocol list.
pub struct Wing;

impl Protocol for Wing {
    const NAME: &'static str = "jsonkv";
    type Config = JsonkvConfig;

    fn validate(config: &JsonkvConfig) -> Result<(), String> {
        config.validate()
    }

    async fn start(runtime: &mut Runtime, config: &JsonkvConfig) -> Result<(), ServerError> {
        start(runtime, config).await
    }
}

/// Starts the enabled jsonkv endpoints and the agent. Everything is bound before anything is
/// served, so a taken port fails the start cleanly.
async fn start(runtime: &mut Runtime, config: &JsonkvConfig) -> Result<(), ServerError> {
    let listener = &config.listener;
    let serves_kv = listener.enabled || config.udp_enabled || config.rpc_enabled;
    if !serves_kv && !config.agent_enabled {
        return Ok(());
    }
    let limits = Limits {
        max_frame: size(config.max_frame),
        max_key: size(config.max_key),
        max_value: size(config.max_value),
        max_depth: size(config.max_depth),
    };
    let addr = |port| runtime.listen_addr(&listener.addr, port);
    // Each bind is a future: it binds only when bind_if awaits it.
    let tcp = runtime.bind_tcp("jsonkv tcp", addr(listener.port));
    let tcp = bind_if(listener.enabled, tcp).await?;
    let udp = runtime.bind_udp("jsonkv udp", addr(config.udp_port));
    let udp = bind_if(config.udp_enabled, udp).await?;
    let rpc = runtime.bind_tcp("jsonkv json-rpc", addr(config.rpc_port));
    let rpc = bind_if(config.rpc_enabled, rpc).await?;
    let agent = runtime.bind_tcp("jsonkv agent", addr(config.agent_port));
    let agent = bind_if(config.agent_enabled, agent).await?;
    // The agent lists the ports actually bound (a configured 0 picks one).
    let port = |bound: std::io::Result<std::net::SocketAddr>| bound.ok().map(|a| a.port());
    let local_ports = Ports {
        tcp: tcp.as_ref().and_then(|l| port(l.local_addr())),
        udp: udp.as_ref().and_then(|s| port(s.local_addr())),
        rpc: rpc.as_ref().and_then(|l| port(l.local_addr())),
    };

    if serves_kv {
        let keyspace = runtime.keyspace(&listener.keyspace).await?;
        let durability = if config.async_acks {
            Durability::Async
        } else {
            Durability::Sync
        };
        let store = Arc::new(KvStore::new(
            runtime.submitter.clone(),
            keyspace,
            durability,
            size(config.max_batch_response),
        ));
        let codec = JsonkvServerCodec { limits };
        let metrics = Arc::new(ProtocolMetrics::new("jsonkv", kv::OPS));
        if let Some(tcp) = tcp {
            let idle = config.idle_timeout_secs;
            // No complete frame for the idle timeout closes, half-sent or not (§2.1).
            let session = SessionLimits::from_secs(idle, idle, config.max_output_bytes);
            let store = store.clone();
            runtime.tasks.spawn_sessions(serve_tcp(
                "jsonkv tcp",
                tcp,
                Arc::new(codec),
                move || JsonkvService::new(store.clone()),
                session,
                metrics.clone(),
                runtime.context.clone(),
            ));
        }
        if let Some(socket) = udp {
            runtime.tasks.spawn(serve_udp(
                socket,
                Arc::new(UdpCodec(codec)),
                JsonkvService::new(store.clone()),
                metrics,
                runtime.context.shutdown.clone(),
            ));
        }
        if let Some(rpc) = rpc {
            runtime.tasks.spawn(rpc::serve(
                rpc,
                store,
                limits,
                secs(config.idle_timeout_secs),
                Arc::new(ProtocolMetrics::new("jsonrpc", rpc::OPS)),
                runtime.context.clone(),
            ));
        }
    }

    if let Some(agent) = agent {
        let advertise = Some(config.advertise_addr.clone()).filter(|a| !a.is_empty());
        let context = Arc::new(AgentContext {
            registry: Arc::new({
                let registry =
                    Registry::new(local_ports, advertise, size(config.agent_max_registrations));
                match runtime.view.clone() {
                    Some(view) => registry.in_cluster(view),
                    None => registry,
                }
            }),
            codec: AgentServerCodec {
                max_frame: limits.max_frame,
                max_depth: limits.max_depth,
            },
            idle_timeout: secs(config.agent_idle_timeout_secs),
            metrics: Arc::new(ProtocolMetrics::new("jsonagent", agent::OPS)),
        });
        runtime
            .tasks
            .spawn(agent::serve(agent, context, runtime.context.clone()));
    }
    Ok(())
}
