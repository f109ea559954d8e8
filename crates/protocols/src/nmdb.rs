//! nmdb codec: see `shared/protocols/nmdb.md`.
//!
//! A message is `u32 version‖id, u16 code, u16 flags, payload` (requests) or
//! `u32 id, u32 code, payload` (replies). Over TCP every message is preceded by a u32 frame
//! length that counts itself; over UDP (and SCTP) a datagram is one bare message.
//!
//! One codec type per side, parameterised by its [`Transport`]: the transport decides the
//! framing and the largest reply that may be sent (§3), so [`NmdbServerCodec::encode_response`]
//! turns a reply that does not fit into REP_ERR ERR_SEND by itself.
//!
//! Malformed requests that nmdb answers are decoded as [`Request::BadVersion`],
//! [`Request::Unknown`] and [`Request::Broken`]; a TCP frame length out of range is a
//! [`Reject`] (close), and a datagram under 8 bytes is a [`Reject`] from `decode_request`
//! (or `None` from [`decode_datagram`]): the UDP server drops it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{be_u16, be_u32, be_u64, ClientCodec, Decoded, Reject, ServerCodec};

/// Request codes (u16 on the wire).
pub mod code {
    pub const GET: u16 = 0x101;
    pub const SET: u16 = 0x102;
    pub const DEL: u16 = 0x103;
    pub const CAS: u16 = 0x104;
    pub const INCR: u16 = 0x105;
    pub const STATS: u16 = 0x106;
    pub const FIRSTKEY: u16 = 0x107;
    pub const NEXTKEY: u16 = 0x108;
}

/// Response codes (32-bit on the wire).
pub mod reply {
    pub const ERR: u32 = 0x800;
    pub const CACHE_HIT: u32 = 0x801;
    pub const CACHE_MISS: u32 = 0x802;
    pub const OK: u32 = 0x803;
    pub const NOTIN: u32 = 0x804;
    pub const NOMATCH: u32 = 0x805;
}

/// Error codes carried by a REP_ERR reply.
pub mod error {
    pub const VER: u32 = 0x101;
    pub const SEND: u32 = 0x102;
    pub const BROKEN: u32 = 0x103;
    pub const UNKREQ: u32 = 0x104;
    pub const MEM: u32 = 0x105;
    pub const DB: u32 = 0x106;
    pub const RO: u32 = 0x107;

    /// The name libnmdb's documentation uses for an error code.
    pub fn name(code: u32) -> &'static str {
        match code {
            VER => "ERR_VER",
            SEND => "ERR_SEND",
            BROKEN => "ERR_BROKEN",
            UNKREQ => "ERR_UNKREQ",
            MEM => "ERR_MEM",
            DB => "ERR_DB",
            RO => "ERR_RO",
            _ => "ERR_UNKNOWN",
        }
    }
}

/// Request flag bits and how they combine (§2.1).
pub mod flags {
    pub const CACHE_ONLY: u16 = 1;
    pub const SYNC: u16 = 2;

    /// Whether the request must touch the cache only.
    pub fn cache_only(flags: u16) -> bool {
        flags & CACHE_ONLY != 0
    }

    /// Whether a write must be durable before the reply: SYNC set and not overridden by
    /// CACHE_ONLY.
    pub fn sync(flags: u16) -> bool {
        flags & SYNC != 0 && !cache_only(flags)
    }
}

pub const FLAG_CACHE_ONLY: u16 = flags::CACHE_ONLY;
pub const FLAG_SYNC: u16 = flags::SYNC;

/// The protocol version this codec speaks.
pub const VERSION: u32 = 1;
/// The low 28 bits of the first request word: the request id.
pub const ID_MASK: u32 = 0x0FFF_FFFF;
/// Largest TCP frame, length prefix included.
pub const MAX_TCP_FRAME: usize = 65_536;
/// Largest reply message in one TCP frame.
pub const MAX_TCP_MESSAGE: usize = MAX_TCP_FRAME - 4;
/// Largest message in one UDP datagram.
pub const MAX_UDP_MESSAGE: usize = 65_507;
/// Largest reply message in one SCTP message.
pub const MAX_SCTP_MESSAGE: usize = 65_532;
/// Smallest datagram that is processed; shorter ones are dropped (§3.2).
pub const MIN_DATAGRAM: usize = 8;
/// Limit on each size field and on their sums (§4).
pub const MAX_SIZE: u64 = 65_536;
/// The number of STATS counters.
pub const STATS_COUNTERS: usize = 23;

/// What a request's flags ask for. CACHE_ONLY overrides SYNC; other bits are ignored.
///
/// Whether the request uses the flag (SYNC on GET means nothing, §2.1) is the service's business:
/// the codec keeps what the wire said so it round-trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    #[default]
    Normal,
    CacheOnly,
    Sync,
}

impl Mode {
    pub fn from_flags(bits: u16) -> Mode {
        if flags::cache_only(bits) {
            Mode::CacheOnly
        } else if flags::sync(bits) {
            Mode::Sync
        } else {
            Mode::Normal
        }
    }

    pub fn flags(self) -> u16 {
        match self {
            Mode::Normal => 0,
            Mode::CacheOnly => flags::CACHE_ONLY,
            Mode::Sync => flags::SYNC,
        }
    }
}

/// A request, or a malformed one that is answered with an error reply.
///
/// Every `id` is the 28-bit request id (the version nibble is not part of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get {
        id: u32,
        mode: Mode,
        key: Bytes,
    },
    Set {
        id: u32,
        mode: Mode,
        key: Bytes,
        value: Bytes,
    },
    Del {
        id: u32,
        mode: Mode,
        key: Bytes,
    },
    Cas {
        id: u32,
        mode: Mode,
        key: Bytes,
        old: Bytes,
        new: Bytes,
    },
    Incr {
        id: u32,
        mode: Mode,
        key: Bytes,
        delta: i64,
    },
    /// STATS; flags and payload are ignored.
    Stats {
        id: u32,
    },
    /// FIRSTKEY; flags and payload are ignored.
    FirstKey {
        id: u32,
    },
    /// NEXTKEY; flags are ignored.
    NextKey {
        id: u32,
        key: Bytes,
    },
    /// Version nibble ≠ 1: ERR_VER (and, over TCP, close after it).
    BadVersion {
        id: u32,
    },
    /// Unknown request code: ERR_UNKREQ.
    Unknown {
        id: u32,
        code: u16,
    },
    /// Failed size checks, or a TCP frame of 9–11 bytes: ERR_BROKEN.
    Broken {
        id: u32,
    },
}

impl Request {
    pub fn id(&self) -> u32 {
        match self {
            Request::Get { id, .. }
            | Request::Set { id, .. }
            | Request::Del { id, .. }
            | Request::Cas { id, .. }
            | Request::Incr { id, .. }
            | Request::Stats { id }
            | Request::FirstKey { id }
            | Request::NextKey { id, .. }
            | Request::BadVersion { id }
            | Request::Unknown { id, .. }
            | Request::Broken { id } => *id,
        }
    }

    /// The mode of a request that carries flags it may use.
    pub fn mode(&self) -> Option<Mode> {
        match self {
            Request::Get { mode, .. }
            | Request::Set { mode, .. }
            | Request::Del { mode, .. }
            | Request::Cas { mode, .. }
            | Request::Incr { mode, .. } => Some(*mode),
            _ => None,
        }
    }

    /// SET, DEL, CAS and INCR: refused in read-only mode (§5.7).
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Request::Set { .. } | Request::Del { .. } | Request::Cas { .. } | Request::Incr { .. }
        )
    }

    /// For a malformed request, the REP_ERR code that answers it.
    pub fn malformed_error(&self) -> Option<u32> {
        match self {
            Request::BadVersion { .. } => Some(error::VER),
            Request::Unknown { .. } => Some(error::UNKREQ),
            Request::Broken { .. } => Some(error::BROKEN),
            _ => None,
        }
    }

    /// Whether the connection is closed after the reply to this request on `transport`:
    /// only ERR_VER over TCP (§4 step 2).
    pub fn closes_after_reply(&self, transport: Transport) -> bool {
        transport == Transport::Tcp && matches!(self, Request::BadVersion { .. })
    }
}

/// Defines [`Stats`], its names and its conversions from one list, so they cannot disagree.
macro_rules! stats_counters {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// The 23 STATS counters, named and in wire order (§5.5).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $field: u64,)*
        }

        impl Stats {
            /// The counter names, in wire order.
            pub const NAMES: [&'static str; STATS_COUNTERS] = [$(stringify!($field)),*];

            pub fn from_counters(counters: &[u64; STATS_COUNTERS]) -> Stats {
                let [$($field),*] = *counters;
                Stats { $($field),* }
            }

            /// The counters in wire order.
            pub fn counters(&self) -> [u64; STATS_COUNTERS] {
                [$(self.$field),*]
            }
        }
    };
}

stats_counters! {
    /// 0: GET with CACHE_ONLY.
    cache_get,
    /// 1: SET with CACHE_ONLY.
    cache_set,
    /// 2: DEL with CACHE_ONLY.
    cache_del,
    /// 3: CAS with CACHE_ONLY.
    cache_cas,
    /// 4: INCR with CACHE_ONLY.
    cache_incr,
    /// 5: GET without CACHE_ONLY (including cache-served ones).
    db_get,
    /// 6: SET without CACHE_ONLY.
    db_set,
    /// 7: DEL without CACHE_ONLY.
    db_del,
    /// 8: CAS without CACHE_ONLY.
    db_cas,
    /// 9: INCR without CACHE_ONLY.
    db_incr,
    /// 10: GETs answered from the cache (CACHE_HIT), any flags.
    cache_hits,
    /// 11: CACHE_ONLY GET misses.
    cache_misses,
    /// 12: normal GETs answered from the store with a value.
    db_hits,
    /// 13: normal GETs that missed the store.
    db_misses,
    /// 14: always 0.
    msg_tipc,
    /// 15: TCP frames with 9 ≤ F ≤ 65 536.
    msg_tcp,
    /// 16: UDP datagrams of 8 bytes or more.
    msg_udp,
    /// 17: SCTP messages of 8 bytes or more.
    msg_sctp,
    /// 18: ERR_VER replies.
    net_version_mismatch,
    /// 19: ERR_BROKEN replies plus dropped short datagrams.
    net_broken_req,
    /// 20: ERR_UNKREQ replies.
    net_unk_req,
    /// 21: FIRSTKEY requests.
    db_firstkey,
    /// 22: NEXTKEY requests.
    db_nextkey,
}

impl Stats {
    /// A counter by its name in [`Stats::NAMES`].
    pub fn get(&self, name: &str) -> Option<u64> {
        let index = Self::NAMES.iter().position(|n| *n == name)?;
        self.counters().get(index).copied()
    }

    /// Parses a STATS OK payload: exactly 23 big-endian u64.
    pub fn from_payload(payload: &[u8]) -> Option<Stats> {
        if payload.len() != STATS_COUNTERS * 8 {
            return None;
        }
        let mut counters = [0u64; STATS_COUNTERS];
        for (i, counter) in counters.iter_mut().enumerate() {
            *counter = be_u64(payload, i * 8)?;
        }
        Some(Stats::from_counters(&counters))
    }

    /// The STATS OK reply body (`u32 184` then the counters once encoded).
    pub fn to_body(&self) -> ResponseBody {
        ResponseBody::stats(&self.counters())
    }
}

/// A reply to the request whose 28-bit id is `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u32,
    pub body: ResponseBody,
}

/// A reply's code and payload. Long OK replies (store-served GET, INCR, FIRSTKEY/NEXTKEY,
/// STATS) all have the same shape on the wire, so they are one variant, [`ResponseBody::Value`];
/// [`ResponseBody::incr`], [`ResponseBody::stats`], [`ResponseBody::as_incr`] and [`ResponseBody::as_stats`]
/// build and read the typed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// Mini REP_OK (SET, DEL, CAS): 8 bytes.
    Ok,
    /// Mini REP_NOTIN.
    NotIn,
    /// Mini REP_NOMATCH.
    NoMatch,
    /// Mini REP_CACHE_MISS.
    CacheMiss,
    /// REP_ERR with an error code from [`error`]: 12 bytes.
    Error(u32),
    /// Long REP_CACHE_HIT: a value served from the cache.
    CacheHit(Bytes),
    /// Long REP_OK: `u32 n`, `n` bytes.
    Value(Bytes),
}

impl ResponseBody {
    /// The INCR reply: `u32 8, i64 new value`.
    pub fn incr(value: i64) -> ResponseBody {
        ResponseBody::Value(Bytes::copy_from_slice(&value.to_be_bytes()))
    }

    /// The STATS reply: 23 big-endian u64 counters.
    pub fn stats(counters: &[u64; STATS_COUNTERS]) -> ResponseBody {
        let mut out = BytesMut::with_capacity(STATS_COUNTERS * 8);
        for c in counters {
            out.put_u64(*c);
        }
        ResponseBody::Value(out.freeze())
    }

    /// Reads a long OK as an INCR result; libnmdb reads it only when n = 8.
    pub fn as_incr(&self) -> Option<i64> {
        match self {
            ResponseBody::Value(v) if v.len() == 8 => be_u64(v, 0).map(|n| n as i64),
            _ => None,
        }
    }

    /// Reads a long OK as a STATS result.
    pub fn as_stats(&self) -> Option<Stats> {
        match self {
            ResponseBody::Value(v) => Stats::from_payload(v),
            _ => None,
        }
    }

    /// The wire code of this reply.
    pub fn code(&self) -> u32 {
        match self {
            ResponseBody::Ok | ResponseBody::Value(_) => reply::OK,
            ResponseBody::NotIn => reply::NOTIN,
            ResponseBody::NoMatch => reply::NOMATCH,
            ResponseBody::CacheMiss => reply::CACHE_MISS,
            ResponseBody::Error(_) => reply::ERR,
            ResponseBody::CacheHit(_) => reply::CACHE_HIT,
        }
    }

    /// The length of the bare message (no TCP prefix).
    pub fn message_len(&self) -> usize {
        match self {
            ResponseBody::Ok
            | ResponseBody::NotIn
            | ResponseBody::NoMatch
            | ResponseBody::CacheMiss => 8,
            ResponseBody::Error(_) => 12,
            ResponseBody::CacheHit(v) | ResponseBody::Value(v) => v.len().saturating_add(12),
        }
    }
}

/// `len` bytes of `payload` from `from`, or `None` when they are not all there.
fn field(payload: &[u8], from: u64, len: u64) -> Option<Bytes> {
    let start = usize::try_from(from).ok()?;
    let end = usize::try_from(from.checked_add(len)?).ok()?;
    payload.get(start..end).map(Bytes::copy_from_slice)
}

// The size checks of §4. Sizes and sums are computed in 64 bits, so nothing can overflow, and
// every field is then sliced with `get`. `None` = ERR_BROKEN.

fn size(payload: &[u8], at: usize) -> Option<u64> {
    be_u32(payload, at).map(u64::from)
}

/// GET, DEL, NEXTKEY: `psize ≥ 4` and `psize ≥ 4 + ksize`.
fn parse_key(payload: &[u8]) -> Option<Bytes> {
    let psize = payload.len() as u64;
    let ksize = size(payload, 0)?;
    (psize >= 4 + ksize).then_some(())?;
    field(payload, 4, ksize)
}

/// SET: `psize ≥ 8`, each size and their sum ≤ 65 536, `psize ≥ 8 + ksize + vsize`.
fn parse_set(payload: &[u8]) -> Option<(Bytes, Bytes)> {
    let psize = payload.len() as u64;
    let (ksize, vsize) = (size(payload, 0)?, size(payload, 4)?);
    let valid = ksize <= MAX_SIZE
        && vsize <= MAX_SIZE
        && ksize + vsize <= MAX_SIZE
        && psize >= 8 + ksize + vsize;
    valid.then_some(())?;
    Some((field(payload, 8, ksize)?, field(payload, 8 + ksize, vsize)?))
}

/// CAS: `psize ≥ 12`, each size and their sum ≤ 65 536, `psize ≥ 12 + the sizes`.
fn parse_cas(payload: &[u8]) -> Option<(Bytes, Bytes, Bytes)> {
    let psize = payload.len() as u64;
    let (ksize, osize, nsize) = (size(payload, 0)?, size(payload, 4)?, size(payload, 8)?);
    let valid = ksize <= MAX_SIZE
        && osize <= MAX_SIZE
        && nsize <= MAX_SIZE
        && ksize + osize + nsize <= MAX_SIZE
        && psize >= 12 + ksize + osize + nsize;
    valid.then_some(())?;
    Some((
        field(payload, 12, ksize)?,
        field(payload, 12 + ksize, osize)?,
        field(payload, 12 + ksize + osize, nsize)?,
    ))
}

/// INCR: `psize ≥ 4`, `ksize + 8 ≤ 65 536`, `psize ≥ 4 + ksize + 8`.
fn parse_incr(payload: &[u8]) -> Option<(Bytes, i64)> {
    let psize = payload.len() as u64;
    let ksize = size(payload, 0)?;
    (ksize + 8 <= MAX_SIZE && psize >= 4 + ksize + 8).then_some(())?;
    let delta = be_u64(payload, usize::try_from(4 + ksize).ok()?)? as i64;
    Some((field(payload, 4, ksize)?, delta))
}

/// Parses one bare request message (no TCP prefix), processing steps 2–4 of §4.
///
/// A message shorter than the 8-byte header (a TCP frame of 9–11 bytes) is [`Request::Broken`]
/// with the id of its first 4 bytes (0 if even those are missing).
pub fn decode_message(msg: &[u8]) -> Request {
    let word = be_u32(msg, 0).unwrap_or(0);
    let id = word & ID_MASK;
    let broken = Request::Broken { id };
    let (Some(request_code), Some(bits)) = (be_u16(msg, 4), be_u16(msg, 6)) else {
        return broken;
    };
    if word >> 28 != VERSION {
        return Request::BadVersion { id };
    }
    let mode = Mode::from_flags(bits);
    let payload = msg.get(8..).unwrap_or_default();
    let parsed = match request_code {
        code::GET | code::DEL | code::NEXTKEY => parse_key(payload).map(|key| match request_code {
            code::GET => Request::Get { id, mode, key },
            code::DEL => Request::Del { id, mode, key },
            _ => Request::NextKey { id, key },
        }),
        code::SET => parse_set(payload).map(|(key, value)| Request::Set {
            id,
            mode,
            key,
            value,
        }),
        code::CAS => parse_cas(payload).map(|(key, old, new)| Request::Cas {
            id,
            mode,
            key,
            old,
            new,
        }),
        code::INCR => parse_incr(payload).map(|(key, delta)| Request::Incr {
            id,
            mode,
            key,
            delta,
        }),
        code::STATS => Some(Request::Stats { id }),
        code::FIRSTKEY => Some(Request::FirstKey { id }),
        other => Some(Request::Unknown { id, code: other }),
    };
    parsed.unwrap_or(broken)
}

/// Decodes one UDP or SCTP datagram: `None` = drop it (shorter than 8 bytes, §3.2).
pub fn decode_datagram(datagram: &[u8]) -> Option<Request> {
    (datagram.len() >= MIN_DATAGRAM).then(|| decode_message(datagram))
}

/// Appends a request message (no TCP prefix).
pub fn encode_request(request: &Request, out: &mut BytesMut) {
    let head = |out: &mut BytesMut, id: u32, request_code: u16, bits: u16| {
        out.put_u32((VERSION << 28) | (id & ID_MASK));
        out.put_u16(request_code);
        out.put_u16(bits);
    };
    match request {
        Request::Get { id, mode, key } => {
            head(out, *id, code::GET, mode.flags());
            out.put_u32(key.len() as u32);
            out.put_slice(key);
        }
        Request::Del { id, mode, key } => {
            head(out, *id, code::DEL, mode.flags());
            out.put_u32(key.len() as u32);
            out.put_slice(key);
        }
        Request::NextKey { id, key } => {
            head(out, *id, code::NEXTKEY, 0);
            out.put_u32(key.len() as u32);
            out.put_slice(key);
        }
        Request::Set {
            id,
            mode,
            key,
            value,
        } => {
            head(out, *id, code::SET, mode.flags());
            out.put_u32(key.len() as u32);
            out.put_u32(value.len() as u32);
            out.put_slice(key);
            out.put_slice(value);
        }
        Request::Cas {
            id,
            mode,
            key,
            old,
            new,
        } => {
            head(out, *id, code::CAS, mode.flags());
            out.put_u32(key.len() as u32);
            out.put_u32(old.len() as u32);
            out.put_u32(new.len() as u32);
            out.put_slice(key);
            out.put_slice(old);
            out.put_slice(new);
        }
        Request::Incr {
            id,
            mode,
            key,
            delta,
        } => {
            head(out, *id, code::INCR, mode.flags());
            out.put_u32(key.len() as u32);
            out.put_slice(key);
            out.put_i64(*delta);
        }
        Request::Stats { id } => head(out, *id, code::STATS, 0),
        Request::FirstKey { id } => head(out, *id, code::FIRSTKEY, 0),
        Request::Unknown { id, code } => head(out, *id, *code, 0),
        // These stand for malformed input; their nearest wire forms are a wrong version and a
        // GET too short to hold its key size.
        Request::BadVersion { id } => {
            out.put_u32((2 << 28) | (id & ID_MASK));
            out.put_u16(code::GET);
            out.put_u16(0);
        }
        Request::Broken { id } => head(out, *id, code::GET, 0),
    }
}

/// Appends a reply message (no TCP prefix). A reply longer than `max_message` becomes
/// REP_ERR ERR_SEND, 12 bytes (the transport cannot carry it, §3).
pub fn encode_reply(reply: &Response, max_message: usize, out: &mut BytesMut) {
    let body = if reply.body.message_len() > max_message {
        &ResponseBody::Error(error::SEND)
    } else {
        &reply.body
    };
    // The id as given: the server only ever answers with a request's 28-bit id.
    out.put_u32(reply.id);
    out.put_u32(body.code());
    match body {
        ResponseBody::Ok
        | ResponseBody::NotIn
        | ResponseBody::NoMatch
        | ResponseBody::CacheMiss => {}
        ResponseBody::Error(code) => out.put_u32(*code),
        ResponseBody::CacheHit(v) | ResponseBody::Value(v) => {
            out.put_u32(v.len() as u32);
            out.put_slice(v);
        }
    }
}

/// Parses one bare reply message (the whole of `msg`). The shape follows from the code and the
/// length: 8 bytes = mini, REP_ERR = 12 bytes, OK/CACHE_HIT with 12 + n bytes = long.
pub fn decode_reply(msg: &[u8]) -> Result<Response, Reject> {
    let (Some(id), Some(reply_code)) = (be_u32(msg, 0), be_u32(msg, 4)) else {
        return Err(Reject::new("nmdb reply shorter than 8 bytes"));
    };
    let body = match (reply_code, msg.len()) {
        (reply::OK, 8) => ResponseBody::Ok,
        (reply::NOTIN, 8) => ResponseBody::NotIn,
        (reply::NOMATCH, 8) => ResponseBody::NoMatch,
        (reply::CACHE_MISS, 8) => ResponseBody::CacheMiss,
        (reply::ERR, 12) => ResponseBody::Error(be_u32(msg, 8).unwrap_or_default()),
        (reply::OK | reply::CACHE_HIT, len) if len >= 12 => {
            let n = be_u32(msg, 8).and_then(|n| usize::try_from(n).ok());
            let value = match msg.get(12..) {
                Some(value) if Some(value.len()) == n => Bytes::copy_from_slice(value),
                _ => {
                    return Err(Reject::new(
                        "nmdb reply length disagrees with its payload size",
                    ))
                }
            };
            if reply_code == reply::OK {
                ResponseBody::Value(value)
            } else {
                ResponseBody::CacheHit(value)
            }
        }
        _ => return Err(Reject::new("unknown nmdb reply shape")),
    };
    Ok(Response { id, body })
}

/// Which transport a codec frames for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// u32 length prefix that counts itself.
    #[default]
    Tcp,
    /// One bare message per datagram.
    Udp,
    /// One bare message per SCTP message.
    Sctp,
}

impl Transport {
    /// Largest reply message the transport carries; a longer one is replaced by ERR_SEND.
    pub fn max_message(self) -> usize {
        match self {
            Transport::Tcp => MAX_TCP_MESSAGE,
            Transport::Udp => MAX_UDP_MESSAGE,
            Transport::Sctp => MAX_SCTP_MESSAGE,
        }
    }

    pub fn is_datagram(self) -> bool {
        self != Transport::Tcp
    }
}

/// Reads a TCP frame: `Ok(None)` = incomplete; `Err` = close. `min` is the smallest valid `F`.
/// `F` is checked before anything else, so a bad length closes at once (R2).
fn tcp_frame(buf: &[u8], min: usize) -> Result<Option<(&[u8], usize)>, Reject> {
    let Some(frame_len) = be_u32(buf, 0) else {
        return Ok(None);
    };
    let frame_len = usize::try_from(frame_len).unwrap_or(usize::MAX);
    if frame_len < min || frame_len > MAX_TCP_FRAME {
        return Err(Reject::new("nmdb TCP frame length out of range"));
    }
    Ok(buf.get(4..frame_len).map(|msg| (msg, frame_len)))
}

fn prefixed(out: &mut BytesMut, write: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    write(out);
    let frame_len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&frame_len.to_be_bytes());
}

/// The server side of a transport: decodes requests, encodes replies (with ERR_SEND for a
/// reply the transport cannot carry). The nmdb limits are all fixed by the wire, so the
/// transport is the only setting; `Default` is TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NmdbServerCodec {
    pub transport: Transport,
}

impl NmdbServerCodec {
    pub const fn new(transport: Transport) -> Self {
        NmdbServerCodec { transport }
    }

    pub const fn tcp() -> Self {
        Self::new(Transport::Tcp)
    }

    pub const fn udp() -> Self {
        Self::new(Transport::Udp)
    }

    pub const fn sctp() -> Self {
        Self::new(Transport::Sctp)
    }
}

impl ServerCodec for NmdbServerCodec {
    type Request = Request;
    type Response = Response;

    /// TCP: a frame with `F ≤ 8` or `F > 65 536` is a `Reject` (close); 9–11 decodes as
    /// [`Request::Broken`]. Datagram: `buf` is one whole datagram; under 8 bytes it is a
    /// `Reject`, which for a datagram means drop (see [`decode_datagram`]).
    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<Request>, Reject> {
        match self.transport {
            Transport::Tcp => Ok(match tcp_frame(buf, 9)? {
                Some((msg, used)) => Decoded::Frame(decode_message(msg), used),
                None => Decoded::Incomplete,
            }),
            Transport::Udp | Transport::Sctp => match decode_datagram(buf) {
                Some(request) => Ok(Decoded::Frame(request, buf.len())),
                None => Err(Reject::new("nmdb datagram shorter than 8 bytes")),
            },
        }
    }

    fn encode_response(&self, reply: &Response, out: &mut BytesMut) {
        let max = self.transport.max_message();
        match self.transport {
            Transport::Tcp => prefixed(out, |out| encode_reply(reply, max, out)),
            Transport::Udp | Transport::Sctp => encode_reply(reply, max, out),
        }
    }
}

/// The client side of a transport: encodes requests, decodes replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NmdbClientCodec {
    pub transport: Transport,
}

impl NmdbClientCodec {
    pub const fn new(transport: Transport) -> Self {
        NmdbClientCodec { transport }
    }

    pub const fn tcp() -> Self {
        Self::new(Transport::Tcp)
    }

    pub const fn udp() -> Self {
        Self::new(Transport::Udp)
    }

    pub const fn sctp() -> Self {
        Self::new(Transport::Sctp)
    }
}

impl ClientCodec for NmdbClientCodec {
    type Request = Request;
    type Response = Response;

    fn encode_request(&self, request: &Request, out: &mut BytesMut) {
        match self.transport {
            Transport::Tcp => prefixed(out, |out| encode_request(request, out)),
            Transport::Udp | Transport::Sctp => encode_request(request, out),
        }
    }

    /// TCP: reply frames are 12–65 536 bytes, anything else is a `Reject`. Datagram: `buf` is
    /// one whole datagram.
    fn decode_response(&self, buf: &[u8]) -> Result<Decoded<Response>, Reject> {
        match self.transport {
            Transport::Tcp => match tcp_frame(buf, 12)? {
                Some((msg, used)) => Ok(Decoded::Frame(decode_reply(msg)?, used)),
                None => Ok(Decoded::Incomplete),
            },
            Transport::Udp | Transport::Sctp => Ok(Decoded::Frame(decode_reply(buf)?, buf.len())),
        }
    }
}

/// nmdb's INCR on a stored value (§5.3): `None` when the value is not NUL-terminated (NOMATCH);
/// otherwise the new stored bytes and the new number.
pub fn incr_value(old: &[u8], increment: i64) -> Option<(Vec<u8>, i64)> {
    if old.last() != Some(&0) {
        return None;
    }
    let end = old.iter().position(|b| *b == 0).unwrap_or(old.len());
    let new = strtoll(old.get(..end).unwrap_or_default()).wrapping_add(increment);
    // printf("%23lld") then the NUL: 24 bytes, since an i64 has at most 20 characters.
    let formatted = format!("{new:>23}\0");
    let mut stored = old.to_vec();
    if stored.len() <= formatted.len() {
        stored = formatted.into_bytes();
    } else if let Some(head) = stored.get_mut(..formatted.len()) {
        // A longer value keeps its length: only the first 24 bytes are replaced.
        head.copy_from_slice(formatted.as_bytes());
    }
    Some((stored, new))
}

/// C `strtoll(text, NULL, 10)`: white space, a sign, digits; saturating; no digits → 0.
pub fn strtoll(text: &[u8]) -> i64 {
    let mut rest = text;
    while let [b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r', tail @ ..] = rest {
        rest = tail;
    }
    let negative = match rest {
        [b'-', tail @ ..] => {
            rest = tail;
            true
        }
        [b'+', tail @ ..] => {
            rest = tail;
            false
        }
        _ => false,
    };
    // Accumulate negatively so i64::MIN is reachable; saturate like strtoll.
    let mut value: i64 = 0;
    for digit in rest.iter().take_while(|b| b.is_ascii_digit()) {
        let d = i64::from(digit - b'0');
        match value.checked_mul(10).and_then(|v| v.checked_sub(d)) {
            Some(v) => value = v,
            None => return if negative { i64::MIN } else { i64::MAX },
        }
    }
    if negative {
        value
    } else {
        value.checked_neg().unwrap_or(i64::MAX)
    }
}

/// libnmdb's client-side shard checksum (§10), bug included: it advances one byte per 16-bit
/// little-endian word.
pub fn checksum(key: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    let mut n = key.len();
    while n > 1 {
        let lo = u64::from(key.get(i).copied().unwrap_or(0));
        let hi = u64::from(key.get(i + 1).copied().unwrap_or(0));
        sum = sum.wrapping_add(lo + 256 * hi);
        i += 1;
        n -= 2;
    }
    if n == 1 {
        sum = sum.wrapping_add(u64::from(key.get(i).copied().unwrap_or(0)));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u32)
}

/// libnmdb's choice of server for `key` among `servers` (already sorted as §10 says).
pub fn server_index(key: &[u8], servers: usize) -> Option<usize> {
    (servers > 0).then(|| checksum(key) as usize % servers)
}

/// Fuzz body: decode arbitrary bytes as requests over every transport; every decoded request
/// must encode and decode back to itself.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_server(data: &[u8]) {
    for transport in [Transport::Tcp, Transport::Udp, Transport::Sctp] {
        let server = NmdbServerCodec::new(transport);
        let client = NmdbClientCodec::new(transport);
        let mut rest = data;
        while let Ok(Decoded::Frame(request, used)) = server.decode_request(rest) {
            assert!(used > 0 && used <= rest.len(), "consumed {used}");
            if transport.is_datagram() {
                assert_eq!(decode_datagram(rest).as_ref(), Some(&request));
            }
            let mut encoded = BytesMut::new();
            client.encode_request(&request, &mut encoded);
            let again = server.decode_request(&encoded);
            assert_eq!(
                again,
                Ok(Decoded::Frame(request, encoded.len())),
                "request round trip"
            );
            rest = rest.get(used..).unwrap_or_default();
            if transport.is_datagram() || rest.is_empty() {
                break;
            }
        }
    }
}

/// Fuzz body: decode arbitrary bytes as replies; every decoded reply must round-trip.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_client(data: &[u8]) {
    for transport in [Transport::Tcp, Transport::Udp, Transport::Sctp] {
        let server = NmdbServerCodec::new(transport);
        let client = NmdbClientCodec::new(transport);
        let mut rest = data;
        while let Ok(Decoded::Frame(reply, used)) = client.decode_response(rest) {
            assert!(used > 0 && used <= rest.len(), "consumed {used}");
            let mut encoded = BytesMut::new();
            server.encode_response(&reply, &mut encoded);
            let expected = if reply.body.message_len() > transport.max_message() {
                Response {
                    id: reply.id,
                    body: ResponseBody::Error(error::SEND),
                }
            } else {
                reply
            };
            assert_eq!(
                client.decode_response(&encoded),
                Ok(Decoded::Frame(expected, encoded.len())),
                "reply round trip"
            );
            rest = rest.get(used..).unwrap_or_default();
            if transport.is_datagram() || rest.is_empty() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests;
