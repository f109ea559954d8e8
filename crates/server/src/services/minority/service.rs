//! minority on the engine: get/set/delete/version/heartbeat and notify subscriptions with
//! pushes (minority.md).
//!
//! Each subscription is one or two engine watches. The connection's push loop takes events from
//! them only when it can write: while the client does not read, events stay in the engine's
//! bounded queue, which coalesces to the latest event per key, so writers never wait and the
//! final value always arrives. A subscription to one key (a datanumId given) joins that key's
//! group instead (`fanout`): while the session waits, the group's writer takes its events and
//! writes them; while it is awake, the session does as for any other subscription.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use polykv_engine::{
    recv_oldest, Change, Command, Durability, Engine, Entry, Event, KeyspaceId, Outcome,
    Subscription, Value,
};
use polykv_protocols::minority::{op, status, Op, Request, Response};

use super::fanout::{Fanout, Member, Outbox, WriteRight};
use super::keys::{engine_key, lookup_key, split_key};

use super::MinorityConfig;
use crate::session::{Reply, Service};

pub(super) const OPS: &[&str] = &[
    "get",
    "set",
    "notify",
    "heartbeat",
    "version",
    "delete",
    "malformed",
];

/// Most current entries a whole-dataId notify pushes as its snapshot.
const SNAPSHOT_LIMIT: usize = 100_000;

pub struct MinorityShared {
    pub(super) engine: Engine,
    pub(super) submitter: crate::submit::Submitter,
    pub(super) keyspace: KeyspaceId,
    pub(super) config: MinorityConfig,
    pub(super) fanout: Arc<Fanout>,
    /// A read needs no barrier first (a single node, or a cluster's stale reads).
    pub(super) local_reads: bool,
}

/// One subscription: its opaque and its engine watches (its own, or its place in a key's
/// group).
struct Subscribed {
    opaque: u32,
    watches: Vec<Subscription>,
    member: Option<Arc<Member>>,
}

impl Subscribed {
    /// Its watches the session may take events from: a group member's only while the session
    /// holds the write right.
    fn watches(&self, holding: bool) -> impl Iterator<Item = &Subscription> {
        let member = self.member.as_ref().filter(|_| holding);
        self.watches.iter().chain(member.map(|m| &m.watch))
    }
}

pub struct MinorityService {
    shared: Arc<MinorityShared>,
    /// (dataId, datanumId, whole dataId) → subscription; re-subscribing replaces.
    subscriptions: HashMap<(Bytes, Bytes, bool), Subscribed>,
    /// Snapshot pushes of whole-dataId subscriptions, sent before any change push.
    snapshot: VecDeque<Response>,
    /// The connection's write right, shared with the groups it joined (once it joined one).
    outbox: Option<Arc<Outbox>>,
    /// The write right, while held (always, but while the session waits).
    right: Option<WriteRight>,
}

fn reply_to(
    op: u8,
    status: u16,
    opaque: u32,
    data_id: &Bytes,
    datanum_id: &Bytes,
    value: Bytes,
) -> Response {
    Response {
        op,
        status,
        opaque,
        data_id: data_id.clone(),
        datanum_id: datanum_id.clone(),
        value,
    }
}

/// The push frame of an engine event, if minority can express the key.
fn push_of(event: Event, opaque: u32) -> Option<Response> {
    let (data_id, datanum_id) = split_key(&event.key)?;
    let (status, value) = match event.change {
        Change::Set(entry) => (status::OK, entry.value.to_bytes()),
        Change::Deleted => (status::NOT_FOUND, Bytes::new()),
    };
    Some(Response {
        op: op::NOTIFY,
        status,
        opaque,
        data_id,
        datanum_id,
        value,
    })
}

impl MinorityService {
    pub fn new(shared: Arc<MinorityShared>) -> Self {
        MinorityService {
            shared,
            subscriptions: HashMap::new(),
            snapshot: VecDeque::new(),
            outbox: None,
            right: None,
        }
    }

    /// The connection's outbox, made on first use (the session is awake then: the new outbox's
    /// write right is held).
    fn outbox(&mut self) -> Arc<Outbox> {
        if let Some(outbox) = &self.outbox {
            return outbox.clone();
        }
        let (outbox, right) = Outbox::new();
        self.right = Some(right);
        self.outbox = Some(outbox.clone());
        outbox
    }

    /// A subscription to one key through its group; `None` when the key cannot be grouped
    /// (or there is no runtime to run its writer), then the caller watches it itself.
    fn join(
        &mut self,
        key: &Bytes,
        opaque: u32,
    ) -> polykv_engine::Result<Option<(Arc<Member>, Option<Entry>)>> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(None);
        }
        let capacity = self.shared.config.push_queue.max(1) as usize;
        let outbox = self.outbox();
        self.shared
            .fanout
            .join(key.clone(), opaque, &outbox, capacity)
    }

    fn durability(&self) -> Durability {
        if self.shared.config.async_acks {
            Durability::Async
        } else {
            Durability::Sync
        }
    }

    /// A get's reply. The ids move into it: a get copies nothing but its value.
    async fn get(&self, opaque: u32, data_id: Bytes, datanum_id: Bytes) -> Response {
        match self.shared.submitter.read_barrier().await {
            Ok(()) => self.get_now(opaque, data_id, datanum_id),
            Err(_) => reply_to(
                op::GET,
                status::STORE_FAIL,
                opaque,
                &data_id,
                &datanum_id,
                Bytes::new(),
            ),
        }
    }

    /// [`Self::get`] without its read barrier: on a single node (or with stale reads) the
    /// get is answered without an await.
    fn get_now(&self, opaque: u32, data_id: Bytes, datanum_id: Bytes) -> Response {
        let s = &self.shared;
        let (status, value) = match s.engine.get(s.keyspace, &lookup_key(&data_id, &datanum_id)) {
            Ok(Some(read)) => (status::OK, read.entry.value.into_bytes()),
            Ok(None) => (status::NOT_FOUND, Bytes::new()),
            Err(_) => (status::STORE_FAIL, Bytes::new()),
        };
        Response {
            op: op::GET,
            status,
            opaque,
            data_id,
            datanum_id,
            value,
        }
    }

    /// A set or delete: OK once as durable as configured, NOT_FOUND for a delete of nothing,
    /// STORE_FAIL when the engine refuses or the write cannot be made durable. On a single
    /// node the engine takes it without an await ([`Self::written`]); through the cluster,
    /// the await's future is boxed (see `call`).
    async fn write(
        &self,
        code: u8,
        opaque: u32,
        data_id: Bytes,
        datanum_id: Bytes,
        command: Command,
    ) -> Reply<Response> {
        let submitted = match &self.shared.submitter {
            crate::submit::Submitter::Local(engine) => engine
                .submit(command, self.durability())
                .map(crate::submit::Submitted::Local),
            submitter => Box::pin(submitter.submit(command, self.durability())).await,
        };
        Self::written(code, opaque, &data_id, &datanum_id, submitted)
    }

    /// The reply to a write the engine (or the cluster) took, or refused.
    fn written(
        code: u8,
        opaque: u32,
        data_id: &Bytes,
        datanum_id: &Bytes,
        submitted: polykv_engine::Result<crate::submit::Submitted>,
    ) -> Reply<Response> {
        let answer =
            |status: u16| reply_to(code, status, opaque, data_id, datanum_id, Bytes::new());
        match submitted {
            Ok(pending) if code == op::DELETE && *pending.outcome() == Outcome::NotFound => {
                Reply::send(answer(status::NOT_FOUND))
            }
            Ok(pending) => Reply::after(pending, answer(status::OK), answer(status::STORE_FAIL)),
            Err(e) => {
                tracing::warn!(error = %e, op = code, "minority write failed");
                Reply::send(answer(status::STORE_FAIL))
            }
        }
    }

    fn notify(&mut self, opaque: u32, data_id: Bytes, datanum_id: Bytes) -> Response {
        let answer = |status: u16, value: Bytes| {
            reply_to(op::NOTIFY, status, opaque, &data_id, &datanum_id, value)
        };
        let id = (data_id.clone(), datanum_id.clone(), datanum_id.is_empty());
        if !self.subscriptions.contains_key(&id)
            && self.subscriptions.len() as u64 >= self.shared.config.max_subscriptions
        {
            return answer(status::STORE_FAIL, Bytes::new());
        }
        match self.subscribe(opaque, &data_id, &datanum_id) {
            Ok((watches, member, current)) => {
                // Replacing drops the old engine watches.
                self.subscriptions.insert(
                    id,
                    Subscribed {
                        opaque,
                        watches,
                        member,
                    },
                );
                answer(
                    status::OK,
                    current.map(|e| e.value.to_bytes()).unwrap_or_default(),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "minority notify failed");
                answer(status::STORE_FAIL, Bytes::new())
            }
        }
    }

    /// The engine watches of a subscription (or its group membership) and the key's current
    /// entry. A whole-dataId subscription also watches every key under `dataId ‖ 00` and queues
    /// their snapshot.
    #[allow(clippy::type_complexity)]
    fn subscribe(
        &mut self,
        opaque: u32,
        data_id: &Bytes,
        datanum_id: &Bytes,
    ) -> polykv_engine::Result<(Vec<Subscription>, Option<Arc<Member>>, Option<Entry>)> {
        let s = self.shared.clone();
        let capacity = Some(s.config.push_queue.max(1) as usize);
        let key = engine_key(data_id, datanum_id);
        if !datanum_id.is_empty() {
            if let Some((member, current)) = self.join(&key, opaque)? {
                return Ok((Vec::new(), Some(member), current));
            }
        }
        let (watch, current) = s.engine.watch_key(s.keyspace, key, capacity)?;
        let mut watches = vec![watch];
        if datanum_id.is_empty() {
            let mut prefix = data_id.to_vec();
            prefix.push(0);
            let (watch, snapshot) =
                s.engine
                    .watch_prefix(s.keyspace, Bytes::from(prefix), capacity, SNAPSHOT_LIMIT)?;
            watches.push(watch);
            for (key, entry) in snapshot {
                if let Some((data_id, datanum_id)) = split_key(&key) {
                    self.snapshot.push_back(Response {
                        op: op::NOTIFY,
                        status: status::OK,
                        opaque,
                        data_id,
                        datanum_id,
                        value: entry.value.to_bytes(),
                    });
                }
            }
        }
        Ok((watches, None, current))
    }
}

impl Service for MinorityService {
    type Request = Request;
    type Response = Response;

    fn op_name(request: &Request) -> &'static str {
        match request {
            Request::Frame { op, .. } => match op {
                Op::Get => "get",
                Op::Set => "set",
                Op::Notify => "notify",
                Op::Heartbeat => "heartbeat",
                Op::Version => "version",
                Op::Delete => "delete",
            },
            Request::TooLarge { .. } | Request::Malformed { .. } => "malformed",
        }
    }

    fn is_error(response: &Response) -> bool {
        matches!(response.status, status::STORE_FAIL | status::INVALID)
    }

    fn prefetch(&self, requests: &[Request]) {
        // Only reads are prefetched, and a lone request's lookups follow at once.
        if requests.len() < 2 {
            return;
        }
        let frames = requests.iter().filter_map(|request| match request {
            Request::Frame {
                data_id,
                datanum_id,
                ..
            } => Some((data_id, datanum_id)),
            _ => None,
        });
        // A key that is the dataId alone is borrowed; only compound keys are built.
        let compound: Vec<_> = frames
            .clone()
            .filter(|(_, datanum_id)| !datanum_id.is_empty())
            .map(|(data_id, datanum_id)| lookup_key(data_id, datanum_id))
            .collect();
        let simple = frames
            .filter(|(_, datanum_id)| datanum_id.is_empty())
            .map(|(data_id, _)| &data_id[..]);
        let ks = self.shared.keyspace;
        self.shared.engine.prefetch(
            simple
                .chain(compound.iter().map(|key| &key[..]))
                .map(|key| (ks, key)),
        );
    }

    async fn call(&mut self, request: Request) -> Reply<Response> {
        let (op, opaque, data_id, datanum_id, value) = match request {
            Request::TooLarge { op, opaque } => {
                return Reply::send_then_close(Response::bare(op, status::INVALID, opaque))
            }
            Request::Malformed { op, opaque } => {
                return Reply::send(Response::bare(op, status::INVALID, opaque))
            }
            Request::Frame {
                op,
                opaque,
                data_id,
                datanum_id,
                value,
            } => (op, opaque, data_id, datanum_id, value),
        };
        let code = op.code();
        match op {
            Op::Heartbeat => return Reply::send(Response::bare(code, status::OK, opaque)),
            Op::Version => {
                let version = Bytes::from(format!("polykv {}", env!("CARGO_PKG_VERSION")));
                return Reply::send(Response {
                    value: version,
                    ..Response::bare(code, status::OK, opaque)
                });
            }
            _ => {}
        }
        // M5, M6: a dataId is 1 byte or longer and has no 00.
        if data_id.is_empty() || data_id.contains(&0) {
            return Reply::send(reply_to(
                code,
                status::INVALID,
                opaque,
                &data_id,
                &datanum_id,
                Bytes::new(),
            ));
        }
        // Nothing large is awaited inline: the cluster's futures are boxed (held inline they
        // made this future several times larger, and every get paid for copying it into
        // place: 4 % of the server), and a single node's reads and writes do not await.
        match op {
            Op::Get if self.shared.local_reads => {
                Reply::send(self.get_now(opaque, data_id, datanum_id))
            }
            Op::Get => Reply::send(Box::pin(self.get(opaque, data_id, datanum_id)).await),
            Op::Set => {
                let key = engine_key(&data_id, &datanum_id);
                let command = Command::put(self.shared.keyspace, key, Value::Bytes(value));
                self.write(code, opaque, data_id, datanum_id, command).await
            }
            Op::Delete => {
                let key = engine_key(&data_id, &datanum_id);
                let command = Command::delete(self.shared.keyspace, key);
                self.write(code, opaque, data_id, datanum_id, command).await
            }
            Op::Notify => Reply::send(self.notify(opaque, data_id, datanum_id)),
            Op::Heartbeat | Op::Version => {
                Reply::send(Response::bare(code, status::INVALID, opaque))
            }
        }
    }

    async fn push(&mut self) -> Option<Response> {
        loop {
            if let Some(push) = self.snapshot.pop_front() {
                return Some(push);
            }
            // A group member's events are taken with the write right only (the group's writer
            // may be writing them while the session waits).
            if let (Some(outbox), None) = (&self.outbox, &self.right) {
                let waiting = self
                    .subscriptions
                    .values()
                    .filter_map(|s| s.member.as_ref())
                    .any(|m| m.watch.pending() > 0);
                if waiting {
                    let outbox = outbox.clone();
                    self.right = Some(outbox.take().await);
                }
            }
            // Every subscription's events in commit order, the oldest first (one queue after
            // another would push a whole dataId's children ahead of its root's older change).
            let holding = self.right.is_some();
            let watches: Vec<(u32, &Subscription)> = self
                .subscriptions
                .values()
                .flat_map(|s| s.watches(holding).map(|w| (s.opaque, w)))
                .collect();
            while let Some((opaque, event)) = recv_oldest(&watches) {
                if let Some(push) = push_of(event, opaque) {
                    return Some(push);
                }
            }
            let grouped = self
                .outbox
                .as_ref()
                .filter(|_| self.subscriptions.values().any(|s| s.member.is_some()));
            let mut open = self
                .subscriptions
                .values()
                .flat_map(|s| s.watches.iter())
                .filter(|w| !w.is_closed());
            match (grouped, open.next(), open.next()) {
                // No subscription (or the engine is shutting down): nothing will come.
                (None, None, _) => return std::future::pending().await,
                // The common cases, one watch or only groups: wait without allocating.
                (None, Some(only), None) => only.changed().await,
                (Some(outbox), None, _) => outbox.left().await,
                (grouped, first, second) => {
                    let mut waits: Vec<_> = first
                        .into_iter()
                        .chain(second)
                        .chain(open)
                        .map(|w| Box::pin(w.changed()) as futures_util::future::BoxFuture<'_, ()>)
                        .collect();
                    if let Some(outbox) = grouped {
                        waits.push(Box::pin(outbox.left()));
                    }
                    futures_util::future::select_all(waits).await;
                }
            }
        }
    }

    fn parked(&mut self, stream: &Arc<tokio::net::TcpStream>) {
        if let Some(outbox) = &self.outbox {
            outbox.park(stream);
            self.right = None;
        }
    }

    async fn woken(&mut self) {
        if let (Some(outbox), None) = (&self.outbox, &self.right) {
            let outbox = outbox.clone();
            self.right = Some(outbox.take().await);
        }
    }

    async fn closed(&mut self) {
        self.subscriptions.clear();
    }

    fn export(&mut self) -> Result<Vec<u8>, String> {
        carry::export(self)
    }

    fn resume(&mut self, state: &[u8]) -> Result<(), String> {
        carry::resume(self, state)
    }
}

/// A minority connection across a hot upgrade: its subscriptions and the pushes queued for it.
/// Writes are stopped while it is exported, so re-subscribing in the new process continues
/// each subscription with no gap and no duplicate.
mod carry {
    use serde::{Deserialize, Serialize};

    use super::*;

    /// A queued push: (status, opaque, dataId, datanumId, value).
    type Queued = (u16, u32, Vec<u8>, Vec<u8>, Vec<u8>);

    #[derive(Serialize, Deserialize)]
    struct State {
        /// (dataId, datanumId, whole dataId, opaque)
        subscriptions: Vec<(Vec<u8>, Vec<u8>, bool, u32)>,
        /// Pushes not yet sent, in order.
        queued: Vec<Queued>,
    }

    pub(super) fn export(service: &mut MinorityService) -> Result<Vec<u8>, String> {
        let mut queued: Vec<Response> = service.snapshot.drain(..).collect();
        let mut subscriptions = Vec::new();
        // The session has stopped with the write right held, and its socket has left it: no
        // group writer takes events any more.
        for ((data_id, datanum_id, whole), subscribed) in &service.subscriptions {
            for watch in subscribed.watches(true) {
                while let Some(event) = watch.try_recv() {
                    queued.extend(push_of(event, subscribed.opaque));
                }
            }
            subscriptions.push((
                data_id.to_vec(),
                datanum_id.to_vec(),
                *whole,
                subscribed.opaque,
            ));
        }
        let queued = queued
            .into_iter()
            .map(|r| {
                let (data_id, datanum_id) = (r.data_id.to_vec(), r.datanum_id.to_vec());
                (r.status, r.opaque, data_id, datanum_id, r.value.to_vec())
            })
            .collect();
        postcard::to_allocvec(&State {
            subscriptions,
            queued,
        })
        .map_err(|e| e.to_string())
    }

    pub(super) fn resume(service: &mut MinorityService, state: &[u8]) -> Result<(), String> {
        let state: State = postcard::from_bytes(state).map_err(|e| e.to_string())?;
        for (status, opaque, data_id, datanum_id, value) in state.queued {
            service.snapshot.push_back(Response {
                op: op::NOTIFY,
                status,
                opaque,
                data_id: data_id.into(),
                datanum_id: datanum_id.into(),
                value: value.into(),
            });
        }
        let s = service.shared.clone();
        let capacity = Some(s.config.push_queue.max(1) as usize);
        for (data_id, datanum_id, whole, opaque) in state.subscriptions {
            let (data_id, datanum_id) = (Bytes::from(data_id), Bytes::from(datanum_id));
            let key = engine_key(&data_id, &datanum_id);
            // The current values were pushed (or queued) before the handover: no snapshot.
            let member = match whole {
                false => service.join(&key, opaque).map_err(|e| e.to_string())?,
                true => None,
            };
            let (watches, member) = match member {
                Some((member, _)) => (Vec::new(), Some(member)),
                None => {
                    let (watch, _) = s
                        .engine
                        .watch_key(s.keyspace, key, capacity)
                        .map_err(|e| e.to_string())?;
                    let mut watches = vec![watch];
                    if whole {
                        let mut prefix = data_id.to_vec();
                        prefix.push(0);
                        let (watch, _) = s
                            .engine
                            .watch_prefix(s.keyspace, Bytes::from(prefix), capacity, 0)
                            .map_err(|e| e.to_string())?;
                        watches.push(watch);
                    }
                    (watches, None)
                }
            };
            service.subscriptions.insert(
                (data_id, datanum_id, whole),
                Subscribed {
                    opaque,
                    watches,
                    member,
                },
            );
        }
        Ok(())
    }
}
