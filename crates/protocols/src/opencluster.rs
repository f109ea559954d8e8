//! OpenCluster (32-bit "V0") codec: see `shared/protocols/opencluster.md`.
//!
//! Every message, in both directions, is a 12-byte header `u16 id, u16 repcmd, u32 user id,
//! u32 payload length` followed by the payload. `repcmd = 0` marks a command; otherwise the
//! message is a reply to command `repcmd`. Both sides send commands: the client sends requests,
//! the server pushes topology (serverlist, hashmasks, hashmask, goodbye) and the client may ack.
//!
//! Server side: [`Request`] (client → server: commands, malformed commands, and client replies
//! that are to be ignored) and [`Response`] (server → client: replies and pushes).

use bytes::{BufMut, Bytes, BytesMut};

use crate::{be_u16, be_u32, be_u64, ClientCodec, Decoded, Reject, ServerCodec};

/// Size of the message header.
pub const HEADER_LEN: usize = 12;
/// Default TCP port.
pub const DEFAULT_PORT: u16 = 13600;
/// Default largest payload `L` (§12).
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;
/// Default bucket mask (§8).
pub const DEFAULT_MASK: u32 = 0x0F;

/// Command ids (§4.2, and the pushes of §5).
pub mod cmd {
    pub const HELLO: u16 = 10;
    pub const CAPABILITIES: u16 = 11;
    pub const SHUTTING_DOWN: u16 = 15;
    pub const GOODBYE: u16 = 20;
    pub const PING: u16 = 30;
    pub const SERVER_HELLO: u16 = 50;
    pub const SERVER_LIST: u16 = 100;
    pub const HASH_MASKS: u16 = 110;
    pub const HASH_MASK: u16 = 120;
    pub const NEW_SERVER: u16 = 130;
    pub const LOAD_LEVEL: u16 = 200;
    pub const LOCK: u16 = 1000;
    pub const UNLOCK: u16 = 1010;
    pub const SET_INT: u16 = 2000;
    pub const SET_LONG: u16 = 2010;
    pub const SET_STRING: u16 = 2020;
    pub const GET_INT: u16 = 2100;
    pub const GET_LONG: u16 = 2110;
    pub const GET_STRING: u16 = 2120;
    pub const GET_TYPE: u16 = 2200;

    /// Every command the server accepts (§4.2), ascending.
    pub const ACCEPTED: [u16; 20] = [
        HELLO,
        CAPABILITIES,
        SHUTTING_DOWN,
        GOODBYE,
        PING,
        SERVER_HELLO,
        SERVER_LIST,
        HASH_MASKS,
        HASH_MASK,
        NEW_SERVER,
        LOAD_LEVEL,
        LOCK,
        UNLOCK,
        SET_INT,
        SET_LONG,
        SET_STRING,
        GET_INT,
        GET_LONG,
        GET_STRING,
        GET_TYPE,
    ];

    /// Whether `id` is a command of §4.2: the capabilities (11) answer.
    pub fn is_accepted(id: u16) -> bool {
        ACCEPTED.contains(&id)
    }
}

/// Reply ids (§4.1).
pub mod rep {
    pub const ACK: u16 = 1;
    pub const FAIL: u16 = 2;
    pub const FAILINFO: u16 = 3;
    pub const TRY_ELSEWHERE: u16 = 4;
    pub const UNKNOWN: u16 = 9;
    pub const LOAD_LEVELS: u16 = 210;
    pub const DATA_INT: u16 = 2105;
    pub const DATA_LONG: u16 = 2115;
    pub const DATA_STRING: u16 = 2125;
    pub const DATA_TYPE: u16 = 2205;
}

/// failinfo codes (§9).
pub mod failinfo {
    pub const WRONG_TYPE: i32 = 1;
    pub const MALFORMED: i32 = 2;
    pub const TOO_LARGE: i32 = 3;
    pub const INVALID_ARGUMENT: i32 = 4;
    pub const UNAVAILABLE: i32 = 5;
    pub const LIMIT_EXCEEDED: i32 = 6;

    /// The text polykv sends with a code (not normative: clients act on the code).
    pub fn text(code: i32) -> &'static str {
        match code {
            WRONG_TYPE => "wrong type",
            MALFORMED => "malformed payload",
            TOO_LARGE => "payload too large",
            INVALID_ARGUMENT => "invalid argument",
            UNAVAILABLE => "unavailable",
            LIMIT_EXCEEDED => "limit exceeded",
            _ => "error",
        }
    }
}

/// Standard FNV-1a-32 over the raw bytes (§10): the polykv client's key and map hash.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The original C client's variant (§10 quirk): each byte is XORed as a *signed* char, so a
/// byte ≥ 0x80 is XORed as `0xFFFFFF00 | b`. Equal to [`fnv1a32`] for ASCII names.
pub fn fnv1a32_signed_char(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5u32, |h, b| {
        (h ^ (i32::from(*b as i8) as u32)).wrapping_mul(0x0100_0193)
    })
}

/// The bucket of a key hash: `key_hash & mask` (§8; the map hash plays no part).
pub fn bucket(key_hash: u32, mask: u32) -> u32 {
    key_hash & mask
}

/// An item's identity: (map hash, key hash) (§6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ItemId {
    /// 0 = not in a map.
    pub map: u32,
    pub key: u32,
}

impl ItemId {
    /// The id a polykv client computes: FNV-1a-32 of the name, and of the map name (or 0).
    pub fn named(map: Option<&[u8]>, name: &[u8]) -> ItemId {
        ItemId {
            map: map.map_or(0, fnv1a32),
            key: fnv1a32(name),
        }
    }

    /// The engine key (§6.4): map hash ‖ key hash, big-endian.
    pub fn engine_key(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.map.to_be_bytes());
        out[4..].copy_from_slice(&self.key.to_be_bytes());
        out
    }

    /// The inverse of [`Self::engine_key`]; `None` unless the key is exactly 8 bytes.
    pub fn from_engine_key(key: &[u8]) -> Option<ItemId> {
        if key.len() != 8 {
            return None;
        }
        Some(ItemId {
            map: be_u32(key, 0)?,
            key: be_u32(key, 4)?,
        })
    }

    /// The item's bucket under `mask`.
    pub fn bucket(self, mask: u32) -> u32 {
        bucket(self.key, mask)
    }
}

/// The type of a stored item (§6.1), with its data_type code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    Int = 1,
    Long = 2,
    String = 3,
}

impl ValueType {
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<ValueType> {
        match code {
            1 => Some(ValueType::Int),
            2 => Some(ValueType::Long),
            3 => Some(ValueType::String),
            _ => None,
        }
    }

    /// The set command for this type.
    pub fn set_command(self) -> u16 {
        match self {
            ValueType::Int => cmd::SET_INT,
            ValueType::Long => cmd::SET_LONG,
            ValueType::String => cmd::SET_STRING,
        }
    }

    /// The get command for this type.
    pub fn get_command(self) -> u16 {
        match self {
            ValueType::Int => cmd::GET_INT,
            ValueType::Long => cmd::GET_LONG,
            ValueType::String => cmd::GET_STRING,
        }
    }

    /// The data reply for this type.
    pub fn data_reply(self) -> u16 {
        match self {
            ValueType::Int => rep::DATA_INT,
            ValueType::Long => rep::DATA_LONG,
            ValueType::String => rep::DATA_STRING,
        }
    }
}

/// A typed value: what set_* carries and data_* returns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    Int(i32),
    Long(i64),
    String(Bytes),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::Int(_) => ValueType::Int,
            Value::Long(_) => ValueType::Long,
            Value::String(_) => ValueType::String,
        }
    }
}

/// One message sent by a client (or another node) to the server, as the server decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The user id of the header; a reply copies it.
    pub user_id: u32,
    pub body: RequestBody,
}

/// What a client message asks for. Commands whose payload the server does not use (§3) carry
/// nothing: their payload is discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    /// hello (10): ack, then the serverlist and hashmasks pushes.
    Hello,
    /// capabilities (11): ack if `command` is in §4.2, else fail.
    Capabilities { command: u16 },
    /// shuttingdown (15): ack, no effect.
    ShuttingDown,
    /// goodbye (20): ack, flush, close.
    Goodbye,
    /// ping (30): ack.
    Ping,
    /// serverhello (50): ack (ignored); tryelsewhere/fail while shutting down.
    ServerHello,
    /// serverlist (100) received: ack, ignored.
    ServerList,
    /// hashmasks (110) received: ack, ignored.
    HashMasks,
    /// hashmask (120) received: ack, ignored.
    HashMask,
    /// newserver (130): ack, ignored.
    NewServer,
    /// loadlevel (200): loadlevels.
    LoadLevel,
    /// lock (1000). After decoding, `timeout ≥ 0` and `name` is not empty.
    Lock { timeout: i32, name: Bytes },
    /// unlock (1010). After decoding, `name` is not empty.
    Unlock { name: Bytes },
    /// set_int / set_long / set_string (2000 / 2010 / 2020), by the value's type.
    /// After decoding, `expires ≥ 0`.
    Set {
        item: ItemId,
        expires: i32,
        /// Non-zero on the wire: ack only once durable (§6.5).
        full_wait: bool,
        name: Bytes,
        value: Value,
    },
    /// get_int / get_long / get_string (2100 / 2110 / 2120), by `kind`.
    Get { item: ItemId, kind: ValueType },
    /// get_type (2200).
    GetType { item: ItemId },
    /// O2: a command id not in §4.2 (repcmd = 0): unknown (9) with the id.
    Unknown { command: u16 },
    /// O4: the payload does not match the command's layout: failinfo 2.
    Malformed { command: u16 },
    /// O5: negative expires or lock timeout, or an empty lock name: failinfo 4.
    InvalidArgument { command: u16 },
    /// O1: `L` > the max payload: failinfo 3, then close. Only the header was consumed.
    TooLarge { command: u16 },
    /// O3: a reply (`repcmd` ≠ 0), e.g. a client's ack of a push. Its payload is discarded
    /// and it is never answered.
    Reply { id: u16, repcmd: u16 },
}

impl RequestBody {
    /// The command id this message is sent with (for a `Reply`, its reply id).
    pub fn command_id(&self) -> u16 {
        match self {
            RequestBody::Hello => cmd::HELLO,
            RequestBody::Capabilities { .. } => cmd::CAPABILITIES,
            RequestBody::ShuttingDown => cmd::SHUTTING_DOWN,
            RequestBody::Goodbye => cmd::GOODBYE,
            RequestBody::Ping => cmd::PING,
            RequestBody::ServerHello => cmd::SERVER_HELLO,
            RequestBody::ServerList => cmd::SERVER_LIST,
            RequestBody::HashMasks => cmd::HASH_MASKS,
            RequestBody::HashMask => cmd::HASH_MASK,
            RequestBody::NewServer => cmd::NEW_SERVER,
            RequestBody::LoadLevel => cmd::LOAD_LEVEL,
            RequestBody::Lock { .. } => cmd::LOCK,
            RequestBody::Unlock { .. } => cmd::UNLOCK,
            RequestBody::Set { value, .. } => value.value_type().set_command(),
            RequestBody::Get { kind, .. } => kind.get_command(),
            RequestBody::GetType { .. } => cmd::GET_TYPE,
            RequestBody::Unknown { command }
            | RequestBody::Malformed { command }
            | RequestBody::InvalidArgument { command }
            | RequestBody::TooLarge { command } => *command,
            RequestBody::Reply { id, .. } => *id,
        }
    }
}

impl Request {
    /// An ack of the server push `push_id` that carried `user_id` (§5.1).
    pub fn ack(push_id: u16, user_id: u32) -> Request {
        Request {
            user_id,
            body: RequestBody::Reply {
                id: rep::ACK,
                repcmd: push_id,
            },
        }
    }

    /// Whether the server must not answer this message at all (O3).
    pub fn is_reply(&self) -> bool {
        matches!(self.body, RequestBody::Reply { .. })
    }

    /// The answer to `self` with `body`: repcmd = the command id, user id copied.
    pub fn reply(&self, body: ResponseBody) -> Response {
        Response::Reply {
            repcmd: self.body.command_id(),
            user_id: self.user_id,
            body,
        }
    }

    /// The error reply fixed by the codec alone (O1, O2, O4, O5), if this is such a message.
    pub fn error_reply(&self) -> Option<Response> {
        let body = match self.body {
            RequestBody::Unknown { command } => ResponseBody::Unknown { command },
            RequestBody::Malformed { .. } => ResponseBody::failinfo(failinfo::MALFORMED),
            RequestBody::InvalidArgument { .. } => {
                ResponseBody::failinfo(failinfo::INVALID_ARGUMENT)
            }
            RequestBody::TooLarge { .. } => ResponseBody::failinfo(failinfo::TOO_LARGE),
            _ => return None,
        };
        Some(self.reply(body))
    }

    /// Whether the connection closes after the reply (goodbye, O1).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self.body,
            RequestBody::Goodbye | RequestBody::TooLarge { .. }
        )
    }
}

/// One message sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The reply to command `repcmd`, with the command's user id.
    Reply {
        repcmd: u16,
        user_id: u32,
        body: ResponseBody,
    },
    /// A command pushed by the server (repcmd 0); `user_id` is the per-connection push counter.
    Push { user_id: u32, push: Push },
}

/// A reply payload (§4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    Ack,
    Fail,
    /// failinfo (3): code of §9 and a descriptive text.
    FailInfo {
        code: i32,
        text: Bytes,
    },
    /// tryelsewhere (4): `"host:port"` of the node to use.
    TryElsewhere {
        addr: Bytes,
    },
    /// unknown (9): the unrecognised command id.
    Unknown {
        command: u16,
    },
    /// loadlevels (210).
    LoadLevels {
        primary: i32,
        backup: i32,
        transferring: bool,
    },
    /// data_int / data_long / data_string (2105 / 2115 / 2125), by the value's type.
    Data {
        item: ItemId,
        value: Value,
    },
    /// data_type (2205).
    DataType {
        item: ItemId,
        kind: ValueType,
    },
}

impl ResponseBody {
    /// failinfo with polykv's text for `code`.
    pub fn failinfo(code: i32) -> ResponseBody {
        ResponseBody::FailInfo {
            code,
            text: Bytes::from_static(failinfo::text(code).as_bytes()),
        }
    }

    /// The reply id.
    pub fn id(&self) -> u16 {
        match self {
            ResponseBody::Ack => rep::ACK,
            ResponseBody::Fail => rep::FAIL,
            ResponseBody::FailInfo { .. } => rep::FAILINFO,
            ResponseBody::TryElsewhere { .. } => rep::TRY_ELSEWHERE,
            ResponseBody::Unknown { .. } => rep::UNKNOWN,
            ResponseBody::LoadLevels { .. } => rep::LOAD_LEVELS,
            ResponseBody::Data { value, .. } => value.value_type().data_reply(),
            ResponseBody::DataType { .. } => rep::DATA_TYPE,
        }
    }
}

/// One row of a hashmasks push: a bucket and this node's level for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaskRow {
    pub bucket: u32,
    /// 0 = primary, ≥ 1 = backup.
    pub level: i32,
}

/// A command pushed by the server (§5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// serverlist (100): every *other* live node's `"host:port"`.
    ServerList { servers: Vec<Bytes> },
    /// hashmasks (110): the mask and the buckets this node holds, ascending.
    HashMasks { mask: u32, rows: Vec<MaskRow> },
    /// hashmask (120): this node's role for `bucket` changed; level −1 = no longer held.
    HashMask { mask: u32, bucket: u32, level: i32 },
    /// goodbye (20): the server is shutting down; ack it.
    Goodbye,
    /// Any other command (as a client decodes it); its payload is discarded. A client
    /// answers it with unknown (9).
    Other { command: u16 },
}

impl Push {
    pub fn command_id(&self) -> u16 {
        match self {
            Push::ServerList { .. } => cmd::SERVER_LIST,
            Push::HashMasks { .. } => cmd::HASH_MASKS,
            Push::HashMask { .. } => cmd::HASH_MASK,
            Push::Goodbye => cmd::GOODBYE,
            Push::Other { command } => *command,
        }
    }

    /// The hashmasks push of a node that holds every bucket of `mask` at `level`
    /// (a single node: `mask` 0x0F, level 0, §5.1). `mask` is `2^k − 1` with k ≤ 16 (§8).
    pub fn all_buckets(mask: u32, level: i32) -> Push {
        Push::HashMasks {
            mask,
            rows: (0..=mask).map(|bucket| MaskRow { bucket, level }).collect(),
        }
    }
}

/// The 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub repcmd: u16,
    pub user_id: u32,
    pub len: u32,
}

impl Header {
    /// Reads a header; `None` when `buf` holds fewer than 12 bytes.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        Some(Header {
            id: be_u16(buf, 0)?,
            repcmd: be_u16(buf, 2)?,
            user_id: be_u32(buf, 4)?,
            len: be_u32(buf, 8)?,
        })
    }
}

/// Appends a whole message: header then `payload`. Lets a client send a reply the codec types
/// do not model (e.g. unknown (9) with its u16, answering a push it does not know).
pub fn encode_message(id: u16, repcmd: u16, user_id: u32, payload: &[u8], out: &mut BytesMut) {
    out.put_u16(id);
    out.put_u16(repcmd);
    out.put_u32(user_id);
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
}

/// Writes a header with a placeholder length, lets `write` append the payload, then patches
/// the length in.
fn with_header(
    out: &mut BytesMut,
    id: u16,
    repcmd: u16,
    user_id: u32,
    write: impl FnOnce(&mut BytesMut),
) {
    let start = out.len();
    out.put_u16(id);
    out.put_u16(repcmd);
    out.put_u32(user_id);
    out.put_u32(0);
    write(out);
    let len = u32::try_from(out.len() - start - HEADER_LEN).unwrap_or(u32::MAX);
    out[start + 8..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

fn put_str(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

/// A cursor over a payload that reads the primitives of §3.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, at: 0 }
    }

    fn u16(&mut self) -> Option<u16> {
        let v = be_u16(self.buf, self.at)?;
        self.at += 2;
        Some(v)
    }

    fn u32(&mut self) -> Option<u32> {
        let v = be_u32(self.buf, self.at)?;
        self.at += 4;
        Some(v)
    }

    fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }

    fn i64(&mut self) -> Option<i64> {
        let v = be_u64(self.buf, self.at)?;
        self.at += 8;
        Some(v as i64)
    }

    fn str(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        let end = self.at.checked_add(n)?;
        let bytes = self.buf.get(self.at..end)?;
        self.at = end;
        Some(bytes)
    }

    fn item(&mut self) -> Option<ItemId> {
        Some(ItemId {
            map: self.u32()?,
            key: self.u32()?,
        })
    }

    /// `Some(v)` only if every byte was used (§3: no trailing bytes).
    fn done<T>(&self, v: T) -> Option<T> {
        (self.at == self.buf.len()).then_some(v)
    }
}

/// Parses the payload of a command (repcmd = 0) received by the server.
pub fn decode_command(id: u16, payload: &[u8]) -> RequestBody {
    let malformed = RequestBody::Malformed { command: id };
    let invalid = RequestBody::InvalidArgument { command: id };
    let mut f = Fields::new(payload);
    match id {
        cmd::HELLO => RequestBody::Hello,
        cmd::SHUTTING_DOWN => RequestBody::ShuttingDown,
        cmd::GOODBYE => RequestBody::Goodbye,
        cmd::PING => RequestBody::Ping,
        cmd::SERVER_HELLO => RequestBody::ServerHello,
        cmd::SERVER_LIST => RequestBody::ServerList,
        cmd::HASH_MASKS => RequestBody::HashMasks,
        cmd::HASH_MASK => RequestBody::HashMask,
        cmd::NEW_SERVER => RequestBody::NewServer,
        cmd::LOAD_LEVEL => RequestBody::LoadLevel,
        cmd::CAPABILITIES => {
            let parsed = f.u16().and_then(|command| f.done(command));
            match parsed {
                Some(command) => RequestBody::Capabilities { command },
                None => malformed,
            }
        }
        cmd::LOCK => {
            let parsed = (|| {
                let timeout = f.i32()?;
                let name = f.str()?;
                f.done((timeout, name))
            })();
            match parsed {
                None => malformed,
                Some((timeout, name)) if timeout < 0 || name.is_empty() => invalid,
                Some((timeout, name)) => RequestBody::Lock {
                    timeout,
                    name: Bytes::copy_from_slice(name),
                },
            }
        }
        cmd::UNLOCK => match f.str().and_then(|name| f.done(name)) {
            None => malformed,
            Some([]) => invalid,
            Some(name) => RequestBody::Unlock {
                name: Bytes::copy_from_slice(name),
            },
        },
        cmd::SET_INT | cmd::SET_LONG | cmd::SET_STRING => {
            let parsed = (|| {
                let item = f.item()?;
                let expires = f.i32()?;
                let full_wait = f.i32()? != 0;
                let name = f.str()?;
                let value = match id {
                    cmd::SET_INT => Value::Int(f.i32()?),
                    cmd::SET_LONG => Value::Long(f.i64()?),
                    _ => Value::String(Bytes::copy_from_slice(f.str()?)),
                };
                f.done((item, expires, full_wait, name, value))
            })();
            match parsed {
                None => malformed,
                Some((_, expires, ..)) if expires < 0 => invalid,
                Some((item, expires, full_wait, name, value)) => RequestBody::Set {
                    item,
                    expires,
                    full_wait,
                    name: Bytes::copy_from_slice(name),
                    value,
                },
            }
        }
        cmd::GET_INT | cmd::GET_LONG | cmd::GET_STRING | cmd::GET_TYPE => {
            let Some(item) = f.item().and_then(|item| f.done(item)) else {
                return malformed;
            };
            match id {
                cmd::GET_INT => RequestBody::Get {
                    item,
                    kind: ValueType::Int,
                },
                cmd::GET_LONG => RequestBody::Get {
                    item,
                    kind: ValueType::Long,
                },
                cmd::GET_STRING => RequestBody::Get {
                    item,
                    kind: ValueType::String,
                },
                _ => RequestBody::GetType { item },
            }
        }
        command => RequestBody::Unknown { command },
    }
}

/// Appends a client message.
pub fn encode_request(request: &Request, out: &mut BytesMut) {
    let user = request.user_id;
    let id = request.body.command_id();
    match &request.body {
        RequestBody::Hello
        | RequestBody::ShuttingDown
        | RequestBody::Goodbye
        | RequestBody::Ping
        | RequestBody::ServerHello
        | RequestBody::ServerList
        | RequestBody::HashMasks
        | RequestBody::HashMask
        | RequestBody::NewServer
        | RequestBody::LoadLevel
        | RequestBody::Unknown { .. } => with_header(out, id, 0, user, |_| {}),
        RequestBody::Capabilities { command } => {
            with_header(out, id, 0, user, |out| out.put_u16(*command))
        }
        RequestBody::Lock { timeout, name } => with_header(out, id, 0, user, |out| {
            out.put_i32(*timeout);
            put_str(out, name);
        }),
        RequestBody::Unlock { name } => with_header(out, id, 0, user, |out| put_str(out, name)),
        RequestBody::Set {
            item,
            expires,
            full_wait,
            name,
            value,
        } => with_header(out, id, 0, user, |out| {
            put_set(out, *item, *expires, *full_wait, name, value)
        }),
        RequestBody::Get { item, .. } | RequestBody::GetType { item } => {
            with_header(out, id, 0, user, |out| {
                out.put_u32(item.map);
                out.put_u32(item.key);
            })
        }
        // The malformed variants are written in their nearest wire form, which decodes back to
        // the same variant: a 1-byte payload is too short for every command that has fields…
        RequestBody::Malformed { .. } => with_header(out, id, 0, user, |out| out.put_u8(0)),
        // …a negative expires or lock timeout is invalid…
        RequestBody::InvalidArgument { command } => {
            with_header(out, id, 0, user, |out| match *command {
                cmd::LOCK => {
                    out.put_i32(-1);
                    put_str(out, b"");
                }
                cmd::UNLOCK => put_str(out, b""),
                cmd::SET_INT => put_set(out, ItemId::default(), -1, false, b"", &Value::Int(0)),
                cmd::SET_LONG => put_set(out, ItemId::default(), -1, false, b"", &Value::Long(0)),
                cmd::SET_STRING => put_set(
                    out,
                    ItemId::default(),
                    -1,
                    false,
                    b"",
                    &Value::String(Bytes::new()),
                ),
                _ => {}
            })
        }
        // …and a header announcing u32::MAX bytes is over every smaller limit (header only).
        RequestBody::TooLarge { .. } => {
            out.put_u16(id);
            out.put_u16(0);
            out.put_u32(user);
            out.put_u32(u32::MAX);
        }
        RequestBody::Reply { id, repcmd } => with_header(out, *id, *repcmd, user, |_| {}),
    }
}

fn put_set(
    out: &mut BytesMut,
    item: ItemId,
    expires: i32,
    full_wait: bool,
    name: &[u8],
    value: &Value,
) {
    out.put_u32(item.map);
    out.put_u32(item.key);
    out.put_i32(expires);
    out.put_i32(i32::from(full_wait));
    put_str(out, name);
    match value {
        Value::Int(v) => out.put_i32(*v),
        Value::Long(v) => out.put_i64(*v),
        Value::String(v) => put_str(out, v),
    }
}

/// Appends a server message.
pub fn encode_response(response: &Response, out: &mut BytesMut) {
    match response {
        Response::Reply {
            repcmd,
            user_id,
            body,
        } => with_header(out, body.id(), *repcmd, *user_id, |out| match body {
            ResponseBody::Ack | ResponseBody::Fail => {}
            ResponseBody::FailInfo { code, text } => {
                out.put_i32(*code);
                put_str(out, text);
            }
            ResponseBody::TryElsewhere { addr } => put_str(out, addr),
            ResponseBody::Unknown { command } => out.put_u16(*command),
            ResponseBody::LoadLevels {
                primary,
                backup,
                transferring,
            } => {
                out.put_i32(*primary);
                out.put_i32(*backup);
                out.put_i32(i32::from(*transferring));
            }
            ResponseBody::Data { item, value } => {
                out.put_u32(item.map);
                out.put_u32(item.key);
                match value {
                    Value::Int(v) => out.put_i32(*v),
                    Value::Long(v) => out.put_i64(*v),
                    Value::String(v) => put_str(out, v),
                }
            }
            ResponseBody::DataType { item, kind } => {
                out.put_u32(item.map);
                out.put_u32(item.key);
                out.put_i32(kind.code());
            }
        }),
        Response::Push { user_id, push } => {
            with_header(out, push.command_id(), 0, *user_id, |out| match push {
                Push::ServerList { servers } => {
                    out.put_i32(i32::try_from(servers.len()).unwrap_or(i32::MAX));
                    for server in servers {
                        put_str(out, server);
                    }
                }
                Push::HashMasks { mask, rows } => {
                    out.put_u32(*mask);
                    out.put_i32(i32::try_from(rows.len()).unwrap_or(i32::MAX));
                    for row in rows {
                        out.put_u32(row.bucket);
                        out.put_i32(row.level);
                    }
                }
                Push::HashMask {
                    mask,
                    bucket,
                    level,
                } => {
                    out.put_u32(*mask);
                    out.put_u32(*bucket);
                    out.put_i32(*level);
                }
                Push::Goodbye | Push::Other { .. } => {}
            })
        }
    }
}

/// Parses a reply (repcmd ≠ 0) received by a client; `None` when its payload does not match.
fn parse_reply_body(id: u16, repcmd: u16, payload: &[u8]) -> Option<ResponseBody> {
    let mut f = Fields::new(payload);
    let body = match id {
        rep::ACK => ResponseBody::Ack,
        rep::FAIL => ResponseBody::Fail,
        rep::FAILINFO => {
            let code = f.i32()?;
            ResponseBody::FailInfo {
                code,
                text: Bytes::copy_from_slice(f.str()?),
            }
        }
        rep::TRY_ELSEWHERE => ResponseBody::TryElsewhere {
            addr: Bytes::copy_from_slice(f.str()?),
        },
        rep::UNKNOWN => ResponseBody::Unknown {
            // The original sent no payload (§13); the id it answers is then repcmd.
            command: if payload.is_empty() { repcmd } else { f.u16()? },
        },
        rep::LOAD_LEVELS => ResponseBody::LoadLevels {
            primary: f.i32()?,
            backup: f.i32()?,
            transferring: f.i32()? != 0,
        },
        rep::DATA_INT => ResponseBody::Data {
            item: f.item()?,
            value: Value::Int(f.i32()?),
        },
        rep::DATA_LONG => ResponseBody::Data {
            item: f.item()?,
            value: Value::Long(f.i64()?),
        },
        rep::DATA_STRING => ResponseBody::Data {
            item: f.item()?,
            value: Value::String(Bytes::copy_from_slice(f.str()?)),
        },
        rep::DATA_TYPE => ResponseBody::DataType {
            item: f.item()?,
            kind: ValueType::from_code(f.i32()?)?,
        },
        _ => return None,
    };
    f.done(body)
}

/// Parses a command (repcmd = 0) received by a client; `None` when its payload does not match.
fn parse_push(id: u16, payload: &[u8]) -> Option<Push> {
    let mut f = Fields::new(payload);
    let push = match id {
        cmd::SERVER_LIST => {
            let count = u32::try_from(f.i32()?).ok()?;
            // Each entry uses at least 4 bytes, so the loop is bounded by the payload.
            let mut servers = Vec::new();
            for _ in 0..count {
                servers.push(Bytes::copy_from_slice(f.str()?));
            }
            Push::ServerList { servers }
        }
        cmd::HASH_MASKS => {
            let mask = f.u32()?;
            let n = usize::try_from(f.i32()?).ok()?;
            // Check the row count against the payload before allocating.
            if payload.len() != 8usize.checked_add(n.checked_mul(8)?)? {
                return None;
            }
            let mut rows = Vec::with_capacity(n);
            for _ in 0..n {
                rows.push(MaskRow {
                    bucket: f.u32()?,
                    level: f.i32()?,
                });
            }
            Push::HashMasks { mask, rows }
        }
        cmd::HASH_MASK => Push::HashMask {
            mask: f.u32()?,
            bucket: f.u32()?,
            level: f.i32()?,
        },
        // Nothing in a goodbye is used; any payload is discarded, like the server does.
        cmd::GOODBYE => return Some(Push::Goodbye),
        command => return Some(Push::Other { command }),
    };
    f.done(push)
}

/// The server side: decodes client messages, encodes replies and pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenClusterServerCodec {
    /// Largest payload `L` accepted (O1).
    pub max_payload: u32,
}

impl Default for OpenClusterServerCodec {
    fn default() -> Self {
        OpenClusterServerCodec {
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

impl ServerCodec for OpenClusterServerCodec {
    type Request = Request;
    type Response = Response;

    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<Request>, Reject> {
        let Some(header) = Header::parse(buf) else {
            return Ok(Decoded::Incomplete);
        };
        // R2: decided from the header alone, before waiting for the payload.
        if header.len > self.max_payload {
            if header.repcmd != 0 {
                // O3 forbids answering a reply and R2 forbids reading the payload.
                return Err(Reject::new("opencluster reply payload over the limit"));
            }
            return Ok(Decoded::Frame(
                Request {
                    user_id: header.user_id,
                    body: RequestBody::TooLarge { command: header.id },
                },
                HEADER_LEN,
            ));
        }
        let Some(total) = usize::try_from(header.len)
            .ok()
            .and_then(|len| len.checked_add(HEADER_LEN))
        else {
            return Err(Reject::new("opencluster payload length overflows"));
        };
        let Some(payload) = buf.get(HEADER_LEN..total) else {
            return Ok(Decoded::Incomplete);
        };
        let body = if header.repcmd != 0 {
            RequestBody::Reply {
                id: header.id,
                repcmd: header.repcmd,
            }
        } else {
            decode_command(header.id, payload)
        };
        Ok(Decoded::Frame(
            Request {
                user_id: header.user_id,
                body,
            },
            total,
        ))
    }

    fn encode_response(&self, response: &Response, out: &mut BytesMut) {
        encode_response(response, out);
    }
}

/// The client side: encodes client messages, decodes replies and pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenClusterClientCodec {
    /// Largest payload `L` accepted from the server; a larger one closes the connection.
    pub max_payload: u32,
}

impl Default for OpenClusterClientCodec {
    fn default() -> Self {
        OpenClusterClientCodec {
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

impl ClientCodec for OpenClusterClientCodec {
    type Request = Request;
    type Response = Response;

    fn encode_request(&self, request: &Request, out: &mut BytesMut) {
        encode_request(request, out);
    }

    fn decode_response(&self, buf: &[u8]) -> Result<Decoded<Response>, Reject> {
        let Some(header) = Header::parse(buf) else {
            return Ok(Decoded::Incomplete);
        };
        if header.len > self.max_payload {
            return Err(Reject::new("opencluster server payload over the limit"));
        }
        let Some(total) = usize::try_from(header.len)
            .ok()
            .and_then(|len| len.checked_add(HEADER_LEN))
        else {
            return Err(Reject::new("opencluster payload length overflows"));
        };
        let Some(payload) = buf.get(HEADER_LEN..total) else {
            return Ok(Decoded::Incomplete);
        };
        let response = if header.repcmd != 0 {
            let body = parse_reply_body(header.id, header.repcmd, payload)
                .ok_or(Reject::new("malformed or unknown opencluster reply"))?;
            Response::Reply {
                repcmd: header.repcmd,
                user_id: header.user_id,
                body,
            }
        } else {
            let push =
                parse_push(header.id, payload).ok_or(Reject::new("malformed opencluster push"))?;
            Response::Push {
                user_id: header.user_id,
                push,
            }
        };
        Ok(Decoded::Frame(response, total))
    }
}

/// Fuzz body: decode arbitrary bytes as client messages; every decoded message must encode and
/// decode back to itself.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_server(data: &[u8]) {
    for max_payload in [DEFAULT_MAX_PAYLOAD, 16] {
        let server = OpenClusterServerCodec { max_payload };
        let client = OpenClusterClientCodec { max_payload };
        let mut rest = data;
        while let Ok(Decoded::Frame(request, used)) = server.decode_request(rest) {
            let mut encoded = BytesMut::new();
            client.encode_request(&request, &mut encoded);
            let closes = matches!(request.body, RequestBody::TooLarge { .. });
            assert_eq!(
                server.decode_request(&encoded),
                Ok(Decoded::Frame(request, encoded.len())),
                "request round trip"
            );
            // The server closes after a too-large header: nothing after it is read.
            if closes {
                break;
            }
            rest = rest.get(used..).unwrap_or_default();
        }
    }
}

/// Fuzz body: decode arbitrary bytes as server messages; every decoded message must round-trip.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_client(data: &[u8]) {
    for max_payload in [DEFAULT_MAX_PAYLOAD, 16] {
        let server = OpenClusterServerCodec { max_payload };
        let client = OpenClusterClientCodec { max_payload };
        let mut rest = data;
        while let Ok(Decoded::Frame(response, used)) = client.decode_response(rest) {
            let mut encoded = BytesMut::new();
            server.encode_response(&response, &mut encoded);
            assert_eq!(
                client.decode_response(&encoded),
                Ok(Decoded::Frame(response, encoded.len())),
                "response round trip"
            );
            rest = rest.get(used..).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests;
