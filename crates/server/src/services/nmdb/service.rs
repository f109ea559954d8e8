//! nmdb on the engine: the cache/store semantics of nmdb.md §5, its STATS counters and its
//! read-only mode, over TCP and UDP.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use polykv_engine::{Command, Condition, Durability, Engine, KeyspaceId, Outcome, Source, Value};
use polykv_protocols::nmdb::{
    error, incr_value, Mode, Request, Response, ResponseBody, Transport, STATS_COUNTERS,
};
use polykv_protocols::Reject;

use crate::session::{Reply as SessionReply, Service};
use crate::submit::{Submitted, Submitter};
use crate::ReadOnly;

/// Indexes of the 23 STATS counters (§5.5), in wire order.
#[allow(dead_code)]
mod stat {
    pub const CACHE_GET: usize = 0;
    pub const CACHE_SET: usize = 1;
    pub const CACHE_DEL: usize = 2;
    pub const CACHE_CAS: usize = 3;
    pub const CACHE_INCR: usize = 4;
    pub const DB_GET: usize = 5;
    pub const DB_SET: usize = 6;
    pub const DB_DEL: usize = 7;
    pub const DB_CAS: usize = 8;
    pub const DB_INCR: usize = 9;
    pub const CACHE_HITS: usize = 10;
    pub const CACHE_MISSES: usize = 11;
    pub const DB_HITS: usize = 12;
    pub const DB_MISSES: usize = 13;
    pub const MSG_TIPC: usize = 14;
    pub const MSG_TCP: usize = 15;
    pub const MSG_UDP: usize = 16;
    pub const MSG_SCTP: usize = 17;
    pub const NET_VERSION_MISMATCH: usize = 18;
    pub const NET_BROKEN_REQ: usize = 19;
    pub const NET_UNK_REQ: usize = 20;
    pub const DB_FIRSTKEY: usize = 21;
    pub const DB_NEXTKEY: usize = 22;
}

/// Operation names for metrics.
pub(super) const OPS: &[&str] = &[
    "get",
    "set",
    "del",
    "cas",
    "incr",
    "stats",
    "firstkey",
    "nextkey",
    "malformed",
];

/// What every nmdb connection and socket shares.
pub struct NmdbShared {
    engine: Engine,
    submitter: Submitter,
    keyspace: KeyspaceId,
    read_only: Arc<ReadOnly>,
    counters: [AtomicU64; STATS_COUNTERS],
}

impl NmdbShared {
    pub fn new(submitter: Submitter, keyspace: KeyspaceId, read_only: Arc<ReadOnly>) -> Self {
        NmdbShared {
            engine: submitter.engine().clone(),
            submitter,
            keyspace,
            read_only,
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn count(&self, index: usize) {
        self.counters[index].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; STATS_COUNTERS] {
        std::array::from_fn(|i| self.counters[i].load(Ordering::Relaxed))
    }
}

/// One TCP connection's or the UDP socket's service.
pub struct NmdbService {
    shared: Arc<NmdbShared>,
    transport: Transport,
}

impl NmdbService {
    pub fn new(shared: Arc<NmdbShared>, transport: Transport) -> Self {
        NmdbService { shared, transport }
    }

    fn reply(id: u32, body: ResponseBody) -> SessionReply<Response> {
        SessionReply::send(Response { id, body })
    }

    /// `body` once the write is as durable as it asked, ERR_DB if it cannot be.
    fn after_write(id: u32, pending: Submitted, body: ResponseBody) -> SessionReply<Response> {
        SessionReply::after(
            pending,
            Response { id, body },
            Response {
                id,
                body: ResponseBody::Error(error::DB),
            },
        )
    }

    fn engine_error(id: u32, e: polykv_engine::Error) -> SessionReply<Response> {
        tracing::warn!(error = %e, "nmdb request failed in the engine");
        Self::reply(id, ResponseBody::Error(error::DB))
    }

    fn durability(mode: Mode) -> Durability {
        match mode {
            Mode::CacheOnly => Durability::Memory,
            Mode::Normal => Durability::Async,
            Mode::Sync => Durability::Sync,
        }
    }

    fn get(&self, id: u32, mode: Mode, key: Bytes) -> SessionReply<Response> {
        let s = &self.shared;
        if mode == Mode::CacheOnly {
            s.count(stat::CACHE_GET);
            return match s.engine.get_cached(s.keyspace, &key) {
                Some(entry) => {
                    s.count(stat::CACHE_HITS);
                    Self::reply(id, ResponseBody::CacheHit(entry.value.into_bytes()))
                }
                None => {
                    s.count(stat::CACHE_MISSES);
                    Self::reply(id, ResponseBody::CacheMiss)
                }
            };
        }
        s.count(stat::DB_GET);
        match s.engine.get(s.keyspace, &key) {
            Ok(Some(read)) if read.source == Source::Cache => {
                s.count(stat::CACHE_HITS);
                Self::reply(id, ResponseBody::CacheHit(read.entry.value.into_bytes()))
            }
            Ok(Some(read)) => {
                s.count(stat::DB_HITS);
                Self::reply(id, ResponseBody::Value(read.entry.value.into_bytes()))
            }
            Ok(None) => {
                s.count(stat::DB_MISSES);
                Self::reply(id, ResponseBody::NotIn)
            }
            Err(e) => Self::engine_error(id, e),
        }
    }

    async fn set(&self, id: u32, mode: Mode, key: Bytes, value: Bytes) -> SessionReply<Response> {
        let s = &self.shared;
        s.count(if mode == Mode::CacheOnly {
            stat::CACHE_SET
        } else {
            stat::DB_SET
        });
        let command = Command::put(s.keyspace, key, Value::Bytes(value));
        match s.submitter.submit(command, Self::durability(mode)).await {
            Ok(pending) if *pending.outcome() == Outcome::TooLarge => {
                Self::reply(id, ResponseBody::Error(error::MEM))
            }
            Ok(pending) => SessionReply::after(
                pending,
                Response {
                    id,
                    body: ResponseBody::Ok,
                },
                Response {
                    id,
                    body: ResponseBody::Error(error::DB),
                },
            ),
            Err(e) => Self::engine_error(id, e),
        }
    }

    async fn del(&self, id: u32, mode: Mode, key: Bytes) -> SessionReply<Response> {
        let s = &self.shared;
        s.count(if mode == Mode::CacheOnly {
            stat::CACHE_DEL
        } else {
            stat::DB_DEL
        });
        let pending = match s
            .submitter
            .submit(Command::delete(s.keyspace, key), Self::durability(mode))
            .await
        {
            Ok(pending) => pending,
            Err(e) => return Self::engine_error(id, e),
        };
        // An asynchronous DEL answers OK even for an absent key (as nmdb did).
        let existed = matches!(pending.outcome(), Outcome::Deleted { .. });
        let ok = if existed || mode == Mode::Normal {
            ResponseBody::Ok
        } else {
            ResponseBody::NotIn
        };
        SessionReply::after(
            pending,
            Response { id, body: ok },
            Response {
                id,
                body: ResponseBody::Error(error::DB),
            },
        )
    }

    async fn cas(
        &self,
        id: u32,
        mode: Mode,
        key: Bytes,
        old: Bytes,
        new: Bytes,
    ) -> SessionReply<Response> {
        let s = &self.shared;
        s.count(if mode == Mode::CacheOnly {
            stat::CACHE_CAS
        } else {
            stat::DB_CAS
        });
        // CAS uses CACHE_ONLY only; SYNC is ignored, so a normal CAS is Async.
        let durability = if mode == Mode::CacheOnly {
            Durability::Memory
        } else {
            Durability::Async
        };
        let command = Command::Put {
            ks: s.keyspace,
            key,
            value: Value::Bytes(new),
            expires_at: None,
            owner: None,
            label: None,
            condition: Condition::ValueIs(Value::Bytes(old)),
        };
        match s.submitter.submit(command, durability).await {
            Ok(pending) => {
                let body = match pending.outcome() {
                    Outcome::Written { .. } => ResponseBody::Ok,
                    Outcome::NotFound => ResponseBody::NotIn,
                    Outcome::TooLarge => ResponseBody::Error(error::MEM),
                    _ => ResponseBody::NoMatch,
                };
                Self::after_write(id, pending, body)
            }
            Err(e) => Self::engine_error(id, e),
        }
    }

    async fn incr(&self, id: u32, mode: Mode, key: Bytes, delta: i64) -> SessionReply<Response> {
        let s = &self.shared;
        s.count(if mode == Mode::CacheOnly {
            stat::CACHE_INCR
        } else {
            stat::DB_INCR
        });
        let durability = if mode == Mode::CacheOnly {
            Durability::Memory
        } else {
            Durability::Async
        };
        let mut result = ResponseBody::NotIn;
        let updated = s
            .submitter
            .submit_update(s.keyspace, key, durability, |current| {
                let current = current?;
                match incr_value(&current.value.to_bytes(), delta) {
                    Some((stored, value)) => {
                        result = ResponseBody::incr(value);
                        Some(Value::Bytes(stored.into()))
                    }
                    None => {
                        result = ResponseBody::NoMatch;
                        None
                    }
                }
            })
            .await;
        match updated {
            Ok((_, Some(pending))) if *pending.outcome() == Outcome::TooLarge => {
                Self::reply(id, ResponseBody::Error(error::MEM))
            }
            Ok((_, Some(pending))) => Self::after_write(id, pending, result),
            Ok((_, None)) => Self::reply(id, result),
            Err(e) => Self::engine_error(id, e),
        }
    }

    fn walk(&self, id: u32, after: Option<Bytes>) -> SessionReply<Response> {
        let s = &self.shared;
        let found = match &after {
            None => s.engine.first(s.keyspace),
            Some(key) => s.engine.next_after(s.keyspace, key),
        };
        match found {
            Ok(Some((key, _))) => Self::reply(id, ResponseBody::Value(key)),
            Ok(None) => Self::reply(id, ResponseBody::NotIn),
            Err(e) => Self::engine_error(id, e),
        }
    }
}

impl Service for NmdbService {
    type Request = Request;
    type Response = Response;
    /// Nothing per connection to carry, no pushes: an idle connection is handed over as is.
    const STATELESS: bool = true;

    fn op_name(request: &Request) -> &'static str {
        match request {
            Request::Get { .. } => "get",
            Request::Set { .. } => "set",
            Request::Del { .. } => "del",
            Request::Cas { .. } => "cas",
            Request::Incr { .. } => "incr",
            Request::Stats { .. } => "stats",
            Request::FirstKey { .. } => "firstkey",
            Request::NextKey { .. } => "nextkey",
            Request::BadVersion { .. } | Request::Unknown { .. } | Request::Broken { .. } => {
                "malformed"
            }
        }
    }

    fn is_error(reply: &Response) -> bool {
        matches!(reply.body, ResponseBody::Error(_))
    }

    fn prefetch(&self, requests: &[Request]) {
        if let [lone] = requests {
            if written(lone).is_none() {
                return;
            }
        }
        let ks = self.shared.keyspace;
        self.shared
            .engine
            .prefetch(requests.iter().filter_map(|request| match request {
                Request::Get { key, .. }
                | Request::Set { key, .. }
                | Request::Del { key, .. }
                | Request::Cas { key, .. }
                | Request::Incr { key, .. } => Some((ks, &key[..])),
                _ => None,
            }));
        fn written(request: &Request) -> Option<&[u8]> {
            match request {
                Request::Set { key, mode, .. }
                | Request::Del { key, mode, .. }
                | Request::Cas { key, mode, .. }
                | Request::Incr { key, mode, .. }
                    if *mode != Mode::CacheOnly =>
                {
                    Some(&key[..])
                }
                _ => None,
            }
        }
        if requests.iter().any(|request| written(request).is_some()) {
            self.shared
                .engine
                .prefetch_writes(ks, requests.iter().filter_map(written));
        }
    }

    async fn call(&mut self, request: Request) -> SessionReply<Response> {
        let s = &self.shared;
        s.count(match self.transport {
            Transport::Tcp => stat::MSG_TCP,
            Transport::Udp => stat::MSG_UDP,
            Transport::Sctp => stat::MSG_SCTP,
        });
        let mutation = matches!(
            request,
            Request::Set { .. } | Request::Del { .. } | Request::Cas { .. } | Request::Incr { .. }
        );
        if mutation && s.read_only.get() {
            return Self::reply(request.id(), ResponseBody::Error(error::RO));
        }
        // Reads of replicated data are linearizable in cluster mode (CACHE_ONLY stays local).
        let replicated_read = match &request {
            Request::Get { mode, .. } => *mode != Mode::CacheOnly,
            Request::FirstKey { .. } | Request::NextKey { .. } => true,
            _ => false,
        };
        if replicated_read {
            if let Err(e) = s.submitter.read_barrier().await {
                return Self::engine_error(request.id(), e);
            }
        }
        match request {
            Request::Get { id, mode, key } => self.get(id, mode, key),
            Request::Set {
                id,
                mode,
                key,
                value,
            } => self.set(id, mode, key, value).await,
            Request::Del { id, mode, key } => self.del(id, mode, key).await,
            Request::Cas {
                id,
                mode,
                key,
                old,
                new,
            } => self.cas(id, mode, key, old, new).await,
            Request::Incr {
                id,
                mode,
                key,
                delta,
            } => self.incr(id, mode, key, delta).await,
            Request::Stats { id } => Self::reply(id, ResponseBody::stats(&s.snapshot())),
            Request::FirstKey { id } => {
                s.count(stat::DB_FIRSTKEY);
                self.walk(id, None)
            }
            Request::NextKey { id, key } => {
                s.count(stat::DB_NEXTKEY);
                self.walk(id, Some(key))
            }
            Request::BadVersion { id } => {
                s.count(stat::NET_VERSION_MISMATCH);
                let reply = Response {
                    id,
                    body: ResponseBody::Error(error::VER),
                };
                // Over TCP nmdb closes the connection after ERR_VER.
                match self.transport {
                    Transport::Tcp => SessionReply::send_then_close(reply),
                    _ => SessionReply::send(reply),
                }
            }
            Request::Unknown { id, .. } => {
                s.count(stat::NET_UNK_REQ);
                Self::reply(id, ResponseBody::Error(error::UNKREQ))
            }
            Request::Broken { id } => {
                s.count(stat::NET_BROKEN_REQ);
                Self::reply(id, ResponseBody::Error(error::BROKEN))
            }
        }
    }

    fn rejected(&mut self, _reject: &Reject) {
        // Over UDP a datagram under 8 bytes is dropped and counted as broken (§3.2).
        if self.transport != Transport::Tcp {
            self.shared.count(stat::NET_BROKEN_REQ);
        }
    }
}
