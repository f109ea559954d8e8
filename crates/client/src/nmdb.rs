//! An nmdb client over TCP or UDP, speaking exactly what libnmdb speaks.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
pub use polykv_protocols::nmdb::Mode;
use polykv_protocols::nmdb::{
    error, NmdbClientCodec, Reply, ReplyBody, Request, Transport, STATS_COUNTERS,
};
use polykv_protocols::{ClientCodec, Decoded};
use tokio::net::UdpSocket;

use crate::{ClientError, FramedConnection, Result};

/// Where a GET was answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// REP_CACHE_HIT.
    Cache,
    /// REP_OK: read from the store.
    Store,
}

/// The result of a CAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    Swapped,
    Mismatch,
    NotFound,
}

enum Link {
    Tcp(FramedConnection<NmdbClientCodec>),
    Udp {
        socket: UdpSocket,
        timeout: Duration,
        retries: u32,
    },
}

pub struct NmdbClient {
    link: Link,
    next_id: u32,
}

fn unexpected(body: &ReplyBody) -> ClientError {
    match body {
        ReplyBody::Error(code) => ClientError::Server(error::name(*code).to_string()),
        other => ClientError::Protocol(format!("unexpected reply {other:?}")),
    }
}

impl NmdbClient {
    /// Connects over TCP to `addr` ("host:port").
    pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<Self> {
        let conn = FramedConnection::connect(
            addr,
            NmdbClientCodec {
                transport: Transport::Tcp,
            },
            timeout,
        )
        .await?;
        Ok(NmdbClient {
            link: Link::Tcp(conn),
            next_id: 1,
        })
    }

    /// "Connects" a UDP socket to `addr`. Reads, STATS and iteration are retried `retries`
    /// times when no reply comes within `timeout`; writes are sent once (a retried SET could
    /// apply twice).
    pub async fn connect_udp(addr: &str, timeout: Duration, retries: u32) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket
            .connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        Ok(NmdbClient {
            link: Link::Udp {
                socket,
                timeout,
                retries,
            },
            next_id: 1,
        })
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = (self.next_id % 0x0FFF_FFFF) + 1;
        id
    }

    /// Sends one request and returns its reply (checking the echoed id).
    pub async fn call(&mut self, request: Request) -> Result<ReplyBody> {
        let idempotent = matches!(
            request,
            Request::Get { .. }
                | Request::Stats { .. }
                | Request::FirstKey { .. }
                | Request::NextKey { .. }
        );
        let reply = match &mut self.link {
            Link::Tcp(conn) => conn.call(&request).await?,
            Link::Udp {
                socket,
                timeout,
                retries,
            } => {
                let codec = NmdbClientCodec {
                    transport: Transport::Udp,
                };
                let mut out = BytesMut::new();
                codec.encode_request(&request, &mut out);
                let attempts = if idempotent { *retries + 1 } else { 1 };
                let mut buf = vec![0u8; 65_536];
                let mut answer = None;
                for _ in 0..attempts {
                    socket.send(&out).await?;
                    if let Ok(read) = tokio::time::timeout(*timeout, socket.recv(&mut buf)).await {
                        let n = read?;
                        match codec.decode_response(&buf[..n]) {
                            Ok(Decoded::Frame(reply, _)) if reply.id == request.id() => {
                                answer = Some(reply);
                                break;
                            }
                            Ok(_) => continue,
                            Err(reject) => {
                                return Err(ClientError::Protocol(reject.reason.to_string()))
                            }
                        }
                    }
                }
                answer.ok_or(ClientError::Timeout(*timeout))?
            }
        };
        let Reply { id, body } = reply;
        if id != request.id() {
            return Err(ClientError::Protocol(format!(
                "reply id {id} for request {}",
                request.id()
            )));
        }
        Ok(body)
    }

    pub async fn get(&mut self, key: &[u8], mode: Mode) -> Result<Option<(Bytes, Source)>> {
        let id = self.id();
        match self
            .call(Request::Get {
                id,
                mode,
                key: Bytes::copy_from_slice(key),
            })
            .await?
        {
            ReplyBody::CacheHit(v) => Ok(Some((v, Source::Cache))),
            ReplyBody::Value(v) => Ok(Some((v, Source::Store))),
            ReplyBody::NotIn | ReplyBody::CacheMiss => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn set(&mut self, key: &[u8], value: &[u8], mode: Mode) -> Result<()> {
        let id = self.id();
        let request = Request::Set {
            id,
            mode,
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        };
        match self.call(request).await? {
            ReplyBody::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Whether the key existed (an asynchronous DEL always says it did, as nmdb does).
    pub async fn del(&mut self, key: &[u8], mode: Mode) -> Result<bool> {
        let id = self.id();
        match self
            .call(Request::Del {
                id,
                mode,
                key: Bytes::copy_from_slice(key),
            })
            .await?
        {
            ReplyBody::Ok => Ok(true),
            ReplyBody::NotIn => Ok(false),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn cas(
        &mut self,
        key: &[u8],
        old: &[u8],
        new: &[u8],
        mode: Mode,
    ) -> Result<CasOutcome> {
        let id = self.id();
        let request = Request::Cas {
            id,
            mode,
            key: Bytes::copy_from_slice(key),
            old: Bytes::copy_from_slice(old),
            new: Bytes::copy_from_slice(new),
        };
        match self.call(request).await? {
            ReplyBody::Ok => Ok(CasOutcome::Swapped),
            ReplyBody::NoMatch => Ok(CasOutcome::Mismatch),
            ReplyBody::NotIn => Ok(CasOutcome::NotFound),
            other => Err(unexpected(&other)),
        }
    }

    /// The new value; `None` if the key does not exist; `ClientError::Server("NOMATCH")` when
    /// the stored value is not a NUL-terminated number.
    pub async fn incr(&mut self, key: &[u8], delta: i64, mode: Mode) -> Result<Option<i64>> {
        let id = self.id();
        match self
            .call(Request::Incr {
                id,
                mode,
                key: Bytes::copy_from_slice(key),
                delta,
            })
            .await?
        {
            ReplyBody::Value(v) if v.len() == 8 => {
                let mut word = [0u8; 8];
                word.copy_from_slice(&v);
                Ok(Some(i64::from_be_bytes(word)))
            }
            ReplyBody::NotIn => Ok(None),
            ReplyBody::NoMatch => Err(ClientError::Server(
                "NOMATCH: the value is not a number".into(),
            )),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn stats(&mut self) -> Result<[u64; STATS_COUNTERS]> {
        let id = self.id();
        match self.call(Request::Stats { id }).await? {
            ReplyBody::Value(v) if v.len() == STATS_COUNTERS * 8 => Ok(std::array::from_fn(|i| {
                let mut word = [0u8; 8];
                word.copy_from_slice(&v[i * 8..i * 8 + 8]);
                u64::from_be_bytes(word)
            })),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn first_key(&mut self) -> Result<Option<Bytes>> {
        let id = self.id();
        self.key_reply(Request::FirstKey { id }).await
    }

    pub async fn next_key(&mut self, after: &[u8]) -> Result<Option<Bytes>> {
        let id = self.id();
        self.key_reply(Request::NextKey {
            id,
            key: Bytes::copy_from_slice(after),
        })
        .await
    }

    async fn key_reply(&mut self, request: Request) -> Result<Option<Bytes>> {
        match self.call(request).await? {
            ReplyBody::Value(key) => Ok(Some(key)),
            ReplyBody::NotIn => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// The TCP connection, for tests that pipeline or send raw bytes.
    pub fn tcp(&mut self) -> Option<&mut FramedConnection<NmdbClientCodec>> {
        match &mut self.link {
            Link::Tcp(conn) => Some(conn),
            Link::Udp { .. } => None,
        }
    }
}

/// The STATS counter names, in wire order (nmdb.md §5.5).
pub const STATS_NAMES: [&str; STATS_COUNTERS] = [
    "cache_get",
    "cache_set",
    "cache_del",
    "cache_cas",
    "cache_incr",
    "db_get",
    "db_set",
    "db_del",
    "db_cas",
    "db_incr",
    "cache_hits",
    "cache_misses",
    "db_hits",
    "db_misses",
    "msg_tipc",
    "msg_tcp",
    "msg_udp",
    "msg_sctp",
    "net_version_mismatch",
    "net_broken_req",
    "net_unk_req",
    "db_firstkey",
    "db_nextkey",
];
