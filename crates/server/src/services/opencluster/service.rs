//! OpenCluster (V0): typed items, expiry, locks, hello and topology pushes (opencluster.md).
//!
//! An item is the engine entry under `map hash ‖ key hash`; its name rides along as the
//! entry's label. On a single node locks are the engine's named locks with this connection as
//! the holder, so closing the connection (goodbye, EOF, idle timeout) releases them, and the
//! node is the primary of every bucket: tryelsewhere is never sent.
//!
//! In cluster mode (§8) the leader is the primary of every bucket and the other live members
//! its backups ([`Topology::level`]); data commands sent to a backup answer tryelsewhere with
//! the leader's listener; hello'd connections get hashmask pushes when the leader changes and
//! a serverlist push when the live members change. Locks are replicated entries of the
//! `_locks` keyspace (see `topology`), taken from any node.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use polykv_engine::cache::PREFETCH_MAX;
use polykv_engine::{
    Command, Condition, Durability, Engine, Entry, KeyspaceId, LockOutcome, Outcome,
    Value as EngineValue,
};
use polykv_protocols::opencluster::{
    cmd, failinfo, ItemId, Push, Request, RequestBody, Response, ResponseBody, Value, ValueType,
};

use super::OpenClusterConfig;
use crate::session::{Reply, Service};
use crate::topology::{ClusterView, LockRecord, Topology};

pub(super) const OPS: &[&str] = &[
    "hello",
    "session",
    "set",
    "get",
    "get_type",
    "lock",
    "unlock",
    "loadlevel",
    "ignored",
    "invalid",
];

/// Lock holders are numbered per connection; the high bit keeps them apart from the holder
/// numbers other protocols may use.
const HOLDER_BASE: u64 = 1 << 63;

/// The fields of a set_* request besides the item.
struct SetFields {
    expires: i32,
    full_wait: bool,
    name: Bytes,
    value: Value,
}

pub struct OpenClusterShared {
    pub(super) engine: Engine,
    pub(super) submitter: crate::submit::Submitter,
    pub(super) keyspace: KeyspaceId,
    pub(super) config: OpenClusterConfig,
    pub(super) next_holder: AtomicU64,
    /// Cluster mode: the members, the leader, the lock keyspace.
    pub(super) view: Option<ClusterView>,
}

/// What a hello'd connection was last told of the topology.
#[derive(Debug, Clone, PartialEq)]
struct Announced {
    servers: Vec<Bytes>,
    /// This node's level for every bucket.
    levels: Vec<i32>,
    leader: Option<polykv_cluster::NodeId>,
}

pub struct OpenClusterService {
    shared: Arc<OpenClusterShared>,
    /// This connection's lock holder id.
    holder: u64,
    /// Whether this connection may hold locks (avoids a release on close when it never locked).
    locked_once: bool,
    /// User id of the next server push (§5.1: a per-connection counter from 0).
    next_push: u32,
    /// Cluster mode, after hello: what this connection was told, and the topology to watch.
    announced: Option<(Announced, tokio::sync::watch::Receiver<Topology>)>,
    /// Topology pushes not yet sent.
    queued: VecDeque<Response>,
    /// Cluster mode: the locks this connection took, as written.
    held: HashMap<Bytes, LockRecord>,
}

impl OpenClusterService {
    pub fn new(shared: Arc<OpenClusterShared>) -> Self {
        let counter = shared.next_holder.fetch_add(1, Ordering::Relaxed);
        let holder = match &shared.view {
            Some(view) => crate::topology::cluster_holder(HOLDER_BASE, view.me(), counter),
            None => HOLDER_BASE | counter,
        };
        OpenClusterService {
            shared,
            holder,
            locked_once: false,
            next_push: 0,
            announced: None,
            queued: VecDeque::new(),
            held: HashMap::new(),
        }
    }

    fn buckets(&self) -> u32 {
        self.shared.config.mask
    }

    /// What to tell a connection of `topology`.
    fn announcement(&self, topology: &Topology) -> Announced {
        Announced {
            servers: topology
                .other_opencluster_addrs()
                .into_iter()
                .map(Bytes::from)
                .collect(),
            levels: (0..=self.buckets()).map(|b| topology.level(b)).collect(),
            leader: topology.leader,
        }
    }

    /// hello: ack, serverlist, hashmasks (§5.1); in cluster mode the connection then follows
    /// the topology.
    fn hello(&mut self, request: &Request) -> Reply<Response> {
        let mask = self.buckets();
        let (servers, rows) = match &self.shared.view {
            None => (Vec::new(), Push::all_buckets(mask, 0)),
            Some(view) => {
                let receiver = view.subscribe();
                let announced = self.announcement(&receiver.borrow());
                let rows = Push::HashMasks {
                    mask,
                    rows: (0..=mask)
                        .zip(&announced.levels)
                        .map(|(bucket, level)| polykv_protocols::opencluster::MaskRow {
                            bucket,
                            level: *level,
                        })
                        .collect(),
                };
                let servers = announced.servers.clone();
                self.announced = Some((announced, receiver));
                (servers, rows)
            }
        };
        let pushes = vec![self.push(Push::ServerList { servers }), self.push(rows)];
        Reply::send_with(request.reply(ResponseBody::Ack), pushes)
    }

    /// Queues the pushes that tell a hello'd connection what changed (§5.2): a hashmask per
    /// bucket when the leader or this node's level changed (every bucket's primary moved), a
    /// serverlist when the other live members changed.
    fn follow(&mut self, topology: &Topology) {
        let Some((before, _)) = &self.announced else {
            return;
        };
        let now = self.announcement(topology);
        let before = before.clone();
        if now.leader != before.leader || now.levels != before.levels {
            for (bucket, level) in (0..=self.buckets()).zip(now.levels.clone()) {
                let mask = self.buckets();
                let push = self.push(Push::HashMask {
                    mask,
                    bucket,
                    level,
                });
                self.queued.push_back(push);
            }
        }
        if now.servers != before.servers {
            let push = self.push(Push::ServerList {
                servers: now.servers.clone(),
            });
            self.queued.push_back(push);
        }
        if let Some((announced, _)) = &mut self.announced {
            *announced = now;
        }
    }

    /// Cluster mode: the reply of a data command this node is not the primary for (§8):
    /// tryelsewhere with the primary's listener, failinfo 5 when there is none.
    fn elsewhere(&self, item: ItemId) -> Option<ResponseBody> {
        let view = self.shared.view.as_ref()?;
        let bucket = item.key & self.buckets();
        view.with_topology(|topology| {
            let primary = topology.primary_of(bucket);
            if primary == Some(view.me()) {
                return None;
            }
            Some(match primary.and_then(|id| topology.opencluster_addr(id)) {
                Some(addr) => ResponseBody::TryElsewhere {
                    addr: Bytes::from(addr),
                },
                None => ResponseBody::failinfo(failinfo::UNAVAILABLE),
            })
        })
    }

    fn push(&mut self, push: Push) -> Response {
        let user_id = self.next_push;
        self.next_push = self.next_push.wrapping_add(1);
        Response::Push { user_id, push }
    }

    fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// set_int / set_long / set_string: the item replaces any item of any type (§6.2).
    async fn set(&self, request: &Request, item: ItemId, set: SetFields) -> Reply<Response> {
        let SetFields {
            expires,
            full_wait,
            name,
            value,
        } = set;
        let expires_at = (expires > 0)
            .then(|| self.engine().now_ms() + u64::from(expires.unsigned_abs()) * 1000);
        let value = match value {
            Value::Int(v) => EngineValue::I32(v),
            Value::Long(v) => EngineValue::I64(v),
            Value::String(v) => EngineValue::Bytes(v),
        };
        let command = Command::Put {
            ks: self.shared.keyspace,
            key: Bytes::copy_from_slice(&item.engine_key()),
            value,
            expires_at,
            owner: None,
            label: Some(name),
            condition: Condition::Always,
        };
        let durability = if full_wait {
            Durability::Sync
        } else {
            Durability::Async
        };
        let unavailable = request.reply(ResponseBody::failinfo(failinfo::UNAVAILABLE));
        match self.shared.submitter.submit(command, durability).await {
            Ok(pending) => Reply::after(pending, request.reply(ResponseBody::Ack), unavailable),
            Err(e) => {
                tracing::warn!(error = %e, "opencluster set failed");
                Reply::send(unavailable)
            }
        }
    }

    /// The live item, or the reply that ends the request (fail when missing, failinfo 5 when
    /// the engine cannot read).
    fn read(&self, request: &Request, item: ItemId) -> Result<(ValueType, Entry), ResponseBody> {
        match self.engine().get(self.shared.keyspace, &item.engine_key()) {
            Ok(Some(read)) => Ok((type_of(&read.entry.value), read.entry)),
            Ok(None) => Err(ResponseBody::Fail),
            Err(e) => {
                tracing::warn!(error = %e, command = request.body.command_id(), "opencluster read failed");
                Err(ResponseBody::failinfo(failinfo::UNAVAILABLE))
            }
        }
    }

    fn get(&self, request: &Request, item: ItemId, kind: ValueType) -> ResponseBody {
        let (stored, entry) = match self.read(request, item) {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        if stored != kind {
            return ResponseBody::failinfo(failinfo::WRONG_TYPE);
        }
        let value = match entry.value {
            EngineValue::I32(v) => Value::Int(v),
            EngineValue::I64(v) => Value::Long(v),
            other => Value::String(other.into_bytes()),
        };
        ResponseBody::Data { item, value }
    }

    fn lock(&mut self, timeout: i32, name: &Bytes) -> ResponseBody {
        let deadline = (timeout > 0)
            .then(|| self.engine().now_ms() + u64::from(timeout.unsigned_abs()) * 1000);
        self.locked_once = true;
        let command = Command::Lock {
            name: name.clone(),
            holder: self.holder,
            deadline,
        };
        match self.engine().submit(command, Durability::Memory) {
            Ok(pending) => match pending.outcome {
                Outcome::Lock(LockOutcome::Acquired) => {
                    // Checked after acquiring, so re-locking a held lock at the limit works;
                    // a new lock past the limit is given back at once.
                    if self.engine().locks_held_by(self.holder) as u64
                        > self.shared.config.max_locks
                    {
                        let _ = self.engine().submit(
                            Command::Unlock {
                                name: name.clone(),
                                holder: self.holder,
                            },
                            Durability::Memory,
                        );
                        return ResponseBody::failinfo(failinfo::LIMIT_EXCEEDED);
                    }
                    ResponseBody::Ack
                }
                _ => ResponseBody::Fail,
            },
            Err(e) => {
                tracing::warn!(error = %e, "opencluster lock failed");
                ResponseBody::failinfo(failinfo::UNAVAILABLE)
            }
        }
    }

    fn unlock(&self, name: &Bytes) -> ResponseBody {
        let command = Command::Unlock {
            name: name.clone(),
            holder: self.holder,
        };
        match self.engine().submit(command, Durability::Memory) {
            Ok(pending) => match pending.outcome {
                Outcome::Unlocked { released: true } => ResponseBody::Ack,
                _ => ResponseBody::Fail,
            },
            Err(e) => {
                tracing::warn!(error = %e, "opencluster unlock failed");
                ResponseBody::failinfo(failinfo::UNAVAILABLE)
            }
        }
    }

    async fn set_request(&self, request: &Request) -> Reply<Response> {
        let RequestBody::Set {
            item,
            expires,
            full_wait,
            name,
            value,
        } = &request.body
        else {
            return Reply::send(request.reply(ResponseBody::failinfo(failinfo::MALFORMED)));
        };
        let fields = SetFields {
            expires: *expires,
            full_wait: *full_wait,
            name: name.clone(),
            value: value.clone(),
        };
        self.set(request, *item, fields).await
    }

    /// get_* and get_type, after a read barrier (linearizable in cluster mode).
    async fn read_request(&self, request: &Request) -> Reply<Response> {
        let body = if self.shared.submitter.read_barrier().await.is_err() {
            ResponseBody::failinfo(failinfo::UNAVAILABLE)
        } else {
            match &request.body {
                RequestBody::Get { item, kind } => self.get(request, *item, *kind),
                RequestBody::GetType { item } => match self.read(request, *item) {
                    Ok((kind, _)) => ResponseBody::DataType { item: *item, kind },
                    Err(reply) => reply,
                },
                _ => ResponseBody::failinfo(failinfo::MALFORMED),
            }
        };
        Reply::send(request.reply(body))
    }

    /// loadlevels (§8): buckets this node is primary for, and backs up.
    fn load_levels(&self) -> ResponseBody {
        let buckets = i32::try_from(u64::from(self.buckets()) + 1).unwrap_or(i32::MAX);
        let primary = match &self.shared.view {
            None => buckets,
            Some(view) => {
                let topology = view.topology();
                let mine = (0..=self.buckets())
                    .filter(|b| topology.primary_of(*b) == Some(view.me()))
                    .count();
                i32::try_from(mine).unwrap_or(i32::MAX)
            }
        };
        ResponseBody::LoadLevels {
            primary,
            backup: buckets - primary,
            transferring: false,
        }
    }

    /// Live locks this connection holds (cluster mode), forgetting those past their deadline.
    fn held_now(&mut self) -> usize {
        let now = self.engine().now_ms();
        self.held.retain(|_, record| record.live(now));
        self.held.len()
    }

    /// lock in cluster mode (§7): a replicated entry of `_locks`, created if absent, renewed if
    /// this connection holds it, taken over if its timeout has run out (each step conditional
    /// on the entry's version, so every replica decides alike). One holder across the cluster.
    async fn cluster_lock(
        &mut self,
        view: &ClusterView,
        timeout: i32,
        name: &Bytes,
    ) -> ResponseBody {
        if !view.locks_ready() {
            return ResponseBody::failinfo(failinfo::UNAVAILABLE);
        }
        if !self.held.contains_key(name) && self.held_now() as u64 >= self.shared.config.max_locks {
            return ResponseBody::failinfo(failinfo::LIMIT_EXCEEDED);
        }
        let deadline = (timeout > 0)
            .then(|| self.engine().now_ms() + u64::from(timeout.unsigned_abs()) * 1000);
        let record = LockRecord {
            holder: self.holder,
            deadline,
        };
        let mut condition = Condition::Absent;
        // A few rounds: the entry may change between the attempts (released, taken over).
        for _ in 0..3 {
            let command = Command::Put {
                ks: view.locks,
                key: name.clone(),
                value: record.value(),
                expires_at: None,
                owner: Some(self.holder),
                label: None,
                condition,
            };
            let outcome = match self
                .shared
                .submitter
                .submit(command, Durability::Sync)
                .await
            {
                Ok(done) => done.outcome().clone(),
                Err(e) => {
                    tracing::warn!(error = %e, "opencluster lock failed");
                    return ResponseBody::failinfo(failinfo::UNAVAILABLE);
                }
            };
            condition = match outcome {
                Outcome::Written { .. } => {
                    self.held.insert(name.clone(), record);
                    return ResponseBody::Ack;
                }
                Outcome::Mismatch {
                    current: Some(current),
                } => match LockRecord::decode(&current.value) {
                    Some(other)
                        if other.holder != self.holder && other.live(self.engine().now_ms()) =>
                    {
                        return ResponseBody::Fail
                    }
                    // Ours, run out, or not a lock at all: replace exactly that entry.
                    _ => Condition::VersionIs(current.version),
                },
                Outcome::NotFound => Condition::Absent,
                _ => return ResponseBody::Fail,
            };
        }
        ResponseBody::Fail
    }

    /// unlock in cluster mode: deletes the entry if this connection holds it (an entry of this
    /// connection whose timeout ran out is deleted too, but answered fail: it was not held).
    async fn cluster_unlock(&mut self, view: &ClusterView, name: &Bytes) -> ResponseBody {
        let Some(record) = self.held.remove(name) else {
            return ResponseBody::Fail;
        };
        let command = Command::Delete {
            ks: view.locks,
            key: name.clone(),
            condition: Condition::ValueIs(record.value()),
        };
        match self
            .shared
            .submitter
            .submit(command, Durability::Sync)
            .await
        {
            Ok(done) => match done.outcome() {
                Outcome::Deleted { .. } if record.live(self.engine().now_ms()) => ResponseBody::Ack,
                _ => ResponseBody::Fail,
            },
            Err(e) => {
                tracing::warn!(error = %e, "opencluster unlock failed");
                ResponseBody::failinfo(failinfo::UNAVAILABLE)
            }
        }
    }

    /// Cluster mode: gives back every lock this connection holds (in the background when the
    /// connection is dropped; if this fails, the node's locks go when it restarts or is
    /// declared down).
    fn release_cluster_locks(&mut self) -> Option<impl std::future::Future<Output = ()> + Send> {
        let view = self.shared.view.clone()?;
        if self.held.is_empty() {
            return None;
        }
        let held: Vec<(Bytes, LockRecord)> = self.held.drain().collect();
        let submitter = self.shared.submitter.clone();
        Some(async move {
            for (name, record) in held {
                let command = Command::Delete {
                    ks: view.locks,
                    key: name,
                    condition: Condition::ValueIs(record.value()),
                };
                if let Err(e) = submitter.submit(command, Durability::Sync).await {
                    tracing::warn!(error = %e, "opencluster: releasing a connection's locks failed");
                    return;
                }
            }
        })
    }

    fn release_locks(&mut self) {
        if let Some(release) = self.release_cluster_locks() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(release);
            }
            return;
        }
        if !self.locked_once {
            return;
        }
        self.locked_once = false;
        let command = Command::ReleaseHolder {
            holder: self.holder,
        };
        if let Err(e) = self.engine().submit(command, Durability::Memory) {
            tracing::warn!(error = %e, "opencluster: releasing a connection's locks failed");
        }
    }
}

impl Drop for OpenClusterService {
    /// A session dropped without `closed` (cut at a shutdown or handover deadline) still gives
    /// its locks back; one carried by a hot upgrade has nothing left to give (see `export`).
    fn drop(&mut self) {
        self.release_locks();
    }
}

/// An engine value's OpenCluster type: untyped bytes from other protocols read as strings.
fn type_of(value: &EngineValue) -> ValueType {
    match value {
        EngineValue::I32(_) => ValueType::Int,
        EngineValue::I64(_) => ValueType::Long,
        EngineValue::Bytes(_) | EngineValue::Str(_) => ValueType::String,
    }
}

impl Service for OpenClusterService {
    type Request = Request;
    type Response = Response;

    fn op_name(request: &Request) -> &'static str {
        match request.body {
            RequestBody::Hello => "hello",
            RequestBody::Capabilities { .. }
            | RequestBody::Goodbye
            | RequestBody::Ping
            | RequestBody::ShuttingDown => "session",
            RequestBody::Set { .. } => "set",
            RequestBody::Get { .. } => "get",
            RequestBody::GetType { .. } => "get_type",
            RequestBody::Lock { .. } => "lock",
            RequestBody::Unlock { .. } => "unlock",
            RequestBody::LoadLevel => "loadlevel",
            RequestBody::ServerHello
            | RequestBody::ServerList
            | RequestBody::HashMasks
            | RequestBody::HashMask
            | RequestBody::NewServer
            | RequestBody::Reply { .. } => "ignored",
            RequestBody::Unknown { .. }
            | RequestBody::Malformed { .. }
            | RequestBody::InvalidArgument { .. }
            | RequestBody::TooLarge { .. } => "invalid",
        }
    }

    fn prefetch(&self, requests: &[Request]) {
        if let [lone] = requests {
            if !matches!(lone.body, RequestBody::Set { .. }) {
                return;
            }
        }
        // The keys live on the stack: a batch's prefetch allocates nothing.
        let mut keys = [[0u8; 8]; PREFETCH_MAX];
        // Bit i: key i is written (its memtable entry is prefetched too).
        const _: () = assert!(PREFETCH_MAX <= 32);
        let mut written = 0u32;
        let mut count = 0;
        let items = requests.iter().filter_map(|request| match request.body {
            RequestBody::Get { item, .. } | RequestBody::GetType { item } => Some((item, false)),
            RequestBody::Set { item, .. } => Some((item, true)),
            _ => None,
        });
        for (slot, (item, write)) in keys.iter_mut().zip(items) {
            *slot = item.engine_key();
            written |= u32::from(write) << count;
            count += 1;
        }
        let ks = self.shared.keyspace;
        self.engine()
            .prefetch(keys[..count].iter().map(|key| (ks, &key[..])));
        if written != 0 {
            let writes = keys[..count]
                .iter()
                .enumerate()
                .filter(|(i, _)| written & (1 << i) != 0)
                .map(|(_, key)| &key[..]);
            self.engine().prefetch_writes(ks, writes);
        }
    }

    fn is_error(response: &Response) -> bool {
        matches!(
            response,
            Response::Reply {
                body: ResponseBody::FailInfo { .. } | ResponseBody::Unknown { .. },
                ..
            }
        )
    }

    async fn call(&mut self, request: Request) -> Reply<Response> {
        if let Some(error) = request.error_reply() {
            return if request.closes_connection() {
                Reply::send_then_close(error)
            } else {
                Reply::send(error)
            };
        }
        let body = match &request.body {
            // O3: replies (a client's ack of a push, say) are never answered.
            RequestBody::Reply { .. } => return Reply::nothing(),
            RequestBody::Hello => return self.hello(&request),
            RequestBody::Set { item, .. }
            | RequestBody::Get { item, .. }
            | RequestBody::GetType { item } => {
                if let Some(elsewhere) = self.elsewhere(*item) {
                    return Reply::send(request.reply(elsewhere));
                }
                match &request.body {
                    RequestBody::Set { .. } => return self.set_request(&request).await,
                    _ => return self.read_request(&request).await,
                }
            }
            RequestBody::Goodbye => {
                if let Some(release) = self.release_cluster_locks() {
                    release.await;
                }
                self.release_locks();
                return Reply::send_then_close(request.reply(ResponseBody::Ack));
            }
            RequestBody::Capabilities { command } => {
                if cmd::is_accepted(*command) {
                    ResponseBody::Ack
                } else {
                    ResponseBody::Fail
                }
            }
            RequestBody::ShuttingDown
            | RequestBody::Ping
            | RequestBody::ServerHello
            | RequestBody::ServerList
            | RequestBody::HashMasks
            | RequestBody::HashMask
            | RequestBody::NewServer => ResponseBody::Ack,
            RequestBody::LoadLevel => self.load_levels(),
            RequestBody::Lock { timeout, name } => match &self.shared.view {
                Some(view) => self.cluster_lock(&view.clone(), *timeout, name).await,
                None => self.lock(*timeout, name),
            },
            RequestBody::Unlock { name } => match &self.shared.view {
                Some(view) => self.cluster_unlock(&view.clone(), name).await,
                None => self.unlock(name),
            },
            // Handled by error_reply above.
            RequestBody::Unknown { .. }
            | RequestBody::Malformed { .. }
            | RequestBody::InvalidArgument { .. }
            | RequestBody::TooLarge { .. } => ResponseBody::failinfo(failinfo::MALFORMED),
        };
        Reply::send(request.reply(body))
    }

    fn farewell(&mut self) -> Option<(Response, Duration)> {
        let wait = Duration::from_millis(self.shared.config.goodbye_wait_ms);
        Some((self.push(Push::Goodbye), wait))
    }

    /// hello or serverhello while shutting down (§4.2, §8): tryelsewhere with another live node
    /// (the leader if it is another), fail when there is none (always on a single node).
    fn after_farewell(&mut self, request: &Request) -> Option<Response> {
        if !matches!(request.body, RequestBody::Hello | RequestBody::ServerHello) {
            return None;
        }
        let elsewhere = self.shared.view.as_ref().and_then(|view| {
            view.with_topology(|topology| {
                let me = view.me();
                let leader = topology.leader.filter(|l| *l != me);
                let other = topology.live().map(|(id, _)| id).find(|id| *id != me);
                leader
                    .or(other)
                    .and_then(|id| topology.opencluster_addr(id))
            })
        });
        Some(request.reply(match elsewhere {
            Some(addr) => ResponseBody::TryElsewhere {
                addr: Bytes::from(addr),
            },
            None => ResponseBody::Fail,
        }))
    }

    fn answers_farewell(request: &Request) -> bool {
        matches!(
            request.body,
            RequestBody::Reply {
                repcmd: cmd::GOODBYE,
                ..
            }
        )
    }

    async fn closed(&mut self) {
        if let Some(release) = self.release_cluster_locks() {
            release.await;
        }
        self.release_locks();
    }

    /// Cluster mode, after hello: the topology pushes (§5.2), one at a time.
    async fn push(&mut self) -> Option<Response> {
        loop {
            if let Some(push) = self.queued.pop_front() {
                return Some(push);
            }
            let Some((_, receiver)) = &mut self.announced else {
                return std::future::pending().await;
            };
            if receiver.changed().await.is_err() {
                return std::future::pending().await;
            }
            let topology = receiver.borrow_and_update().clone();
            self.follow(&topology);
        }
    }

    /// Across a hot upgrade the connection keeps its lock holder id (its locks are carried in
    /// the engine's lock table), its push counter and whether it ever locked.
    fn export(&mut self) -> Result<Vec<u8>, String> {
        let state = postcard::to_allocvec(&(self.holder, self.locked_once, self.next_push))
            .map_err(|e| e.to_string())?;
        // The locks go with the connection: dropping this service must not release them.
        self.locked_once = false;
        Ok(state)
    }

    fn resume(&mut self, state: &[u8]) -> Result<(), String> {
        let (holder, locked_once, next_push): (u64, bool, u32) =
            postcard::from_bytes(state).map_err(|e| e.to_string())?;
        if holder & HOLDER_BASE == 0 {
            return Err(format!("holder {holder} is not an OpenCluster holder"));
        }
        // New connections number their holders past every carried one.
        self.shared
            .next_holder
            .fetch_max((holder & !HOLDER_BASE) + 1, Ordering::Relaxed);
        self.holder = holder;
        self.locked_once = locked_once;
        self.next_push = next_push;
        Ok(())
    }
}
