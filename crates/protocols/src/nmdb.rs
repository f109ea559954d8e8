//! nmdb codec: see `shared/protocols/nmdb.md`.
//!
//! A message is `u32 version‖id, u16 code, u16 flags, payload` (requests) or
//! `u32 id, u32 code, payload` (replies). Over TCP every message is preceded by a u32 frame
//! length that counts itself; over UDP (and SCTP) a datagram is one bare message.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{be_u16, be_u32, ClientCodec, Decoded, Reject, ServerCodec};

/// Request codes.
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

/// Reply codes (32-bit on the wire).
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

pub const FLAG_CACHE_ONLY: u16 = 1;
pub const FLAG_SYNC: u16 = 2;

/// The protocol version this codec speaks.
pub const VERSION: u32 = 1;
/// Largest TCP frame, length prefix included.
pub const MAX_TCP_FRAME: usize = 65_536;
/// Largest message in one UDP datagram.
pub const MAX_UDP_MESSAGE: usize = 65_507;
/// Largest message in one SCTP message.
pub const MAX_SCTP_MESSAGE: usize = 65_532;
/// Limit on each size field and on their sums (§4).
const MAX_SIZE: u64 = 65_536;
/// The number of STATS counters.
pub const STATS_COUNTERS: usize = 23;

/// What a request's flags ask for. CACHE_ONLY overrides SYNC; other bits are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Normal,
    CacheOnly,
    Sync,
}

impl Mode {
    pub fn from_flags(flags: u16) -> Mode {
        if flags & FLAG_CACHE_ONLY != 0 {
            Mode::CacheOnly
        } else if flags & FLAG_SYNC != 0 {
            Mode::Sync
        } else {
            Mode::Normal
        }
    }

    pub fn flags(self) -> u16 {
        match self {
            Mode::Normal => 0,
            Mode::CacheOnly => FLAG_CACHE_ONLY,
            Mode::Sync => FLAG_SYNC,
        }
    }
}

/// A request, or a malformed one that is answered with an error reply.
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
    Stats {
        id: u32,
    },
    FirstKey {
        id: u32,
    },
    NextKey {
        id: u32,
        key: Bytes,
    },
    /// Version nibble ≠ 1: ERR_VER (and, over TCP, close).
    BadVersion {
        id: u32,
    },
    /// Unknown request code: ERR_UNKREQ.
    Unknown {
        id: u32,
        code: u16,
    },
    /// Failed size checks or a truncated message: ERR_BROKEN.
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
}

/// A reply. An OK with a payload (store-served GET, INCR, FIRSTKEY/NEXTKEY, STATS) is
/// [`ReplyBody::Value`]; see [`ReplyBody::incr`] and [`ReplyBody::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request's 28-bit id.
    pub id: u32,
    pub body: ReplyBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// Mini OK (SET, DEL, CAS).
    Ok,
    NotIn,
    NoMatch,
    CacheMiss,
    /// REP_ERR with an error code from [`error`].
    Error(u32),
    /// A value served from the cache.
    CacheHit(Bytes),
    /// REP_OK with a payload.
    Value(Bytes),
}

impl ReplyBody {
    /// The INCR reply: `u32 8, i64 new value`.
    pub fn incr(value: i64) -> ReplyBody {
        ReplyBody::Value(Bytes::copy_from_slice(&value.to_be_bytes()))
    }

    /// The STATS reply: 23 big-endian u64 counters.
    pub fn stats(counters: &[u64; STATS_COUNTERS]) -> ReplyBody {
        let mut out = BytesMut::with_capacity(STATS_COUNTERS * 8);
        for c in counters {
            out.put_u64(*c);
        }
        ReplyBody::Value(out.freeze())
    }

    fn message_len(&self) -> usize {
        match self {
            ReplyBody::Ok | ReplyBody::NotIn | ReplyBody::NoMatch | ReplyBody::CacheMiss => 8,
            ReplyBody::Error(_) => 12,
            ReplyBody::CacheHit(v) | ReplyBody::Value(v) => 12 + v.len(),
        }
    }
}

/// Parses one bare message (no TCP prefix) of at least 5 bytes.
pub fn parse_message(msg: &[u8]) -> Request {
    let word = be_u32(msg, 0).unwrap_or(0);
    let id = word & 0x0FFF_FFFF;
    let (Some(request_code), Some(flags)) = (be_u16(msg, 4), be_u16(msg, 6)) else {
        return Request::Broken { id };
    };
    if word >> 28 != VERSION {
        return Request::BadVersion { id };
    }
    let mode = Mode::from_flags(flags);
    let payload = msg.get(8..).unwrap_or_default();
    let psize = payload.len() as u64;
    let size = |at: usize| be_u32(payload, at).map(u64::from);
    // Every size check in 64 bits, so no sum can overflow; `take` then slices what was checked.
    let take = |from: u64, len: u64| {
        Bytes::copy_from_slice(&payload[from as usize..(from + len) as usize])
    };
    let broken = Request::Broken { id };
    match request_code {
        code::GET | code::DEL | code::NEXTKEY => {
            let Some(ksize) = size(0) else { return broken };
            if psize < 4 + ksize {
                return broken;
            }
            let key = take(4, ksize);
            match request_code {
                code::GET => Request::Get { id, mode, key },
                code::DEL => Request::Del { id, mode, key },
                _ => Request::NextKey { id, key },
            }
        }
        code::SET => {
            let (Some(ksize), Some(vsize)) = (size(0), size(4)) else {
                return broken;
            };
            if ksize > MAX_SIZE
                || vsize > MAX_SIZE
                || ksize + vsize > MAX_SIZE
                || psize < 8 + ksize + vsize
            {
                return broken;
            }
            Request::Set {
                id,
                mode,
                key: take(8, ksize),
                value: take(8 + ksize, vsize),
            }
        }
        code::CAS => {
            let (Some(ksize), Some(osize), Some(nsize)) = (size(0), size(4), size(8)) else {
                return broken;
            };
            if ksize > MAX_SIZE
                || osize > MAX_SIZE
                || nsize > MAX_SIZE
                || ksize + osize + nsize > MAX_SIZE
                || psize < 12 + ksize + osize + nsize
            {
                return broken;
            }
            Request::Cas {
                id,
                mode,
                key: take(12, ksize),
                old: take(12 + ksize, osize),
                new: take(12 + ksize + osize, nsize),
            }
        }
        code::INCR => {
            let Some(ksize) = size(0) else { return broken };
            if ksize + 8 > MAX_SIZE || psize < 4 + ksize + 8 {
                return broken;
            }
            let mut delta = [0u8; 8];
            delta.copy_from_slice(&payload[(4 + ksize) as usize..(12 + ksize) as usize]);
            Request::Incr {
                id,
                mode,
                key: take(4, ksize),
                delta: i64::from_be_bytes(delta),
            }
        }
        code::STATS => Request::Stats { id },
        code::FIRSTKEY => Request::FirstKey { id },
        other => Request::Unknown { id, code: other },
    }
}

/// Appends a request message (no TCP prefix).
pub fn compose_request(request: &Request, out: &mut BytesMut) {
    let head = |out: &mut BytesMut, id: u32, request_code: u16, flags: u16| {
        out.put_u32((VERSION << 28) | (id & 0x0FFF_FFFF));
        out.put_u16(request_code);
        out.put_u16(flags);
    };
    match request {
        Request::Get { id, mode, key } | Request::Del { id, mode, key } => {
            let c = if matches!(request, Request::Get { .. }) {
                code::GET
            } else {
                code::DEL
            };
            head(out, *id, c, mode.flags());
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
            out.put_u32((2 << 28) | (id & 0x0FFF_FFFF));
            out.put_u16(code::GET);
            out.put_u16(0);
        }
        Request::Broken { id } => head(out, *id, code::GET, 0),
    }
}

/// Appends a reply message (no TCP prefix). A reply longer than `max_message` becomes
/// REP_ERR ERR_SEND (the transport cannot carry it).
pub fn compose_reply(reply: &Reply, max_message: usize, out: &mut BytesMut) {
    let body = if reply.body.message_len() > max_message {
        &ReplyBody::Error(error::SEND)
    } else {
        &reply.body
    };
    // The id as given: the server only ever answers with a request's 28-bit id.
    out.put_u32(reply.id);
    match body {
        ReplyBody::Ok => out.put_u32(reply::OK),
        ReplyBody::NotIn => out.put_u32(reply::NOTIN),
        ReplyBody::NoMatch => out.put_u32(reply::NOMATCH),
        ReplyBody::CacheMiss => out.put_u32(reply::CACHE_MISS),
        ReplyBody::Error(code) => {
            out.put_u32(reply::ERR);
            out.put_u32(*code);
        }
        ReplyBody::CacheHit(v) | ReplyBody::Value(v) => {
            out.put_u32(if matches!(body, ReplyBody::CacheHit(_)) {
                reply::CACHE_HIT
            } else {
                reply::OK
            });
            out.put_u32(v.len() as u32);
            out.put_slice(v);
        }
    }
}

/// Parses one bare reply message (the whole of `msg`).
pub fn parse_reply(msg: &[u8]) -> Result<Reply, Reject> {
    let (Some(id), Some(reply_code)) = (be_u32(msg, 0), be_u32(msg, 4)) else {
        return Err(Reject::new("nmdb reply shorter than 8 bytes"));
    };
    let body = match (reply_code, msg.len()) {
        (reply::OK, 8) => ReplyBody::Ok,
        (reply::NOTIN, 8) => ReplyBody::NotIn,
        (reply::NOMATCH, 8) => ReplyBody::NoMatch,
        (reply::CACHE_MISS, 8) => ReplyBody::CacheMiss,
        (reply::ERR, 12) => ReplyBody::Error(be_u32(msg, 8).unwrap_or(0)),
        (reply::OK | reply::CACHE_HIT, len) if len >= 12 => {
            let n = be_u32(msg, 8).unwrap_or(0) as usize;
            if n != len - 12 {
                return Err(Reject::new(
                    "nmdb reply length disagrees with its payload size",
                ));
            }
            let value = Bytes::copy_from_slice(&msg[12..]);
            if reply_code == reply::OK {
                ReplyBody::Value(value)
            } else {
                ReplyBody::CacheHit(value)
            }
        }
        _ => return Err(Reject::new("unknown nmdb reply shape")),
    };
    Ok(Reply { id, body })
}

/// Which transport a codec frames for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    Sctp,
}

impl Transport {
    /// Largest reply message the transport carries.
    pub fn max_message(self) -> usize {
        match self {
            Transport::Tcp => MAX_TCP_FRAME - 4,
            Transport::Udp => MAX_UDP_MESSAGE,
            Transport::Sctp => MAX_SCTP_MESSAGE,
        }
    }
}

/// Reads a TCP frame: `Ok(None)` = incomplete; `Err` = close (F ≤ 8 or F > 65 536).
fn tcp_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, Reject> {
    let Some(frame_len) = be_u32(buf, 0) else {
        return Ok(None);
    };
    let frame_len = frame_len as usize;
    if frame_len <= 8 || frame_len > MAX_TCP_FRAME {
        return Err(Reject::new("nmdb TCP frame length out of range"));
    }
    match buf.get(4..frame_len) {
        Some(msg) => Ok(Some((msg, frame_len))),
        None => Ok(None),
    }
}

fn prefixed(out: &mut BytesMut, write: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    write(out);
    let frame_len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&frame_len.to_be_bytes());
}

/// The server side of a transport.
#[derive(Debug, Clone, Copy)]
pub struct NmdbServerCodec {
    pub transport: Transport,
}

impl ServerCodec for NmdbServerCodec {
    type Request = Request;
    type Response = Reply;

    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<Request>, Reject> {
        match self.transport {
            Transport::Tcp => Ok(match tcp_frame(buf)? {
                // 9 ≤ F ≤ 11: too short for a header; parse_message answers ERR_BROKEN.
                Some((msg, used)) => Decoded::Frame(parse_message(msg), used),
                None => Decoded::Incomplete,
            }),
            Transport::Udp | Transport::Sctp => {
                if buf.len() < 8 {
                    return Err(Reject::new("nmdb datagram shorter than 8 bytes"));
                }
                Ok(Decoded::Frame(parse_message(buf), buf.len()))
            }
        }
    }

    fn encode_response(&self, reply: &Reply, out: &mut BytesMut) {
        let max = self.transport.max_message();
        match self.transport {
            Transport::Tcp => prefixed(out, |out| compose_reply(reply, max, out)),
            Transport::Udp | Transport::Sctp => compose_reply(reply, max, out),
        }
    }
}

/// The client side of a transport.
#[derive(Debug, Clone, Copy)]
pub struct NmdbClientCodec {
    pub transport: Transport,
}

impl ClientCodec for NmdbClientCodec {
    type Request = Request;
    type Response = Reply;

    fn encode_request(&self, request: &Request, out: &mut BytesMut) {
        match self.transport {
            Transport::Tcp => prefixed(out, |out| compose_request(request, out)),
            Transport::Udp | Transport::Sctp => compose_request(request, out),
        }
    }

    fn decode_response(&self, buf: &[u8]) -> Result<Decoded<Reply>, Reject> {
        match self.transport {
            Transport::Tcp => {
                let Some(frame_len) = be_u32(buf, 0) else {
                    return Ok(Decoded::Incomplete);
                };
                let frame_len = frame_len as usize;
                if !(12..=MAX_TCP_FRAME).contains(&frame_len) {
                    return Err(Reject::new("nmdb TCP reply frame length out of range"));
                }
                match buf.get(4..frame_len) {
                    Some(msg) => Ok(Decoded::Frame(parse_reply(msg)?, frame_len)),
                    None => Ok(Decoded::Incomplete),
                }
            }
            Transport::Udp | Transport::Sctp => Ok(Decoded::Frame(parse_reply(buf)?, buf.len())),
        }
    }
}

/// nmdb's INCR on a stored value (§5.3): `None` when the value is not a NUL-terminated
/// number (NOMATCH); otherwise the new stored bytes and the new number.
pub fn incr_value(old: &[u8], increment: i64) -> Option<(Vec<u8>, i64)> {
    if old.last() != Some(&0) {
        return None;
    }
    let text = &old[..old.iter().position(|b| *b == 0).unwrap_or(old.len())];
    let new = strtoll(text).wrapping_add(increment);
    let mut stored = format!("{new:>23}").into_bytes();
    stored.push(0);
    if old.len() > stored.len() {
        // A longer value keeps its length: only the first 24 bytes are replaced.
        let mut longer = old.to_vec();
        longer[..stored.len()].copy_from_slice(&stored);
        stored = longer;
    }
    Some((stored, new))
}

/// C `strtoll(text, NULL, 10)`: white space, a sign, digits; saturating; no digits → 0.
fn strtoll(text: &[u8]) -> i64 {
    let mut i = 0;
    while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
        i += 1;
    }
    let negative = match text.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    // Accumulate negatively so i64::MIN is reachable, saturating like strtoll.
    let mut value: i64 = 0;
    let mut saturated = false;
    while let Some(digit) = text.get(i).filter(|b| b.is_ascii_digit()) {
        let d = i64::from(digit - b'0');
        match value.checked_mul(10).and_then(|v| v.checked_sub(d)) {
            Some(v) if !saturated => value = v,
            _ => saturated = true,
        }
        i += 1;
    }
    match (negative, saturated) {
        (true, true) => i64::MIN,
        (false, true) => i64::MAX,
        (true, false) => value,
        (false, false) => value.checked_neg().unwrap_or(i64::MAX),
    }
}

/// libnmdb's client-side shard checksum (§10), bug included.
pub fn checksum(key: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    let mut n = key.len();
    while n > 1 {
        let lo = u64::from(key.get(i).copied().unwrap_or(0));
        let hi = u64::from(key.get(i + 1).copied().unwrap_or(0));
        sum += lo + 256 * hi;
        i += 1;
        n -= 2;
    }
    if n == 1 {
        sum += u64::from(key.get(i).copied().unwrap_or(0));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u32)
}

/// Fuzz body: decode arbitrary bytes as requests over every transport; every decoded request
/// must encode and decode back to itself.
pub fn fuzz_server(data: &[u8]) {
    for transport in [Transport::Tcp, Transport::Udp] {
        let server = NmdbServerCodec { transport };
        let client = NmdbClientCodec { transport };
        let mut rest = data;
        while let Ok(Decoded::Frame(request, used)) = server.decode_request(rest) {
            let mut encoded = BytesMut::new();
            client.encode_request(&request, &mut encoded);
            let again = server.decode_request(&encoded);
            assert_eq!(
                again,
                Ok(Decoded::Frame(request, encoded.len())),
                "request round trip"
            );
            rest = &rest[used.min(rest.len())..];
            if transport != Transport::Tcp || rest.is_empty() {
                break;
            }
        }
    }
}

/// Fuzz body: decode arbitrary bytes as replies; every decoded reply must round-trip.
pub fn fuzz_client(data: &[u8]) {
    for transport in [Transport::Tcp, Transport::Udp] {
        let server = NmdbServerCodec { transport };
        let client = NmdbClientCodec { transport };
        if let Ok(Decoded::Frame(reply, _)) = client.decode_response(data) {
            let mut encoded = BytesMut::new();
            server.encode_response(&reply, &mut encoded);
            assert_eq!(
                client.decode_response(&encoded),
                Ok(Decoded::Frame(reply, encoded.len())),
                "reply round trip"
            );
        }
    }
}

#[cfg(test)]
mod tests;
