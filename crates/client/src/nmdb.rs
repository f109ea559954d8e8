//! An nmdb client over TCP or UDP, speaking what libnmdb speaks (nmdb.md).
//!
//! Over TCP one request is in flight at a time, as with libnmdb (the connection is available
//! through [`NmdbClient::tcp`] for pipelining tests). Over UDP each request is one datagram and
//! its reply one datagram; requests that are safe to repeat (GET, STATS, FIRSTKEY, NEXTKEY) are
//! re-sent after a timeout a bounded number of times, writes are sent once (a repeated SET, CAS
//! or INCR could apply twice).
//!
//! Unlike libnmdb (always id 1) the client numbers its requests, so a late UDP reply to an
//! earlier request is recognised and skipped.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use polykv_protocols::nmdb::{
    error, NmdbClientCodec, Request, Response, ResponseBody, Transport, ID_MASK, STATS_COUNTERS,
};
pub use polykv_protocols::nmdb::{Mode, Stats};
use polykv_protocols::{ClientCodec, Decoded};
use tokio::net::UdpSocket;
use tokio::time::Instant;

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
    /// REP_OK: the old value matched and was replaced.
    Swapped,
    /// REP_NOMATCH.
    Mismatch,
    /// REP_NOTIN.
    NotFound,
}

/// The largest datagram a reply can be.
const MAX_DATAGRAM: usize = 65_536;

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

/// The error for a reply that does not answer the request: the server's error by name, or a
/// protocol error.
fn unexpected(body: &ResponseBody) -> ClientError {
    match body {
        ResponseBody::Error(code) => ClientError::Server(error::name(*code).to_string()),
        other => ClientError::Protocol(format!("unexpected reply {other:?}")),
    }
}

/// Whether sending `request` twice is harmless.
fn idempotent(request: &Request) -> bool {
    matches!(
        request,
        Request::Get { .. }
            | Request::Stats { .. }
            | Request::FirstKey { .. }
            | Request::NextKey { .. }
    )
}

impl NmdbClient {
    /// Connects over TCP to `addr` ("host:port"). Every reply is awaited at most `timeout`.
    pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<Self> {
        let conn = FramedConnection::connect(addr, NmdbClientCodec::tcp(), timeout).await?;
        Ok(NmdbClient {
            link: Link::Tcp(conn),
            next_id: 1,
        })
    }

    /// "Connects" a UDP socket to `addr`. GET, STATS and iteration are re-sent up to `retries`
    /// times when no reply comes within `timeout`; writes are sent once.
    pub async fn connect_udp(addr: &str, timeout: Duration, retries: u32) -> Result<Self> {
        let socket = crate::connect_udp(addr).await?;
        Ok(NmdbClient {
            link: Link::Udp {
                socket,
                timeout,
                retries,
            },
            next_id: 1,
        })
    }

    /// The next request id: 1, 2, … up to the 28-bit maximum, then 1 again.
    pub fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = (self.next_id % ID_MASK) + 1;
        id
    }

    /// Sends one request (any id, any flags) and returns its reply body, after checking that
    /// the reply carries the request's id.
    pub async fn call(&mut self, request: Request) -> Result<ResponseBody> {
        let expected = request.id();
        let reply = match &mut self.link {
            Link::Tcp(conn) => conn.call(&request).await?,
            Link::Udp {
                socket,
                timeout,
                retries,
            } => {
                let mut out = BytesMut::new();
                NmdbClientCodec::udp().encode_request(&request, &mut out);
                let attempts = if idempotent(&request) {
                    *retries + 1
                } else {
                    1
                };
                udp_exchange(socket, &out, expected, *timeout, attempts).await?
            }
        };
        let Response { id, body } = reply;
        if id != expected {
            return Err(ClientError::Protocol(format!(
                "reply id {id} for request {expected}"
            )));
        }
        Ok(body)
    }

    /// Sends raw bytes (a whole TCP frame, or one datagram) and returns the next reply as
    /// decoded, without checking its id. For tests of malformed input.
    pub async fn call_raw(&mut self, bytes: &[u8]) -> Result<Response> {
        match &mut self.link {
            Link::Tcp(conn) => {
                conn.queue_raw(bytes);
                conn.flush().await?;
                conn.receive().await
            }
            Link::Udp {
                socket, timeout, ..
            } => {
                socket.send(bytes).await?;
                let mut buf = vec![0u8; MAX_DATAGRAM];
                let n = tokio::time::timeout(*timeout, socket.recv(&mut buf))
                    .await
                    .map_err(|_| ClientError::Timeout(*timeout))??;
                decode_datagram_reply(buf.get(..n).unwrap_or_default())
            }
        }
    }

    /// GET: the value and where it came from; `None` on NOTIN or CACHE_MISS.
    pub async fn get(&mut self, key: &[u8], mode: Mode) -> Result<Option<(Bytes, Source)>> {
        let id = self.next_id();
        let request = Request::Get {
            id,
            mode,
            key: Bytes::copy_from_slice(key),
        };
        match self.call(request).await? {
            ResponseBody::CacheHit(v) => Ok(Some((v, Source::Cache))),
            ResponseBody::Value(v) => Ok(Some((v, Source::Store))),
            ResponseBody::NotIn | ResponseBody::CacheMiss => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// SET (Normal = asynchronous store write, Sync = durable before the reply, CacheOnly =
    /// the cache only).
    pub async fn set(&mut self, key: &[u8], value: &[u8], mode: Mode) -> Result<()> {
        let id = self.next_id();
        let request = Request::Set {
            id,
            mode,
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        };
        match self.call(request).await? {
            ResponseBody::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// DEL: whether the key existed (OK = true, NOTIN = false). A normal (asynchronous) DEL
    /// always answers OK, as nmdb does.
    pub async fn del(&mut self, key: &[u8], mode: Mode) -> Result<bool> {
        let id = self.next_id();
        let request = Request::Del {
            id,
            mode,
            key: Bytes::copy_from_slice(key),
        };
        match self.call(request).await? {
            ResponseBody::Ok => Ok(true),
            ResponseBody::NotIn => Ok(false),
            other => Err(unexpected(&other)),
        }
    }

    /// CAS: replace `old` by `new`.
    pub async fn cas(
        &mut self,
        key: &[u8],
        old: &[u8],
        new: &[u8],
        mode: Mode,
    ) -> Result<CasOutcome> {
        let id = self.next_id();
        let request = Request::Cas {
            id,
            mode,
            key: Bytes::copy_from_slice(key),
            old: Bytes::copy_from_slice(old),
            new: Bytes::copy_from_slice(new),
        };
        match self.call(request).await? {
            ResponseBody::Ok => Ok(CasOutcome::Swapped),
            ResponseBody::NoMatch => Ok(CasOutcome::Mismatch),
            ResponseBody::NotIn => Ok(CasOutcome::NotFound),
            other => Err(unexpected(&other)),
        }
    }

    /// INCR: the new value; `None` if the key does not exist; `ClientError::Server("NOMATCH…")`
    /// when the stored value is not NUL-terminated.
    pub async fn incr(&mut self, key: &[u8], delta: i64, mode: Mode) -> Result<Option<i64>> {
        let id = self.next_id();
        let request = Request::Incr {
            id,
            mode,
            key: Bytes::copy_from_slice(key),
            delta,
        };
        match self.call(request).await? {
            body @ ResponseBody::Value(_) => {
                body.as_incr().map(Some).ok_or_else(|| unexpected(&body))
            }
            ResponseBody::NotIn => Ok(None),
            ResponseBody::NoMatch => Err(ClientError::Server(
                "NOMATCH: the value is not a number".into(),
            )),
            other => Err(unexpected(&other)),
        }
    }

    /// STATS: the 23 counters in wire order (names in [`STATS_NAMES`]).
    pub async fn stats(&mut self) -> Result<[u64; STATS_COUNTERS]> {
        Ok(self.stats_typed().await?.counters())
    }

    /// STATS as named counters.
    pub async fn stats_typed(&mut self) -> Result<Stats> {
        let id = self.next_id();
        let body = self.call(Request::Stats { id }).await?;
        body.as_stats().ok_or_else(|| unexpected(&body))
    }

    /// FIRSTKEY: the smallest key, or `None` when the store is empty.
    pub async fn first_key(&mut self) -> Result<Option<Bytes>> {
        let id = self.next_id();
        self.key_reply(Request::FirstKey { id }).await
    }

    /// NEXTKEY: the smallest key greater than `after`, or `None`.
    pub async fn next_key(&mut self, after: &[u8]) -> Result<Option<Bytes>> {
        let id = self.next_id();
        let request = Request::NextKey {
            id,
            key: Bytes::copy_from_slice(after),
        };
        self.key_reply(request).await
    }

    async fn key_reply(&mut self, request: Request) -> Result<Option<Bytes>> {
        match self.call(request).await? {
            ResponseBody::Value(key) => Ok(Some(key)),
            ResponseBody::NotIn => Ok(None),
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

    pub fn transport(&self) -> Transport {
        match self.link {
            Link::Tcp(_) => Transport::Tcp,
            Link::Udp { .. } => Transport::Udp,
        }
    }
}

fn decode_datagram_reply(datagram: &[u8]) -> Result<Response> {
    match NmdbClientCodec::udp().decode_response(datagram) {
        Ok(Decoded::Frame(reply, _)) => Ok(reply),
        Ok(Decoded::Incomplete) => Err(ClientError::Protocol("empty datagram".into())),
        Err(reject) => Err(ClientError::Protocol(reject.reason.to_string())),
    }
}

/// Sends `datagram` up to `attempts` times and returns the first reply with id `expected`.
/// Replies with other ids (late answers to earlier requests) are skipped without re-sending.
async fn udp_exchange(
    socket: &UdpSocket,
    datagram: &[u8],
    expected: u32,
    timeout: Duration,
    attempts: u32,
) -> Result<Response> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    for _ in 0..attempts.max(1) {
        socket.send(datagram).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let Ok(read) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await else {
                break; // this attempt timed out
            };
            let n = read?;
            let reply = decode_datagram_reply(buf.get(..n).unwrap_or_default())?;
            if reply.id == expected {
                return Ok(reply);
            }
        }
    }
    Err(ClientError::Timeout(timeout))
}

/// The STATS counter names, in wire order (nmdb.md §5.5).
pub const STATS_NAMES: [&str; STATS_COUNTERS] = Stats::NAMES;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    const T: Duration = Duration::from_secs(5);

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// A TCP request frame as the client must send it: id `id`, `code`, `flags`, `payload`.
    fn req(id: u32, code: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = ((12 + payload.len()) as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&(0x1000_0000 | id).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    /// A TCP reply frame: id, code, then `payload`.
    fn rep(id: u32, code: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = ((12 + payload.len()) as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn long(n: &[u8]) -> Vec<u8> {
        let mut p = (n.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(n);
        p
    }

    /// A fake server for one connection: for each step, reads exactly the expected request
    /// bytes, checks them, and writes the canned reply. Then it closes.
    async fn fake_tcp(script: Vec<(Vec<u8>, Vec<u8>)>) -> (String, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            for (expected, reply) in script {
                let mut got = vec![0u8; expected.len()];
                stream.read_exact(&mut got).await.unwrap();
                assert_eq!(got, expected, "request bytes");
                stream.write_all(&reply).await.unwrap();
            }
        });
        (addr, task)
    }

    async fn client(addr: &str) -> NmdbClient {
        NmdbClient::connect_tcp(addr, T).await.unwrap()
    }

    fn server_error(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(ClientError::Server(name)) => name,
            other => panic!("expected a server error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn get_set_del_over_tcp() {
        use polykv_protocols::nmdb::{code, reply};
        let k = long(b"k");
        let mut kv = hex("00 00 00 01  00 00 00 01");
        kv.extend_from_slice(b"kv");
        let (addr, server) = fake_tcp(vec![
            // Vectors 7 and 10: GET "k" → CACHE_HIT "v".
            (
                hex("00 00 00 11  10 00 00 01  01 01 00 00  00 00 00 01  6b"),
                hex("00 00 00 11  00 00 00 01  00 00 08 01  00 00 00 01  76"),
            ),
            (req(2, code::GET, 1, &k), rep(2, reply::OK, &long(b"store"))),
            (req(3, code::GET, 0, &k), rep(3, reply::NOTIN, &[])),
            (req(4, code::GET, 1, &k), rep(4, reply::CACHE_MISS, &[])),
            (
                req(5, code::GET, 0, &k),
                rep(5, reply::ERR, &hex("00 00 01 06")),
            ),
            // Vector 9: SET with SYNC.
            (
                hex("00 00 00 16  10 00 00 06  01 02 00 02  00 00 00 01  00 00 00 01  6b 76"),
                rep(6, reply::OK, &[]),
            ),
            (
                req(7, code::SET, 1, &kv),
                rep(7, reply::ERR, &hex("00 00 01 07")),
            ),
            (req(8, code::SET, 0, &kv), rep(8, reply::OK, &[])),
            (req(9, code::DEL, 0, &k), rep(9, reply::OK, &[])),
            (req(10, code::DEL, 2, &k), rep(10, reply::NOTIN, &[])),
            (req(11, code::DEL, 1, &k), rep(11, reply::NOMATCH, &[])),
        ])
        .await;
        let mut c = client(&addr).await;
        assert_eq!(
            c.get(b"k", Mode::Normal).await.unwrap(),
            Some((Bytes::from_static(b"v"), Source::Cache))
        );
        assert_eq!(
            c.get(b"k", Mode::CacheOnly).await.unwrap(),
            Some((Bytes::from_static(b"store"), Source::Store))
        );
        assert_eq!(c.get(b"k", Mode::Normal).await.unwrap(), None);
        assert_eq!(c.get(b"k", Mode::CacheOnly).await.unwrap(), None);
        assert_eq!(server_error(c.get(b"k", Mode::Normal).await), "ERR_DB");
        c.set(b"k", b"v", Mode::Sync).await.unwrap();
        assert_eq!(
            server_error(c.set(b"k", b"v", Mode::CacheOnly).await),
            "ERR_RO"
        );
        c.set(b"k", b"v", Mode::Normal).await.unwrap();
        assert!(c.del(b"k", Mode::Normal).await.unwrap());
        assert!(!c.del(b"k", Mode::Sync).await.unwrap());
        assert!(matches!(
            c.del(b"k", Mode::CacheOnly).await,
            Err(ClientError::Protocol(_))
        ));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn cas_incr_stats_and_iteration_over_tcp() {
        use polykv_protocols::nmdb::{code, reply};
        let cas = {
            let mut p = hex("00 00 00 01  00 00 00 01  00 00 00 01");
            p.extend_from_slice(b"kvw");
            p
        };
        let incr = |delta: i64| {
            let mut p = long(b"n");
            p.extend_from_slice(&delta.to_be_bytes());
            p
        };
        let stats: Vec<u8> = (1..=23u64).flat_map(|c| c.to_be_bytes()).collect();
        let (addr, server) = fake_tcp(vec![
            (req(1, code::CAS, 0, &cas), rep(1, reply::OK, &[])),
            (req(2, code::CAS, 1, &cas), rep(2, reply::NOMATCH, &[])),
            (req(3, code::CAS, 0, &cas), rep(3, reply::NOTIN, &[])),
            (
                req(4, code::INCR, 0, &incr(10)),
                rep(4, reply::OK, &long(&12i64.to_be_bytes())),
            ),
            (req(5, code::INCR, 1, &incr(-3)), rep(5, reply::NOTIN, &[])),
            (req(6, code::INCR, 0, &incr(1)), rep(6, reply::NOMATCH, &[])),
            (
                req(7, code::INCR, 0, &incr(1)),
                rep(7, reply::OK, &long(b"1234")),
            ),
            (
                req(8, code::STATS, 0, &[]),
                rep(8, reply::OK, &long(&stats)),
            ),
            (
                req(9, code::STATS, 0, &[]),
                rep(9, reply::OK, &long(&stats)),
            ),
            (
                req(10, code::FIRSTKEY, 0, &[]),
                rep(10, reply::OK, &long(b"a")),
            ),
            (
                req(11, code::NEXTKEY, 0, &long(b"a")),
                rep(11, reply::OK, &long(b"")),
            ),
            (
                req(12, code::NEXTKEY, 0, &long(b"")),
                rep(12, reply::NOTIN, &[]),
            ),
            (req(13, code::FIRSTKEY, 0, &[]), rep(13, reply::NOTIN, &[])),
            (
                req(14, code::STATS, 0, &[]),
                rep(14, reply::OK, &long(b"short")),
            ),
        ])
        .await;
        let mut c = client(&addr).await;
        assert_eq!(
            c.cas(b"k", b"v", b"w", Mode::Normal).await.unwrap(),
            CasOutcome::Swapped
        );
        assert_eq!(
            c.cas(b"k", b"v", b"w", Mode::CacheOnly).await.unwrap(),
            CasOutcome::Mismatch
        );
        assert_eq!(
            c.cas(b"k", b"v", b"w", Mode::Normal).await.unwrap(),
            CasOutcome::NotFound
        );
        assert_eq!(c.incr(b"n", 10, Mode::Normal).await.unwrap(), Some(12));
        assert_eq!(c.incr(b"n", -3, Mode::CacheOnly).await.unwrap(), None);
        assert!(server_error(c.incr(b"n", 1, Mode::Normal).await).starts_with("NOMATCH"));
        assert!(matches!(
            c.incr(b"n", 1, Mode::Normal).await,
            Err(ClientError::Protocol(_))
        ));
        let counters = c.stats().await.unwrap();
        assert_eq!(counters, std::array::from_fn(|i| i as u64 + 1));
        let typed = c.stats_typed().await.unwrap();
        assert_eq!((typed.cache_get, typed.db_nextkey), (1, 23));
        assert_eq!(typed.get("net_broken_req"), Some(20));
        assert_eq!(STATS_NAMES[19], "net_broken_req");
        assert_eq!(c.first_key().await.unwrap(), Some(Bytes::from_static(b"a")));
        assert_eq!(c.next_key(b"a").await.unwrap(), Some(Bytes::new()));
        assert_eq!(c.next_key(b"").await.unwrap(), None);
        assert_eq!(c.first_key().await.unwrap(), None);
        assert!(matches!(c.stats().await, Err(ClientError::Protocol(_))));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn tcp_reply_id_must_match_and_close_is_reported() {
        use polykv_protocols::nmdb::{code, reply};
        let (addr, server) = fake_tcp(vec![(
            req(1, code::GET, 0, &long(b"k")),
            rep(2, reply::NOTIN, &[]),
        )])
        .await;
        let mut c = client(&addr).await;
        assert!(matches!(
            c.get(b"k", Mode::Normal).await,
            Err(ClientError::Protocol(m)) if m.contains("reply id 2")
        ));
        server.await.unwrap();
        // The fake has closed: the next call sees EOF (or a reset while writing).
        assert!(matches!(
            c.get(b"k", Mode::Normal).await,
            Err(ClientError::Closed | ClientError::Io(_))
        ));
    }

    #[tokio::test]
    async fn raw_calls_over_tcp() {
        // A 9-byte frame answered ERR_BROKEN with its id; a bad version answered ERR_VER.
        let (addr, server) = fake_tcp(vec![
            (
                hex("00 00 00 09  10 00 00 05  01"),
                hex("00 00 00 10  00 00 00 05  00 00 08 00  00 00 01 03"),
            ),
            (
                hex("00 00 00 0c  20 00 00 01  01 01 00 00"),
                hex("00 00 00 10  00 00 00 01  00 00 08 00  00 00 01 01"),
            ),
        ])
        .await;
        let mut c = client(&addr).await;
        assert_eq!(c.transport(), Transport::Tcp);
        let broken = c
            .call_raw(&hex("00 00 00 09  10 00 00 05  01"))
            .await
            .unwrap();
        assert_eq!(
            broken,
            Response {
                id: 5,
                body: ResponseBody::Error(error::BROKEN)
            }
        );
        let ver = c
            .call_raw(&hex("00 00 00 0c  20 00 00 01  01 01 00 00"))
            .await
            .unwrap();
        assert_eq!(ver.body, ResponseBody::Error(error::VER));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn call_with_any_id_and_flags() {
        let (addr, server) = fake_tcp(vec![(
            hex("00 00 00 0c  1f ff ff ff  01 06 00 00"),
            hex("00 00 00 0c  0f ff ff ff  00 00 08 04"),
        )])
        .await;
        let mut c = client(&addr).await;
        let body = c.call(Request::Stats { id: ID_MASK }).await.unwrap();
        assert_eq!(body, ResponseBody::NotIn);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn ids_wrap_within_28_bits() {
        // Connecting needs a listener; nothing is sent.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = client(&listener.local_addr().unwrap().to_string()).await;
        assert_eq!(c.next_id(), 1);
        assert_eq!(c.next_id(), 2);
        c.next_id = ID_MASK;
        assert_eq!(c.next_id(), ID_MASK);
        assert_eq!(c.next_id(), 1);
    }

    // ---- UDP ----

    /// A bound fake UDP server and a client connected to it.
    async fn udp_pair(timeout: Duration, retries: u32) -> (UdpSocket, NmdbClient) {
        let fake = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = fake.local_addr().unwrap().to_string();
        let c = NmdbClient::connect_udp(&addr, timeout, retries)
            .await
            .unwrap();
        (fake, c)
    }

    async fn recv(fake: &UdpSocket) -> (Vec<u8>, std::net::SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = tokio::time::timeout(T, fake.recv_from(&mut buf))
            .await
            .expect("a datagram")
            .unwrap();
        buf.truncate(n);
        (buf, from)
    }

    #[tokio::test]
    async fn udp_get_is_retried_after_a_lost_reply() {
        let (fake, mut c) = udp_pair(Duration::from_millis(100), 2).await;
        assert_eq!(c.transport(), Transport::Udp);
        let answer = async {
            // Ignore the first datagram (as if lost), answer the second.
            let (first, _) = recv(&fake).await;
            let (second, from) = recv(&fake).await;
            assert_eq!(first, second, "the same request is re-sent");
            assert_eq!(
                first,
                hex("10 00 00 01  01 01 00 00  00 00 00 01  6b"),
                "vector 7 without the prefix"
            );
            fake.send_to(&hex("00 00 00 01  00 00 08 01  00 00 00 01  76"), from)
                .await
                .unwrap();
        };
        let (got, ()) = tokio::join!(c.get(b"k", Mode::Normal), answer);
        assert_eq!(
            got.unwrap(),
            Some((Bytes::from_static(b"v"), Source::Cache))
        );
    }

    #[tokio::test]
    async fn udp_retries_are_bounded() {
        let (fake, mut c) = udp_pair(Duration::from_millis(50), 2).await;
        let result = c.stats().await;
        assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
        // 1 + 2 retries, then nothing more.
        for _ in 0..3 {
            let (datagram, _) = recv(&fake).await;
            assert_eq!(datagram, hex("10 00 00 01  01 06 00 00"));
        }
        let mut buf = [0u8; 64];
        assert!(fake.try_recv_from(&mut buf).is_err(), "a fourth datagram");
    }

    #[tokio::test]
    async fn udp_writes_are_sent_once() {
        let (fake, mut c) = udp_pair(Duration::from_millis(50), 5).await;
        let result = c.set(b"k", b"v", Mode::Normal).await;
        assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
        let (datagram, _) = recv(&fake).await;
        assert_eq!(
            datagram,
            hex("10 00 00 01  01 02 00 00  00 00 00 01  00 00 00 01  6b 76")
        );
        let mut buf = [0u8; 64];
        assert!(fake.try_recv_from(&mut buf).is_err(), "SET was re-sent");
        for (call, code) in [(0, 0x104u16), (1, 0x105), (2, 0x103)] {
            let result = match call {
                0 => c.cas(b"k", b"v", b"w", Mode::Normal).await.map(|_| ()),
                1 => c.incr(b"k", 1, Mode::Normal).await.map(|_| ()),
                _ => c.del(b"k", Mode::Normal).await.map(|_| ()),
            };
            assert!(matches!(result, Err(ClientError::Timeout(_))));
            let (datagram, _) = recv(&fake).await;
            assert_eq!(datagram[4..6], code.to_be_bytes());
            assert!(
                fake.try_recv_from(&mut buf).is_err(),
                "{code:x} was re-sent"
            );
        }
    }

    #[tokio::test]
    async fn udp_skips_late_replies_to_earlier_requests() {
        let (fake, mut c) = udp_pair(Duration::from_secs(5), 0).await;
        let answer = async {
            let (request, from) = recv(&fake).await;
            assert_eq!(request[..4], [0x10, 0, 0, 1]);
            // A stale reply (id 77) first, then the real one.
            fake.send_to(&hex("00 00 00 4d  00 00 08 04"), from)
                .await
                .unwrap();
            fake.send_to(&hex("00 00 00 01  00 00 08 03"), from)
                .await
                .unwrap();
        };
        let (got, ()) = tokio::join!(c.set(b"k", b"v", Mode::Sync), answer);
        got.unwrap();
    }

    #[tokio::test]
    async fn udp_errors_and_raw_calls() {
        let (fake, mut c) = udp_pair(Duration::from_secs(5), 0).await;
        let answer = async {
            let (_, from) = recv(&fake).await;
            // Vector 18: ERR_SEND instead of a too-large GET reply.
            fake.send_to(&hex("00 00 00 01  00 00 08 00  00 00 01 02"), from)
                .await
                .unwrap();
        };
        let (got, ()) = tokio::join!(c.get(b"big", Mode::Normal), answer);
        assert_eq!(server_error(got), "ERR_SEND");
        let answer = async {
            let (request, from) = recv(&fake).await;
            assert_eq!(request, hex("10 00 00 07  01 09 00 00"));
            fake.send_to(&hex("00 00 00 07  00 00 08 00  00 00 01 04"), from)
                .await
                .unwrap();
        };
        let unknown = hex("10 00 00 07  01 09 00 00");
        let (got, ()) = tokio::join!(c.call_raw(&unknown), answer);
        assert_eq!(
            got.unwrap(),
            Response {
                id: 7,
                body: ResponseBody::Error(error::UNKREQ)
            }
        );
        let answer = async {
            let (_, from) = recv(&fake).await;
            fake.send_to(&hex("00 00 00 02  00 00 09 99"), from)
                .await
                .unwrap();
        };
        let (got, ()) = tokio::join!(c.first_key(), answer);
        assert!(matches!(got, Err(ClientError::Protocol(_))), "{got:?}");
    }
}
