//! One cluster node: the Raft instance over the engine, and the two things the server asks of
//! it — [`Node::submit`] a command (replicated, from any node) and [`Node::read_barrier`]
//! before a linearizable read.
//!
//! A follower forwards writes to the leader over the transport and waits for its answer; a
//! write is retried on another leader only when it certainly was not proposed (the receiver
//! said it is not the leader), never after a timeout, so nothing is applied twice. Every wait
//! is bounded by `write_timeout`: a node cut off from the majority answers
//! [`ClusterError::Unavailable`] instead of hanging.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use polykv_engine::{Command, Durability, Engine, Outcome, Proposal};
use serde::Serialize;

use crate::batch::Batcher;
use crate::identity::ClusterId;
use crate::log_store::LogStore;
use crate::network::Network;
use crate::state_machine::StateMachine;
use crate::transport::{Handler, Transport, TransportError};
use crate::wire::{ForwardError, Reply, Rpc};
use crate::{ClusterError, LogId, Member, NodeId, Raft, Request, Response};

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where the Raft log, its state and the snapshots live.
    pub dir: PathBuf,
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// A snapshot is taken after this many entries; the log is purged behind it.
    pub snapshot_every: u64,
    /// Longest a write or a read barrier waits for a leader before it fails.
    pub write_timeout: Duration,
    pub segment_bytes: u64,
    /// Most AppendEntries requests in flight to one follower at once (1: one at a time).
    pub pipeline_depth: u64,
    /// Whether the Raft log is made durable through its direct mirror (`engine.direct_sync`)
    /// rather than fdatasync.
    pub direct_sync: bool,
    /// Bytes of applied Raft entries kept in memory at most (older ones are read from the
    /// log's files); `POLYKV_CLUSTER_LOG_WINDOW_BYTES` overrides the default.
    pub log_window_bytes: usize,
}

/// Requests in flight per follower (pipelined appends, `vendor/README.md`).
/// `POLYKV_CLUSTER_PIPELINE` overrides it (1 is openraft 0.9's one request at a time). 1 since
/// the Raft log's direct mirror (eighth session): with the follower's flush shorter, depth 4
/// costs 2–8 µs more CPU per write (more, smaller requests) and brought no throughput
/// (`docs/performance.md`, "Cluster, eighth session"). The in-process tests run depth 4.
pub const PIPELINE_DEPTH: u64 = 1;

/// How long (µs) a committed index waits for the next entries to carry it to a follower before
/// it goes in a heartbeat of its own (`vendor/README.md`). `POLYKV_CLUSTER_COMMIT_DELAY_US`
/// overrides it (0 is openraft 0.9's call at once).
pub const COMMIT_DELAY_US: u64 = 1000;

impl NodeConfig {
    pub fn new(id: NodeId, dir: PathBuf) -> NodeConfig {
        NodeConfig {
            id,
            dir,
            heartbeat: Duration::from_millis(30),
            election_min: Duration::from_millis(100),
            election_max: Duration::from_millis(200),
            snapshot_every: 50_000,
            write_timeout: Duration::from_secs(3),
            segment_bytes: polykv_engine::log::DEFAULT_SEGMENT_BYTES,
            pipeline_depth: PIPELINE_DEPTH,
            direct_sync: true,
            log_window_bytes: crate::tuning::number(
                "POLYKV_CLUSTER_LOG_WINDOW_BYTES",
                0..=usize::MAX,
                crate::window::WINDOW_BYTES,
            ),
        }
    }
}

/// The role of a member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Learner,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub role: Role,
    pub addr: String,
    /// Last index known applied (this node) or replicated (others, seen from the leader).
    pub last_applied: Option<u64>,
    /// Entries behind the leader's log (known on the leader only).
    pub lag: Option<u64>,
}

/// What `GET /api/cluster` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub node_id: NodeId,
    /// The cluster's random id (hex), once this node has one.
    pub cluster_id: Option<String>,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// Writes this node forwarded to a leader.
    pub forwards: u64,
    /// Raft entries this node keeps in memory (every unapplied one, the newest applied ones up
    /// to `log_window_bytes`), and their encoded bytes.
    pub log_entries_in_memory: usize,
    pub log_bytes_in_memory: usize,
}

struct Inner {
    id: NodeId,
    log: LogStore,
    batcher: Batcher,
    raft: Raft,
    transport: Arc<dyn Transport>,
    engine: Engine,
    /// Applied index + 1 (0: nothing applied).
    applied: Arc<AtomicU64>,
    write_timeout: Duration,
    forwards: AtomicU64,
    /// Set by [`Node::shutdown`]: forwarded writes and read index requests are refused as
    /// "not the leader" (the sender retries elsewhere, nothing was proposed).
    stopping: AtomicBool,
    /// Forwarded writes being proposed here (the shutdown lets them finish).
    proposing: AtomicUsize,
}

/// Counts a forwarded write being proposed.
struct Proposing<'a>(&'a AtomicUsize);

impl Drop for Proposing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running cluster node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// How long to wait before asking again while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

fn unavailable(why: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(why.to_string())
}

impl Node {
    /// Starts the node over `engine`; it joins whatever its log says, or waits to be
    /// initialized or added.
    pub async fn start(
        config: NodeConfig,
        engine: Engine,
        transport: Arc<dyn Transport>,
    ) -> Result<Node, ClusterError> {
        crate::timing::start_log_from_env();
        let storage = |e: &dyn std::fmt::Display| ClusterError::Storage(e.to_string());
        let raft_config = Config {
            cluster_name: "polykv".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_min.as_millis() as u64,
            election_timeout_max: config.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: 1000.min(config.snapshot_every),
            snapshot_max_chunk_size: 1 << 20,
            pipeline_depth: crate::tuning::number(
                "POLYKV_CLUSTER_PIPELINE",
                1..=64,
                config.pipeline_depth,
            ),
            commit_delay_us: crate::tuning::number(
                "POLYKV_CLUSTER_COMMIT_DELAY_US",
                0..=100_000,
                COMMIT_DELAY_US,
            ),
            ..Config::default()
        }
        .validate()
        .map_err(|e| storage(&e))?;
        let applied = Arc::new(AtomicU64::new(0));
        let log = LogStore::open(
            config.id,
            &config.dir.join("log"),
            config.segment_bytes,
            applied.clone(),
            config.direct_sync,
        )
        .map_err(|e| storage(&e))?;
        let sm = StateMachine::open(
            engine.clone(),
            &config.dir.join("snapshots"),
            applied.clone(),
        )
        .map_err(|e| storage(&e))?;
        // The state machine has published what it applied: the log lets go of what it need not
        // keep in memory.
        log.set_window_bytes(config.log_window_bytes);
        let network = Network {
            transport: transport.clone(),
        };
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log.clone(), sm)
            .await
            .map_err(|e| storage(&e))?;
        Ok(Node {
            inner: Arc::new(Inner {
                id: config.id,
                log,
                batcher: Batcher::start(raft.clone(), config.write_timeout),
                raft,
                transport,
                engine,
                applied,
                write_timeout: config.write_timeout,
                forwards: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
                proposing: AtomicUsize::new(0),
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The first log id of the cluster this node's data belongs to, once it has any.
    pub fn cluster_id(&self) -> Option<LogId> {
        self.inner.log.cluster_id()
    }

    /// Founds the cluster of `voters` once a majority of them answers and none of them holds
    /// data of a cluster already (the lowest id calls this at start; it returns at once when
    /// this node's log already belongs to a cluster). Gives up after `attempts` rounds.
    pub async fn found(
        &self,
        voters: BTreeMap<NodeId, Member>,
        attempts: usize,
    ) -> Result<bool, ClusterError> {
        for _ in 0..attempts {
            if self.cluster_id().is_some()
                || self.inner.raft.is_initialized().await.unwrap_or(false)
            {
                return Ok(false);
            }
            let mut up = 0;
            let mut formed = false;
            for (id, member) in &voters {
                if *id == self.inner.id {
                    up += 1;
                    continue;
                }
                let ping = self
                    .inner
                    .transport
                    .call(*id, &member.addr, Rpc::Ping, Duration::from_millis(500))
                    .await;
                if let Ok(Reply::Pong { cluster }) = ping {
                    up += 1;
                    formed |= cluster.is_some();
                }
            }
            if formed {
                return Ok(false);
            }
            if up * 2 > voters.len() {
                self.initialize(voters).await?;
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(unavailable("no majority of the peers answered"))
    }

    /// The random id of the cluster this node belongs to (drawn by the node that founded it,
    /// taken from peers in the cluster port's handshake), if it has one yet.
    pub fn cluster_uid(&self) -> Option<ClusterId> {
        self.inner.transport.identity().and_then(|i| i.get())
    }

    /// Founds a cluster of these voters (once, on one node, with empty logs everywhere). A
    /// transport that checks cluster ids gets this cluster's (drawn now unless this node
    /// already has one), and its connections handshake again for the peers to take it.
    pub async fn initialize(&self, voters: BTreeMap<NodeId, Member>) -> Result<(), ClusterError> {
        let founded = self.inner.raft.is_initialized().await.unwrap_or(true);
        if let Some(identity) = self.inner.transport.identity().filter(|_| !founded) {
            let drawn = identity
                .draw()
                .map_err(|e| ClusterError::Storage(e.to_string()))?;
            tracing::info!(cluster = %drawn, "cluster id");
            self.inner.transport.reconnect();
        }
        match self.inner.raft.initialize(voters).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ClusterError::Refused(e.to_string())),
        }
    }

    /// Whether `id` is a voter or a learner of this node's membership (the newest it knows).
    fn is_member(&self, id: NodeId) -> bool {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    }

    fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|m| m.addr.clone())
            .unwrap_or_default();
        Some((leader, addr))
    }

    /// Applies `command` through the cluster and returns its outcome once committed on a
    /// majority (and fsynced there, for `Durability::Sync`) and applied here or on the leader.
    pub async fn submit(
        &self,
        command: Command,
        durability: Durability,
    ) -> Result<Outcome, ClusterError> {
        let proposal = Proposal {
            at_ms: self.inner.engine.now_ms(),
            command,
        };
        let sync = durability == Durability::Sync;
        let deadline = Instant::now() + self.inner.write_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = match self.leader() {
                Some((leader, _)) if leader == self.inner.id => {
                    self.inner.batcher.propose(proposal.clone(), sync).await
                }
                Some((leader, addr)) => {
                    self.inner.forwards.fetch_add(1, Ordering::Relaxed);
                    let request = Request {
                        proposals: vec![proposal.clone()],
                        sync,
                    };
                    match self
                        .inner
                        .transport
                        .call(leader, &addr, Rpc::Forward(request), left)
                        .await
                    {
                        Ok(Reply::Forward(result)) => {
                            result.map(|r| r.outcomes.into_iter().next().flatten())
                        }
                        Ok(_) => Err(ForwardError::Failed("reply of the wrong kind".into())),
                        Err(TransportError::Unreachable(..)) => Err(ForwardError::NotLeader(None)),
                        Err(e) => Err(ForwardError::Unknown(e.to_string())),
                    }
                }
                None => Err(ForwardError::NotLeader(None)),
            };
            match attempt {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) => {
                    return Err(ClusterError::Refused(
                        "the engine refused the command".into(),
                    ))
                }
                Err(ForwardError::NotLeader(_)) if Instant::now() + RETRY_PAUSE < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(ForwardError::Failed(why)) => return Err(ClusterError::Refused(why)),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    /// Proposes a forwarded request on this node, which believes it leads; its proposals join
    /// the next entries with everything else this node proposes. (Followers forward one
    /// proposal per request, so its answer is exact.)
    async fn propose(&self, request: Request) -> Result<Response, ForwardError> {
        self.inner.proposing.fetch_add(1, Ordering::SeqCst);
        let _proposing = Proposing(&self.inner.proposing);
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Err(ForwardError::NotLeader(None));
        }
        let mut outcomes = Vec::with_capacity(request.proposals.len());
        for proposal in request.proposals {
            outcomes.push(self.inner.batcher.propose(proposal, request.sync).await?);
        }
        Ok(Response { outcomes })
    }

    /// The leader's read index, from this node if it leads.
    async fn read_index_here(&self) -> Result<Option<LogId>, ForwardError> {
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Err(ForwardError::NotLeader(None));
        }
        match self.inner.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader(f.leader_id))
            }
            Err(e) => Err(ForwardError::Unknown(e.to_string())),
        }
    }

    /// Returns once this node has applied everything committed before the call (read index,
    /// asked of the leader by a follower): a read after it is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + self.inner.write_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let index = match self.leader() {
                Some((leader, _)) if leader == self.inner.id => self.read_index_here().await,
                Some((leader, addr)) => {
                    match self
                        .inner
                        .transport
                        .call(leader, &addr, Rpc::ReadIndex, left)
                        .await
                    {
                        Ok(Reply::ReadIndex(result)) => result,
                        Ok(_) => Err(ForwardError::Failed("reply of the wrong kind".into())),
                        Err(e) => Err(ForwardError::Unknown(e.to_string())),
                    }
                }
                None => Err(ForwardError::NotLeader(None)),
            };
            match index {
                Ok(index) => return self.wait_applied(index, deadline).await,
                Err(ForwardError::NotLeader(_)) | Err(ForwardError::Unknown(_))
                    if Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    async fn wait_applied(
        &self,
        index: Option<LogId>,
        deadline: Instant,
    ) -> Result<(), ClusterError> {
        let want = index.map_or(0, |id| id.index + 1);
        let mut metrics = self.inner.raft.metrics();
        loop {
            if self.inner.applied.load(Ordering::SeqCst) >= want {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClusterError::ShuttingDown),
                Err(_) => return Err(unavailable("not caught up with the leader in time")),
            }
        }
    }

    /// Adds a node as a learner (it catches up), then makes it a voter.
    pub async fn add_member(&self, id: NodeId, member: Member) -> Result<(), ClusterError> {
        let refused = |e: &dyn std::fmt::Display| ClusterError::Refused(e.to_string());
        self.inner
            .raft
            .add_learner(id, member, true)
            .await
            .map_err(|e| refused(&e))?;
        self.inner
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| refused(&e))?;
        Ok(())
    }

    /// Removes a node from the voters and the members.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), ClusterError> {
        self.inner
            .raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        Ok(())
    }

    pub fn status(&self) -> Status {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log = metrics.last_log_index;
        let members = membership
            .nodes()
            .map(|(id, member)| {
                let role = if Some(*id) == metrics.current_leader {
                    Role::Leader
                } else if voters.contains(id) {
                    Role::Follower
                } else {
                    Role::Learner
                };
                let matched = if *id == self.inner.id {
                    metrics.last_applied.map(|l| l.index)
                } else {
                    metrics
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(id).copied().flatten())
                        .map(|l| l.index)
                };
                let lag = match (&metrics.replication, last_log) {
                    (Some(_), Some(last)) => Some(last.saturating_sub(matched.unwrap_or(0))),
                    _ => None,
                };
                MemberStatus {
                    id: *id,
                    role,
                    addr: member.addr.clone(),
                    last_applied: matched,
                    lag,
                }
            })
            .collect();
        let (log_entries_in_memory, log_bytes_in_memory) = self.inner.log.in_memory();
        Status {
            node_id: self.inner.id,
            cluster_id: self.cluster_uid().map(|id| id.to_hex()),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: last_log,
            last_applied: metrics.last_applied.map(|l| l.index),
            members,
            forwards: self.inner.forwards.load(Ordering::Relaxed),
            log_entries_in_memory,
            log_bytes_in_memory,
        }
    }

    /// Whether member `id` answers a ping within `timeout`: the leader's liveness probe, which
    /// decides when a member's OpenCluster locks are released (openraft 0.9 does not expose
    /// when a follower last acknowledged a heartbeat).
    pub async fn ping(&self, id: NodeId, timeout: Duration) -> bool {
        let addr = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow();
            match metrics.membership_config.membership().get_node(&id) {
                Some(member) => member.addr.clone(),
                None => return false,
            }
        };
        matches!(
            self.inner
                .transport
                .call(id, &addr, Rpc::Ping, timeout)
                .await,
            Ok(Reply::Pong { .. })
        )
    }

    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Stops the Raft tasks (the engine is the caller's to close), gently: writes forwarded
    /// here are refused from now on (their senders retry elsewhere; nothing was proposed) and
    /// those already proposed finish; a leader stops sending heartbeats and waits (bounded by
    /// the write timeout) for the others to elect a new leader, so their writes wait for one
    /// election instead of failing on a leader that vanished mid-request.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + inner.write_timeout;
        inner.raft.runtime_config().elect(false);
        if self.is_leader() {
            inner.raft.runtime_config().heartbeat(false);
            let voters = inner
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .count();
            if voters > 1 {
                let mut metrics = inner.raft.metrics();
                let handed = metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != inner.id));
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, handed).await.is_err() {
                    tracing::warn!("raft shutdown: no other leader elected in time");
                }
            }
        }
        while inner.proposing.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Err(e) = inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// The answer to a forwarded request from a node outside the membership, logged.
fn refuse_non_member(from: NodeId) -> ForwardError {
    tracing::warn!(peer = from, "refused a forwarded request: not a member");
    ForwardError::NotLeader(None)
}

impl Handler for Node {
    fn handle(&self, from: NodeId, rpc: Rpc) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(async move {
            let raft = &self.inner.raft;
            match rpc {
                Rpc::AppendEntries(req) => Reply::AppendEntries(raft.append_entries(req).await),
                Rpc::Vote(req) => Reply::Vote(raft.vote(req).await),
                Rpc::InstallSnapshot(req) => {
                    Reply::InstallSnapshot(raft.install_snapshot(req).await)
                }
                // Only members write and read through this node. A node of another cluster
                // whose data carries no cluster id (from before ids, or a test's transport
                // without the handshake) can take this node for its leader once it has seen
                // this node's vote; its clients' writes must not land in this cluster.
                Rpc::Forward(_) if !self.is_member(from) => {
                    Reply::Forward(Err(refuse_non_member(from)))
                }
                Rpc::ReadIndex if !self.is_member(from) => {
                    Reply::ReadIndex(Err(refuse_non_member(from)))
                }
                Rpc::Forward(request) => Reply::Forward(self.propose(request).await),
                Rpc::ReadIndex => Reply::ReadIndex(self.read_index_here().await),
                Rpc::Ping => Reply::Pong {
                    cluster: self.inner.log.cluster_id(),
                },
            }
        })
    }
}
