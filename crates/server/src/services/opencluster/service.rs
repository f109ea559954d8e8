//! OpenCluster (V0) on one node: typed items, expiry, locks, hello pushes (opencluster.md).
//!
//! An item is the engine entry under `map hash ‖ key hash`; its name rides along as the
//! entry's label. Locks are the engine's named locks with this connection as the holder, so
//! closing the connection (goodbye, EOF, idle timeout) releases them. A single node is the
//! primary of every bucket: tryelsewhere is never sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use polykv_engine::{
    Command, Condition, Durability, Engine, Entry, KeyspaceId, LockOutcome, Outcome,
    Value as EngineValue,
};
use polykv_protocols::opencluster::{
    cmd, failinfo, ItemId, Push, Request, RequestBody, Response, ResponseBody, Value, ValueType,
};

use super::OpenClusterConfig;
use crate::session::{Reply, Service};

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
}

pub struct OpenClusterService {
    shared: Arc<OpenClusterShared>,
    /// This connection's lock holder id.
    holder: u64,
    /// Whether this connection may hold locks (avoids a release on close when it never locked).
    locked_once: bool,
    /// User id of the next server push (§5.1: a per-connection counter from 0).
    next_push: u32,
}

impl OpenClusterService {
    pub fn new(shared: Arc<OpenClusterShared>) -> Self {
        let holder = HOLDER_BASE | shared.next_holder.fetch_add(1, Ordering::Relaxed);
        OpenClusterService {
            shared,
            holder,
            locked_once: false,
            next_push: 0,
        }
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

    fn release_locks(&mut self) {
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
        let keys: Vec<[u8; 8]> = requests
            .iter()
            .filter_map(|request| match request.body {
                RequestBody::Get { item, .. }
                | RequestBody::GetType { item }
                | RequestBody::Set { item, .. } => Some(item.engine_key()),
                _ => None,
            })
            .collect();
        let ks = self.shared.keyspace;
        self.engine()
            .prefetch(keys.iter().map(|key| (ks, &key[..])));
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
            RequestBody::Hello => {
                let pushes = vec![
                    self.push(Push::ServerList {
                        servers: Vec::new(),
                    }),
                    self.push(Push::all_buckets(self.shared.config.mask, 0)),
                ];
                return Reply::send_with(request.reply(ResponseBody::Ack), pushes);
            }
            RequestBody::Goodbye => {
                self.release_locks();
                return Reply::send_then_close(request.reply(ResponseBody::Ack));
            }
            RequestBody::Set {
                item,
                expires,
                full_wait,
                name,
                value,
            } => {
                let fields = SetFields {
                    expires: *expires,
                    full_wait: *full_wait,
                    name: name.clone(),
                    value: value.clone(),
                };
                return self.set(&request, *item, fields).await;
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
            RequestBody::LoadLevel => ResponseBody::LoadLevels {
                primary: i32::try_from(u64::from(self.shared.config.mask) + 1).unwrap_or(i32::MAX),
                backup: 0,
                transferring: false,
            },
            RequestBody::Lock { timeout, name } => self.lock(*timeout, name),
            RequestBody::Unlock { name } => self.unlock(name),
            RequestBody::Get { .. } | RequestBody::GetType { .. }
                if self.shared.submitter.read_barrier().await.is_err() =>
            {
                ResponseBody::failinfo(failinfo::UNAVAILABLE)
            }
            RequestBody::Get { item, kind } => self.get(&request, *item, *kind),
            RequestBody::GetType { item } => match self.read(&request, *item) {
                Ok((kind, _)) => ResponseBody::DataType { item: *item, kind },
                Err(reply) => reply,
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
        self.release_locks();
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
