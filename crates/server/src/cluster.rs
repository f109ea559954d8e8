//! Cluster mode at start-up: this node's Raft member over the engine, its cluster port, the
//! founding of a new cluster by the lowest id, and the cluster's metrics.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::AsFd;

use crate::runtime::Tasks;
use crate::upgrade::carry::{CarriedListener, Hub};
use polykv_cluster::identity::Identity;
use polykv_cluster::tcp::{self, TcpTransport};
use polykv_cluster::{Member, Node, NodeConfig, NodeId};
use polykv_engine::Engine;
use tokio::sync::watch;

use crate::config::Config;
use crate::runtime::ServerError;

/// Refuses a data directory that another node id wrote (its log and votes are that node's).
fn check_node_id(dir: &Path, id: NodeId) -> Result<(), ServerError> {
    let io = |what: String| move |source| ServerError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == id.to_string() => Ok(()),
        Ok(text) => Err(ServerError::Other(format!(
            "{} belongs to cluster node {}, not {id}: start with that id or an empty data directory",
            dir.display(),
            text.trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::write(&path, format!("{id}\n"))
            .map_err(io(format!("cannot write {}", path.display()))),
        Err(e) => Err(io(format!("cannot read {}", path.display()))(e)),
    }
}

/// This process's cluster member: the Raft node and the task serving the cluster port.
pub struct ClusterMember {
    pub node: Node,
    /// A copy of the cluster port's socket, for a hot upgrade to pass on.
    pub listener: CarriedListener,
    rpc: tokio::task::AbortHandle,
}

/// The cluster listener's name in a hot upgrade.
const LISTENER: &str = "cluster";

impl ClusterMember {
    /// Stops the member: the node first (a leader hands over, see [`Node::shutdown`]), then
    /// the cluster port's connections, which drop the last hold on the node.
    pub async fn stop(self) {
        self.node.shutdown().await;
        self.rpc.abort();
    }
}

/// Starts this node's cluster member: binds the cluster port (or takes the one a hot upgrade
/// carried), serves it, and founds the cluster when this is the lowest id of `cluster.peers`
/// and no cluster exists yet.
pub async fn start(
    config: &Config,
    engine: &Engine,
    tasks: &mut Tasks,
    hub: &Hub,
    shutdown: watch::Receiver<bool>,
) -> Result<ClusterMember, ServerError> {
    let c = &config.cluster;
    let peers = c.peer_map().map_err(ServerError::Other)?;
    let raft_dir = config.data_dir.join("raft");
    check_node_id(&raft_dir, c.node_id)?;
    let listen = config.listen_addr("", c.port);
    let bind_error = |source| ServerError::Bind {
        what: "cluster",
        addr: listen.clone(),
        source,
    };
    let listener = match hub.take_listener(LISTENER, false) {
        Some(fd) => {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true).map_err(bind_error)?;
            tokio::net::TcpListener::from_std(listener).map_err(bind_error)?
        }
        None => tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(bind_error)?,
    };
    let kept = listener.as_fd().try_clone_to_owned().map_err(bind_error)?;
    tracing::info!(listener = "cluster", addr = %listen, node = c.node_id, "listening");
    let identity = Identity::open(&raft_dir)
        .map_err(|e| ServerError::Other(format!("cannot read the cluster id: {e}")))?;
    let identity = Arc::new(identity);
    let transport = TcpTransport::new(c.node_id, c.secret.as_bytes(), identity.clone());
    let mut node_config = NodeConfig::new(c.node_id, raft_dir);
    node_config.write_timeout = Duration::from_millis(c.write_timeout_ms);
    node_config.snapshot_every = c.snapshot_entries;
    node_config.heartbeat = Duration::from_millis(c.heartbeat_ms);
    node_config.election_min = Duration::from_millis(c.election_timeout_ms);
    node_config.election_max = Duration::from_millis(2 * c.election_timeout_ms);
    node_config.direct_sync = config.engine.direct_sync;
    let node = Node::start(node_config, engine.clone(), transport.clone())
        .await
        .map_err(|e| ServerError::Other(format!("cannot start the cluster node: {e}")))?;

    // Served until the member stops (after the node: a leader hands over through it), not
    // at the shutdown signal.
    let serve = tcp::serve(
        listener,
        Arc::new(node.clone()),
        c.secret.as_bytes().into(),
        identity,
        transport.counters.clone(),
    );
    let rpc = tokio::spawn(serve).abort_handle();

    let voters: BTreeMap<NodeId, Member> = peers
        .iter()
        .map(|(id, addr)| (*id, Member { addr: addr.clone() }))
        .collect();
    if peers.keys().next() == Some(&c.node_id) {
        let founder = node.clone();
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    result = founder.found(voters.clone(), 20) => match result {
                        Ok(true) => {
                            tracing::info!("founded the cluster");
                            return;
                        }
                        Ok(false) => return,
                        Err(e) => tracing::info!(error = %e, "waiting for a majority to found the cluster"),
                    },
                    _ = stop.changed() => return,
                }
            }
        });
    }
    tasks.spawn(export_metrics(node.clone(), shutdown));
    Ok(ClusterMember {
        node,
        listener: CarriedListener {
            name: LISTENER.to_string(),
            udp: false,
            fd: kept,
        },
        rpc,
    })
}

/// Publishes the cluster's state as metrics once a second.
async fn export_metrics(node: Node, mut shutdown: watch::Receiver<bool>) {
    let mut leader = None;
    loop {
        let status = node.status();
        if status.leader != leader {
            metrics::counter!("polykv_cluster_leader_changes_total").increment(1);
            leader = status.leader;
        }
        metrics::gauge!("polykv_cluster_term").set(status.term as f64);
        metrics::gauge!("polykv_cluster_leader").set(status.leader.unwrap_or(0) as f64);
        metrics::gauge!("polykv_cluster_last_log_index")
            .set(status.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("polykv_cluster_applied_index")
            .set(status.last_applied.unwrap_or(0) as f64);
        metrics::counter!("polykv_cluster_forwards_total").absolute(status.forwards);
        metrics::gauge!("polykv_cluster_log_memory_entries")
            .set(status.log_entries_in_memory as f64);
        metrics::gauge!("polykv_cluster_log_memory_bytes").set(status.log_bytes_in_memory as f64);
        for member in &status.members {
            if let Some(lag) = member.lag {
                metrics::gauge!("polykv_cluster_follower_lag", "node" => member.id.to_string())
                    .set(lag as f64);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
