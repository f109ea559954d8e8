//! The jsonagent discovery service (§7): an in-memory registry of jsonkv servers, each
//! registration bound to the connection that made it.
//!
//! It has its own small connection loop instead of `session::serve_tcp` because the local node
//! is listed under the local IP address of the connection a request came in on (§7.3), which
//! the shared framework does not hand to services.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use polykv_protocols::jsonkv::{
    AgentCode, AgentRequest, AgentResponse, AgentServerCodec, ServerEntry, ServerProtocol,
};
use polykv_protocols::{Decoded, ServerCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::ProtocolMetrics;
use crate::session::{serve_connections, ListenerContext};
use crate::upgrade::carry::{ExportState, Hub, Resumable};

/// Operation names for metrics.
pub const OPS: &[&str] = &["register", "unregister", "getserverlist", "invalid"];

/// The ports one node offers, per protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    pub tcp: Option<u16>,
    pub udp: Option<u16>,
    pub rpc: Option<u16>,
}

impl Ports {
    fn get(&self, protocol: ServerProtocol) -> Option<u16> {
        match protocol {
            ServerProtocol::Tcp => self.tcp,
            ServerProtocol::Udp => self.udp,
            ServerProtocol::Rpc => self.rpc,
        }
    }
}

struct Registration {
    address: String,
    ports: Ports,
}

struct State {
    /// Never reused while the agent runs (§7.3).
    next_id: u64,
    entries: BTreeMap<u64, Registration>,
}

/// The registry of one agent: this node's own entry plus what clients registered.
pub struct Registry {
    state: Mutex<State>,
    max_registrations: usize,
    local_id: u64,
    local_ports: Ports,
    /// Listed for this node instead of the connection's local IP, when set.
    advertise: Option<String>,
    /// Cluster mode: the other live members are listed too, under their node ids.
    cluster: Option<crate::topology::ClusterView>,
}

impl Registry {
    /// The local node takes the first node id (1).
    pub fn new(local_ports: Ports, advertise: Option<String>, max_registrations: usize) -> Self {
        Registry {
            state: Mutex::new(State {
                next_id: 2,
                entries: BTreeMap::new(),
            }),
            max_registrations,
            local_id: 1,
            local_ports,
            advertise,
            cluster: None,
        }
    }

    /// Cluster mode: this node is listed under its cluster node id, every other live member
    /// under its own, and registrations are numbered past every possible node id.
    pub fn in_cluster(mut self, view: crate::topology::ClusterView) -> Self {
        self.local_id = view.me();
        self.state.get_mut().next_id = crate::config::MAX_NODE_ID + 1;
        self.cluster = Some(view);
        self
    }

    /// A new registration's node id, or 901 when the registry is full.
    fn register(&self, address: String, ports: Ports) -> Result<u64, AgentCode> {
        let mut state = self.state.lock();
        if state.entries.len() >= self.max_registrations {
            return Err(AgentCode::RegisterFailed);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.entries.insert(id, Registration { address, ports });
        Ok(id)
    }

    fn unregister(&self, id: u64) {
        self.state.lock().entries.remove(&id);
    }

    /// Every server offering `protocol`, ascending node id, each (address, port) once under
    /// its lowest id. `local_ip` is the address of this node as the asking client reaches it.
    pub fn list(&self, protocol: ServerProtocol, local_ip: IpAddr) -> Vec<ServerEntry> {
        let mut out = Vec::new();
        if let Some(port) = self.local_ports.get(protocol) {
            out.push(ServerEntry {
                nodeid: self.local_id,
                address: self
                    .advertise
                    .clone()
                    .unwrap_or_else(|| local_ip.to_string()),
                port,
            });
        }
        if let Some(view) = &self.cluster {
            let topology = view.topology();
            for (id, endpoints) in topology.live().filter(|(id, _)| *id != self.local_id) {
                let port = match protocol {
                    ServerProtocol::Tcp => endpoints.jsonkv_tcp,
                    ServerProtocol::Udp => endpoints.jsonkv_udp,
                    ServerProtocol::Rpc => endpoints.jsonkv_rpc,
                };
                if let Some(port) = port {
                    out.push(ServerEntry {
                        nodeid: id,
                        address: endpoints.host.clone(),
                        port,
                    });
                }
            }
            out.sort_by_key(|e| e.nodeid);
        }
        let state = self.state.lock();
        for (id, r) in &state.entries {
            if let Some(port) = r.ports.get(protocol) {
                out.push(ServerEntry {
                    nodeid: *id,
                    address: r.address.clone(),
                    port,
                });
            }
        }
        drop(state);
        let mut seen = HashSet::new();
        out.retain(|e| seen.insert((e.address.clone(), e.port)));
        out
    }
}

/// One agent connection: at most one registration, dropped with the connection.
struct Connection {
    registry: Arc<Registry>,
    registered: Option<u64>,
    local_ip: IpAddr,
}

impl Connection {
    fn call(&mut self, request: AgentRequest) -> AgentResponse {
        match request {
            AgentRequest::Register {
                address,
                tcpport,
                rpcport,
                udpport,
            } => {
                // A second register on one connection leaves the first unchanged (§9).
                if self.registered.is_some() {
                    return AgentResponse::error(AgentCode::RegisterFailed);
                }
                let ports = Ports {
                    tcp: tcpport,
                    udp: udpport,
                    rpc: rpcport,
                };
                match self.registry.register(address, ports) {
                    Ok(id) => {
                        self.registered = Some(id);
                        AgentResponse::registered(id)
                    }
                    Err(code) => AgentResponse::error(code),
                }
            }
            AgentRequest::Unregister => match self.registered.take() {
                Some(id) => {
                    self.registry.unregister(id);
                    AgentResponse::unregistered()
                }
                None => AgentResponse::error(AgentCode::AlreadyRemoved),
            },
            AgentRequest::GetServerList { protocol } => {
                AgentResponse::server_list(self.registry.list(protocol, self.local_ip))
            }
            AgentRequest::Invalid { code } => AgentResponse::error(code),
        }
    }
}

impl Drop for Connection {
    // Also runs when the task is aborted at the shutdown deadline.
    fn drop(&mut self) {
        if let Some(id) = self.registered.take() {
            self.registry.unregister(id);
        }
    }
}

fn op_name(request: &AgentRequest) -> &'static str {
    match request {
        AgentRequest::Register { .. } => "register",
        AgentRequest::Unregister => "unregister",
        AgentRequest::GetServerList { .. } => "getserverlist",
        AgentRequest::Invalid { .. } => "invalid",
    }
}

/// What every agent connection shares.
pub struct AgentContext {
    pub registry: Arc<Registry>,
    pub codec: AgentServerCodec,
    pub idle_timeout: Option<Duration>,
    pub metrics: Arc<ProtocolMetrics>,
}

/// The listener's name, under which a hot upgrade carries its connections.
const LISTENER: &str = "jsonkv agent";

/// Accepts agent connections until shutdown. The connections a hot upgrade carried (with their
/// registrations) are taken at once, before the future runs, and resumed first.
pub fn serve(
    listener: TcpListener,
    agent: Arc<AgentContext>,
    context: ListenerContext,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let hub = context.handover.clone();
    let resumed = carry::resume(&hub, &agent.registry)
        .into_iter()
        .map(|(stream, start)| {
            let shutdown = context.shutdown.clone();
            connection(stream, agent.clone(), hub.clone(), shutdown, Some(start))
        })
        .collect();
    let accepting = hub.accepting();
    async move {
        let metrics = agent.metrics.clone();
        let later = futures_util::stream::empty();
        serve_connections(
            listener,
            &metrics,
            context,
            accepting,
            resumed,
            later,
            |stream, shutdown| {
                let _ = stream.set_nodelay(true);
                connection(stream, agent.clone(), hub.clone(), shutdown, None)
            },
        )
        .await;
    }
}

async fn connection(
    stream: TcpStream,
    agent: Arc<AgentContext>,
    hub: Arc<Hub>,
    shutdown: watch::Receiver<bool>,
    start: Option<Start>,
) {
    agent.metrics.connection_opened();
    let reason = match run(stream, &agent, shutdown, start, &hub).await {
        Ended::Closed(reason) => reason,
        Ended::Stopped(stopped) => {
            carry::deposit(&hub, &agent.registry, stopped);
            "handed over"
        }
    };
    agent.metrics.connection_closed();
    tracing::debug!(protocol = agent.metrics.name, reason, "connection closed");
}

/// Where a connection picks up: its unread input, its idle timer and its registration.
struct Start {
    input: BytesMut,
    last_frame: Instant,
    registered: Option<u64>,
}

enum Ended {
    Closed(&'static str),
    /// Stopped at a frame boundary for a hot upgrade; its registration kept.
    Stopped(Stopped),
}

struct Stopped {
    stream: TcpStream,
    start: Start,
}

/// Serves one connection: every complete frame is answered in order, replies are written
/// before more is read (back-pressure), and the connection closes after the idle timeout
/// without a complete frame (J6), on a bad frame length (J1) or at shutdown.
async fn run(
    mut stream: TcpStream,
    agent: &AgentContext,
    mut shutdown: watch::Receiver<bool>,
    start: Option<Start>,
    hub: &Hub,
) -> Ended {
    let Start {
        mut input,
        mut last_frame,
        registered,
    } = start.unwrap_or_else(|| Start {
        input: BytesMut::with_capacity(4096),
        last_frame: Instant::now(),
        registered: None,
    });
    let local_ip = stream.local_addr().map(|a| a.ip().to_canonical());
    // Built before any return, so a carried registration is dropped with the connection.
    let mut connection = Connection {
        registry: agent.registry.clone(),
        registered,
        local_ip: *local_ip.as_ref().unwrap_or(&IpAddr::from([127, 0, 0, 1])),
    };
    if local_ip.is_err() {
        return Ended::Closed("no local address");
    }
    let mut output = BytesMut::new();
    if *shutdown.borrow() {
        return Ended::Closed("shutting down");
    }
    loop {
        let idle = async {
            match agent.idle_timeout {
                Some(t) => tokio::time::sleep_until((last_frame + t).into()).await,
                None => std::future::pending().await,
            }
        };
        if input.capacity() - input.len() < 1024 {
            input.reserve(4096);
        }
        tokio::select! {
            read = stream.read_buf(&mut input) => match read {
                Ok(0) if input.is_empty() => return Ended::Closed("client closed"),
                Ok(0) => return Ended::Closed("client closed mid-frame"),
                Ok(_) => {}
                Err(_) => return Ended::Closed("read error"),
            },
            _ = idle => return Ended::Closed("idle timeout"),
            _ = shutdown.changed() => {
                if !hub.exporting() {
                    return Ended::Closed("shutting down");
                }
                // Every reply composed has been written: a frame boundary. The registration
                // leaves with the connection instead of being dropped.
                let registered = connection.registered.take();
                return Ended::Stopped(Stopped {
                    stream,
                    start: Start { input, last_frame, registered },
                });
            }
        }
        let mut close = None;
        loop {
            match agent.codec.decode_request(&input) {
                Ok(Decoded::Frame(request, used)) => {
                    input.advance(used);
                    last_frame = Instant::now();
                    let op = op_name(&request);
                    let response = connection.call(request);
                    agent
                        .metrics
                        .record(op, !response.is_success(), last_frame.elapsed());
                    agent.codec.encode_response(&response, &mut output);
                }
                Ok(Decoded::Incomplete) => break,
                Err(reject) => {
                    agent.metrics.rejected_frames.increment(1);
                    close = Some(reject.reason);
                    break;
                }
            }
        }
        if !output.is_empty() {
            // A client that stops reading is given the idle timeout to drain its replies.
            let write = stream.write_all(&output);
            let written = match agent.idle_timeout {
                Some(t) => tokio::time::timeout(t, write).await.ok(),
                None => Some(write.await),
            };
            if !matches!(written, Some(Ok(()))) {
                return Ended::Closed("write error");
            }
            output.clear();
        }
        if let Some(reason) = close {
            return Ended::Closed(reason);
        }
    }
}

/// An agent connection across a hot upgrade: its registration (id, address, ports) and the
/// registry's next id, so ids are never reused.
mod carry {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::upgrade::carry::Stopped as Deposit;

    /// (id, address, tcp, udp, rpc)
    type Carried = (u64, String, Option<u16>, Option<u16>, Option<u16>);

    #[derive(Serialize, Deserialize)]
    struct State {
        next_id: u64,
        registration: Option<Carried>,
    }

    /// The registration, read once every session has stopped.
    struct Export {
        registry: Arc<Registry>,
        registered: Option<u64>,
    }

    impl ExportState for Export {
        fn export(&mut self) -> Result<Vec<u8>, String> {
            let state = self.registry.state.lock();
            let registration = self.registered.and_then(|id| {
                let r = state.entries.get(&id)?;
                Some((id, r.address.clone(), r.ports.tcp, r.ports.udp, r.ports.rpc))
            });
            let state = State {
                next_id: state.next_id,
                registration,
            };
            postcard::to_allocvec(&state).map_err(|e| e.to_string())
        }
    }

    pub(super) fn deposit(hub: &Hub, registry: &Arc<Registry>, stopped: Stopped) {
        let Stopped { stream, start } = stopped;
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot carry an agent connection");
                if let Some(id) = start.registered {
                    registry.unregister(id);
                }
                return;
            }
        };
        hub.deposit(Deposit {
            id: None,
            listener: LISTENER,
            stream,
            input: start.input.to_vec(),
            idle: start.last_frame.elapsed(),
            partial: None,
            service: Box::new(Export {
                registry: registry.clone(),
                registered: start.registered,
            }),
        });
    }

    /// The carried connections, their registrations restored under the same ids.
    pub(super) fn resume(hub: &Hub, registry: &Registry) -> Vec<(TcpStream, Start)> {
        let mut out = Vec::new();
        for Resumable { fd, state, .. } in hub.take_sessions(LISTENER) {
            let resumed = postcard::from_bytes::<State>(&state.service)
                .map_err(|e| e.to_string())
                .and_then(|carried| {
                    let stream = std::net::TcpStream::from(fd);
                    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                    let stream = TcpStream::from_std(stream).map_err(|e| e.to_string())?;
                    Ok((stream, carried))
                });
            let (stream, carried) = match resumed {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "carried agent connection refused; closed");
                    continue;
                }
            };
            let mut registry_state = registry.state.lock();
            registry_state.next_id = registry_state.next_id.max(carried.next_id);
            let registered = carried.registration.map(|(id, address, tcp, udp, rpc)| {
                let ports = Ports { tcp, udp, rpc };
                registry_state
                    .entries
                    .insert(id, Registration { address, ports });
                id
            });
            drop(registry_state);
            let now = Instant::now();
            let idle = Duration::from_millis(state.idle_ms);
            let start = Start {
                input: BytesMut::from(&state.input[..]),
                last_frame: now.checked_sub(idle).unwrap_or(now),
                registered,
            };
            out.push((stream, start));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max: usize) -> Arc<Registry> {
        Arc::new(Registry::new(
            Ports {
                tcp: Some(15001),
                udp: None,
                rpc: Some(15003),
            },
            None,
            max,
        ))
    }

    fn connection(registry: &Arc<Registry>) -> Connection {
        Connection {
            registry: registry.clone(),
            registered: None,
            local_ip: "127.0.0.1".parse().unwrap(),
        }
    }

    fn register(address: &str, tcp: Option<u16>, udp: Option<u16>) -> AgentRequest {
        AgentRequest::Register {
            address: address.into(),
            tcpport: tcp,
            rpcport: None,
            udpport: udp,
        }
    }

    fn listed(registry: &Registry, protocol: ServerProtocol) -> Vec<(u64, String, u16)> {
        registry
            .list(protocol, "127.0.0.1".parse().unwrap())
            .into_iter()
            .map(|e| (e.nodeid, e.address, e.port))
            .collect()
    }

    #[test]
    fn registrations_live_with_their_connection() {
        let r = registry(10);
        let mut a = connection(&r);
        assert_eq!(
            a.call(register("10.0.0.5", Some(15001), Some(15002))),
            AgentResponse::registered(2)
        );
        assert_eq!(
            a.call(register("10.0.0.6", Some(1), None)),
            AgentResponse::error(AgentCode::RegisterFailed),
            "a second register is refused and changes nothing"
        );
        assert_eq!(
            listed(&r, ServerProtocol::Tcp),
            [
                (1, "127.0.0.1".into(), 15001),
                (2, "10.0.0.5".into(), 15001)
            ]
        );
        assert_eq!(
            listed(&r, ServerProtocol::Udp),
            [(2, "10.0.0.5".into(), 15002)]
        );
        assert_eq!(
            a.call(AgentRequest::Unregister),
            AgentResponse::unregistered()
        );
        assert_eq!(
            a.call(AgentRequest::Unregister),
            AgentResponse::error(AgentCode::AlreadyRemoved)
        );
        assert_eq!(
            a.call(AgentRequest::GetServerList {
                protocol: ServerProtocol::Udp
            }),
            AgentResponse::error(AgentCode::NoServerAlive)
        );
        // Ids are never reused; a dropped connection takes its registration along.
        let mut b = connection(&r);
        assert_eq!(
            b.call(register("h", None, Some(7))),
            AgentResponse::registered(3)
        );
        drop(b);
        assert!(listed(&r, ServerProtocol::Udp).is_empty());
    }

    #[test]
    fn duplicates_are_listed_once_under_the_lowest_id() {
        let r = registry(10);
        let (mut a, mut b) = (connection(&r), connection(&r));
        a.call(register("127.0.0.1", Some(15001), None));
        b.call(register("10.0.0.1", Some(9), None));
        let mut c = connection(&r);
        c.call(register("10.0.0.1", Some(9), None));
        assert_eq!(
            listed(&r, ServerProtocol::Tcp),
            [(1, "127.0.0.1".into(), 15001), (3, "10.0.0.1".into(), 9)]
        );
    }

    #[test]
    fn full_registry_answers_901_and_advertise_wins() {
        let r = Arc::new(Registry::new(
            Ports {
                tcp: Some(1),
                ..Ports::default()
            },
            Some("db.example".into()),
            1,
        ));
        let (mut a, mut b) = (connection(&r), connection(&r));
        assert_eq!(
            a.call(register("x", Some(2), None)),
            AgentResponse::registered(2)
        );
        assert_eq!(
            b.call(register("y", Some(3), None)),
            AgentResponse::error(AgentCode::RegisterFailed)
        );
        assert_eq!(listed(&r, ServerProtocol::Tcp)[0].1, "db.example");
    }
}
