//! What the protocols see of the cluster: where every member serves its protocols, which
//! members are live, and who is the primary of each bucket.
//!
//! Each node's protocol endpoints are a replicated record in the `_cluster` keyspace (key: the
//! node id, u64 big-endian; value: [`Endpoints`] as JSON), so every node knows the others'
//! OpenCluster and jsonkv listeners without a change to the Raft membership's format. A node
//! writes its own record once it is a member; the leader marks a member it has not reached for
//! `cluster.node_down_ms` as not live and deletes the records of removed nodes. Liveness is
//! therefore decided once, through Raft, and every replica agrees on it.
//!
//! OpenCluster's locks are entries of the `_locks` keyspace in cluster mode (key: the lock
//! name; value and owner: the holder, whose bits 40–55 are its node's id; TTL: the lock's
//! deadline), so they are replicated, survive restarts and travel in snapshots. The leader
//! releases every lock whose node is not live with conditional deletes (see
//! [`release_dead_locks`]); a node releases its own old locks once when it starts.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::time::{Duration, Instant};

use bytes::Bytes;
use polykv_cluster::{group_of_bucket, Node, NodeId};
use polykv_engine::{Command, Condition, Durability, Engine, KeyspaceId, Outcome, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Config;

/// The keyspace of the members' endpoint records.
pub const KEYSPACE: &str = "_cluster";
/// The keyspace of OpenCluster's locks in cluster mode.
pub const LOCKS_KEYSPACE: &str = "_locks";

/// How often the topology is re-read at the latest (it is also re-read on every Raft change).
const REFRESH: Duration = Duration::from_millis(250);
/// Shortest pause between two re-reads (Raft's metrics change with every write).
const REFRESH_MIN: Duration = Duration::from_millis(20);
/// How often a node checks its own record, and the leader probes the members.
const TICK: Duration = Duration::from_millis(300);
/// How often the leader looks at the locks while nothing calls for it (to forget locks whose
/// timeout has run out).
const FULL_SWEEP: Duration = Duration::from_secs(10);
/// Most locks the leader looks at in one pass.
const SWEEP_LIMIT: usize = 100_000;

/// Where one member serves its protocols, as replicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The host clients reach the node at.
    pub host: String,
    pub opencluster: Option<u16>,
    pub jsonkv_tcp: Option<u16>,
    pub jsonkv_udp: Option<u16>,
    pub jsonkv_rpc: Option<u16>,
    /// False once the leader has declared the node down; the node sets it again.
    pub live: bool,
}

impl Endpoints {
    /// `host:port` (brackets around an IPv6 host).
    pub fn addr(&self, port: u16) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }

    fn encode(&self) -> Value {
        // Serializing a struct of strings and integers cannot fail.
        Value::Bytes(Bytes::from(serde_json::to_vec(self).unwrap_or_default()))
    }

    fn decode(value: &Value) -> Option<Endpoints> {
        serde_json::from_slice(&value.to_bytes()).ok()
    }
}

/// One member as the protocols see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its record, once it has written one.
    pub endpoints: Option<Endpoints>,
}

impl MemberView {
    pub fn live(&self) -> Option<&Endpoints> {
        self.endpoints.as_ref().filter(|e| e.live)
    }
}

/// The cluster at one moment, as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub me: NodeId,
    /// The leader of the (one) Raft group.
    pub leader: Option<NodeId>,
    /// Every member of the Raft membership (voters and learners).
    pub members: BTreeMap<NodeId, MemberView>,
}

impl Topology {
    /// The members whose record says live, ascending id.
    pub fn live(&self) -> impl Iterator<Item = (NodeId, &Endpoints)> {
        self.members
            .iter()
            .filter_map(|(id, m)| m.live().map(|e| (*id, e)))
    }

    /// The node that is primary for an OpenCluster bucket: the leader of the bucket's Raft
    /// group (one group for every bucket at this stage).
    pub fn primary_of(&self, bucket: u32) -> Option<NodeId> {
        let _group = group_of_bucket(bucket);
        self.leader
    }

    /// This node's level for a bucket: 0 if primary, else 1 + how many other backups (live
    /// members besides the primary) have a lower id.
    pub fn level(&self, bucket: u32) -> i32 {
        let primary = self.primary_of(bucket);
        if primary == Some(self.me) {
            return 0;
        }
        let below = self
            .live()
            .filter(|(id, _)| *id < self.me && Some(*id) != primary)
            .count();
        i32::try_from(below + 1).unwrap_or(i32::MAX)
    }

    /// `host:port` of a member's OpenCluster listener.
    pub fn opencluster_addr(&self, id: NodeId) -> Option<String> {
        let endpoints = self.members.get(&id)?.endpoints.as_ref()?;
        Some(endpoints.addr(endpoints.opencluster?))
    }

    /// The OpenCluster listeners of the other live members, ascending id.
    pub fn other_opencluster_addrs(&self) -> Vec<String> {
        self.live()
            .filter(|(id, _)| *id != self.me)
            .filter_map(|(_, e)| e.opencluster.map(|port| e.addr(port)))
            .collect()
    }
}

/// The protocols' handle on the cluster. Cheap to clone.
#[derive(Clone)]
pub struct ClusterView {
    pub node: Node,
    pub engine: Engine,
    /// The `_cluster` keyspace.
    pub records: KeyspaceId,
    /// The `_locks` keyspace.
    pub locks: KeyspaceId,
    topology: watch::Receiver<Topology>,
    /// This node's record as it writes it.
    own: std::sync::Arc<Endpoints>,
    /// This node has released its locks of before its start.
    swept: watch::Receiver<bool>,
}

impl ClusterView {
    pub fn topology(&self) -> Topology {
        self.topology.borrow().clone()
    }

    /// Reads the current topology without copying it (for every data command).
    pub fn with_topology<R>(&self, read: impl FnOnce(&Topology) -> R) -> R {
        read(&self.topology.borrow())
    }

    /// A receiver that wakes on every change of the topology.
    pub fn subscribe(&self) -> watch::Receiver<Topology> {
        self.topology.clone()
    }

    pub fn me(&self) -> NodeId {
        self.node.id()
    }

    /// Whether this node's connections may take OpenCluster locks now: it has released its
    /// locks of before its start, and its record is live.
    pub fn locks_ready(&self) -> bool {
        *self.swept.borrow()
            && self
                .topology
                .borrow()
                .members
                .get(&self.me())
                .is_some_and(|m| m.endpoints.as_ref() == Some(&*self.own))
    }
}

fn record_key(id: NodeId) -> Bytes {
    Bytes::copy_from_slice(&id.to_be_bytes())
}

/// Every record with its version.
fn read_records(engine: &Engine, ks: KeyspaceId) -> BTreeMap<NodeId, (Endpoints, u64)> {
    let entries = engine
        .scan(ks, Bound::Unbounded, Bound::Unbounded, 1 << 16)
        .unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|(key, entry)| {
            let id = NodeId::from_be_bytes(key.as_ref().try_into().ok()?);
            Some((id, (Endpoints::decode(&entry.value)?, entry.version)))
        })
        .collect()
}

fn current_topology(node: &Node, engine: &Engine, ks: KeyspaceId) -> Topology {
    let status = node.status();
    let mut records = read_records(engine, ks);
    let members = status
        .members
        .iter()
        .map(|m| {
            let endpoints = records.remove(&m.id).map(|(e, _)| e);
            (m.id, MemberView { endpoints })
        })
        .collect();
    Topology {
        me: status.node_id,
        leader: status.leader,
        members,
    }
}

/// An OpenCluster lock as the `_locks` keyspace holds it (cluster mode). It has no TTL: the
/// expiry reaper runs on each replica on its own clock, so a lock's end is decided by whoever
/// takes it over, with a condition on the entry's version that every replica checks alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRecord {
    pub holder: u64,
    /// Milliseconds since the epoch; None = until unlock or disconnect.
    pub deadline: Option<u64>,
}

impl LockRecord {
    /// 16 bytes: the holder, then the deadline (0 = none), big-endian.
    pub fn value(&self) -> Value {
        let mut out = Vec::with_capacity(16);
        out.extend(self.holder.to_be_bytes());
        out.extend(self.deadline.unwrap_or(0).to_be_bytes());
        Value::Bytes(Bytes::from(out))
    }

    pub fn decode(value: &Value) -> Option<LockRecord> {
        let raw = value.to_bytes();
        let holder = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
        let deadline = u64::from_be_bytes(raw.get(8..16)?.try_into().ok()?);
        (raw.len() == 16).then_some(LockRecord {
            holder,
            deadline: (deadline != 0).then_some(deadline),
        })
    }

    pub fn live(&self, now_ms: u64) -> bool {
        self.deadline.is_none_or(|d| d > now_ms)
    }
}

/// In cluster mode bits 40–55 of an OpenCluster lock holder are its node's id, so the holders
/// of all nodes differ and the leader knows whose locks to release when a node goes down.
const HOLDER_NODE_SHIFT: u32 = 40;

/// A lock holder of node `node`: `base` (the protocol's tag bits) with the node id and the
/// connection counter (its low 40 bits).
pub fn cluster_holder(base: u64, node: NodeId, counter: u64) -> u64 {
    base | ((node & 0xFFFF) << HOLDER_NODE_SHIFT) | (counter & ((1 << HOLDER_NODE_SHIFT) - 1))
}

/// The node id a lock holder belongs to.
pub fn holder_node(holder: u64) -> NodeId {
    (holder >> HOLDER_NODE_SHIFT) & 0xFFFF
}

/// This node's own record: its advertised host and the ports it serves.
fn own_endpoints(config: &Config) -> Endpoints {
    let cluster = &config.cluster;
    let from_peers = cluster
        .peer_map()
        .ok()
        .and_then(|peers| peers.get(&cluster.node_id).cloned());
    let cluster_addr = Some(cluster.advertise_addr.clone())
        .filter(|a| !a.is_empty())
        .or(from_peers);
    let host = cluster_addr
        .as_deref()
        .and_then(|a| a.rsplit_once(':').map(|(h, _)| h))
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or_else(|| config.bind.clone());
    let protocols = &config.protocols;
    let oc = &protocols.opencluster;
    let kv = &protocols.jsonkv;
    Endpoints {
        host,
        opencluster: oc.listener.enabled.then_some(oc.listener.port),
        jsonkv_tcp: kv.listener.enabled.then_some(kv.listener.port),
        jsonkv_udp: kv.udp_enabled.then_some(kv.udp_port),
        jsonkv_rpc: kv.rpc_enabled.then_some(kv.rpc_port),
        live: true,
    }
}

/// Starts the topology: keeps it current, keeps this node's record live, and (on the leader)
/// declares unreachable members down and releases their locks.
pub fn start(
    config: &Config,
    node: Node,
    engine: Engine,
    records: KeyspaceId,
    locks: KeyspaceId,
    tasks: &mut crate::runtime::Tasks,
    shutdown: watch::Receiver<bool>,
) -> ClusterView {
    let (topology_tx, topology) = watch::channel(current_topology(&node, &engine, records));
    let (swept_tx, swept) = watch::channel(false);
    let view = ClusterView {
        node,
        engine,
        records,
        locks,
        topology,
        own: std::sync::Arc::new(own_endpoints(config)),
        swept,
    };
    tasks.spawn(refresh(view.clone(), topology_tx, shutdown.clone()));
    tasks.spawn(keep_registered(view.clone(), swept_tx, shutdown.clone()));
    let down_after = Duration::from_millis(config.cluster.node_down_ms);
    tasks.spawn(lead(view.clone(), down_after, shutdown));
    view
}

/// Re-reads the topology on every Raft change (at most every [`REFRESH_MIN`]) and every
/// [`REFRESH`].
async fn refresh(
    view: ClusterView,
    topology: watch::Sender<Topology>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut metrics = view.node.raft().metrics();
    loop {
        let now = current_topology(&view.node, &view.engine, view.records);
        topology.send_if_modified(|old| {
            let changed = *old != now;
            *old = now;
            changed
        });
        tokio::select! {
            _ = metrics.changed() => {}
            _ = tokio::time::sleep(REFRESH) => {}
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(REFRESH_MIN).await;
    }
}

/// Releases this node's locks of before its start once, then keeps its record live while it is
/// a member.
async fn keep_registered(
    view: ClusterView,
    swept_tx: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let me = view.me();
    let own = view.own.clone();
    let mut swept = false;
    loop {
        let topology = view.topology();
        if let Some(member) = topology.members.get(&me) {
            if !swept {
                // Caught up first, so every lock of the previous run is seen.
                swept = view.node.read_barrier().await.is_ok()
                    && release_locks_of(&view, |node| node == me).await.is_ok();
                swept_tx.send_replace(swept);
            }
            if swept && member.endpoints.as_ref() != Some(&*own) {
                let put = Command::put(view.records, record_key(me), own.encode());
                match view.node.submit(put, Durability::Sync).await {
                    Ok(_) => tracing::info!(node = me, "cluster: this node's endpoints are live"),
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster: cannot write this node's record yet")
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The leader's duties: probe the members, declare those unreachable for `down_after` down,
/// delete the records of removed nodes, and release the locks of every node that is not live.
async fn lead(view: ClusterView, down_after: Duration, mut shutdown: watch::Receiver<bool>) {
    let me = view.me();
    let mut last_seen: HashMap<NodeId, Instant> = HashMap::new();
    let mut leading = false;
    // The live members at the last sweep that left no lock of a node that is not live: while
    // every member stays live and that set does not change, the locks need no scan.
    let mut clean_for: Option<Vec<NodeId>> = None;
    let mut last_sweep = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        if !view.node.is_leader() {
            leading = false;
            continue;
        }
        let now = Instant::now();
        if !leading {
            // A new leader gives every member the full time from its election.
            leading = true;
            last_seen.clear();
            clean_for = None;
        }
        let topology = view.topology();
        let probes = topology.members.keys().filter(|id| **id != me).map(|id| {
            let node = view.node.clone();
            let id = *id;
            async move { (id, node.ping(id, TICK).await) }
        });
        for (id, answered) in futures_util::future::join_all(probes).await {
            let seen = last_seen.entry(id).or_insert(now);
            if answered {
                *seen = now;
            }
        }
        let records = read_records(&view.engine, view.records);
        for (id, (endpoints, version)) in &records {
            let condition = Condition::VersionIs(*version);
            let command = if !topology.members.contains_key(id) {
                // Removed from the cluster: it leaves the server lists.
                Command::Delete {
                    ks: view.records,
                    key: record_key(*id),
                    condition,
                }
            } else if endpoints.live
                && *id != me
                && last_seen.get(id).is_some_and(|t| now - *t >= down_after)
            {
                tracing::warn!(
                    node = id,
                    ms = down_after.as_millis() as u64,
                    "cluster: member unreachable, declaring it down"
                );
                let down = Endpoints {
                    live: false,
                    ..endpoints.clone()
                };
                Command::Put {
                    ks: view.records,
                    key: record_key(*id),
                    value: down.encode(),
                    expires_at: None,
                    owner: None,
                    label: None,
                    condition,
                }
            } else {
                continue;
            };
            if let Err(e) = view.node.submit(command, Durability::Sync).await {
                tracing::debug!(error = %e, "cluster: cannot update a member's record");
            }
        }
        let topology = view.topology();
        let live: Vec<NodeId> = topology.live().map(|(id, _)| id).collect();
        let everyone_live = live.len() == topology.members.len();
        let recent = last_sweep.is_some_and(|at: Instant| at.elapsed() < FULL_SWEEP);
        if everyone_live && clean_for.as_ref() == Some(&live) && recent {
            continue;
        }
        match release_dead_locks(&view).await {
            Ok(_) => {
                clean_for = everyone_live.then_some(live);
                last_sweep = Some(Instant::now());
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster: cannot release the locks of down nodes")
            }
        }
    }
}

/// Releases every lock whose node is not live (down, removed or never registered), and
/// forgets those whose timeout has run out. The locks
/// are read before the records, so a lock taken by a node that has just registered is never
/// mistaken for a dead one (its record was applied before its lock).
pub async fn release_dead_locks(view: &ClusterView) -> Result<usize, polykv_cluster::ClusterError> {
    let locks = view
        .engine
        .scan(view.locks, Bound::Unbounded, Bound::Unbounded, SWEEP_LIMIT)
        .unwrap_or_default();
    if locks.is_empty() {
        return Ok(0);
    }
    let records = read_records(&view.engine, view.records);
    let live = |node: NodeId| records.get(&node).is_some_and(|(e, _)| e.live);
    let now = view.engine.now_ms();
    release(view, locks, |lock| {
        !live(holder_node(lock.holder)) || !lock.live(now)
    })
    .await
}

/// Releases every lock held by a connection of a node for which `whose` holds.
async fn release_locks_of(
    view: &ClusterView,
    whose: impl Fn(NodeId) -> bool,
) -> Result<usize, polykv_cluster::ClusterError> {
    let locks = view
        .engine
        .scan(view.locks, Bound::Unbounded, Bound::Unbounded, SWEEP_LIMIT)
        .unwrap_or_default();
    release(view, locks, |lock| whose(holder_node(lock.holder))).await
}

/// Deletes the locks for which `which` holds (and entries that are not locks at all).
async fn release(
    view: &ClusterView,
    locks: Vec<(Bytes, polykv_engine::Entry)>,
    which: impl Fn(&LockRecord) -> bool,
) -> Result<usize, polykv_cluster::ClusterError> {
    let mut released = 0;
    for (name, entry) in locks {
        if LockRecord::decode(&entry.value).is_some_and(|lock| !which(&lock)) {
            continue;
        }
        // Conditional on the holder, so a lock taken again meanwhile is left alone.
        let command = Command::Delete {
            ks: view.locks,
            key: name,
            condition: Condition::ValueIs(entry.value.clone()),
        };
        if let Outcome::Deleted { .. } = view.node.submit(command, Durability::Sync).await? {
            released += 1;
        }
    }
    if released > 0 {
        tracing::info!(
            released,
            "cluster: released the locks of nodes that are not live"
        );
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(host: &str, port: u16, live: bool) -> Option<Endpoints> {
        Some(Endpoints {
            host: host.into(),
            opencluster: Some(port),
            live,
            ..Endpoints::default()
        })
    }

    fn topology(me: NodeId, leader: Option<NodeId>) -> Topology {
        let members = [
            (1, endpoints("127.0.0.1", 13600, true)),
            (2, endpoints("127.0.0.2", 13600, true)),
            (3, endpoints("::1", 13603, true)),
            (4, endpoints("127.0.0.4", 13600, false)),
            (5, None),
        ]
        .into_iter()
        .map(|(id, endpoints)| (id, MemberView { endpoints }))
        .collect();
        Topology {
            me,
            leader,
            members,
        }
    }

    #[test]
    fn the_leader_is_level_0_and_live_backups_count_up_by_id() {
        assert_eq!(topology(2, Some(2)).level(7), 0);
        assert_eq!(topology(1, Some(2)).level(7), 1);
        assert_eq!(topology(3, Some(2)).level(7), 2);
        assert_eq!(topology(3, Some(1)).level(0), 2);
        assert_eq!(topology(3, None).level(0), 3);
        assert_eq!(topology(1, Some(3)).primary_of(15), Some(3));
    }

    #[test]
    fn serverlists_name_the_other_live_members() {
        let t = topology(1, Some(2));
        assert_eq!(
            t.other_opencluster_addrs(),
            ["127.0.0.2:13600", "[::1]:13603"]
        );
        assert_eq!(t.opencluster_addr(3).as_deref(), Some("[::1]:13603"));
        assert_eq!(t.opencluster_addr(5), None);
        let holder = cluster_holder(1 << 63, 3, (1 << 41) + 17);
        assert_eq!(holder, (1 << 63) | (3 << 40) | 17);
        assert_eq!(holder_node(holder), 3);
    }

    #[test]
    fn lock_records_round_trip_and_run_out() {
        let lock = LockRecord {
            holder: cluster_holder(1 << 63, 2, 5),
            deadline: Some(1000),
        };
        assert_eq!(LockRecord::decode(&lock.value()), Some(lock));
        assert!(lock.live(999) && !lock.live(1000));
        let forever = LockRecord {
            deadline: None,
            ..lock
        };
        assert_eq!(LockRecord::decode(&forever.value()), Some(forever));
        assert!(forever.live(u64::MAX));
        assert_eq!(
            LockRecord::decode(&Value::Bytes(Bytes::from("short"))),
            None
        );
        assert_eq!(
            LockRecord::decode(&Value::Bytes(Bytes::from(vec![0; 17]))),
            None
        );
    }

    #[test]
    fn records_round_trip() {
        let e = endpoints("h", 1, true).unwrap();
        assert_eq!(Endpoints::decode(&e.encode()), Some(e));
        assert_eq!(Endpoints::decode(&Value::Bytes(Bytes::from("junk"))), None);
    }
}
