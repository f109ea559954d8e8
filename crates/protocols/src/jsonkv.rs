//! jsonkv codec: see `shared/protocols/jsonkv.md`.
//!
//! Three things share this module:
//! - the 16-byte framing of §2 (`version, type, length, reserve`, then `length - 16` bytes of
//!   JSON), used by jsonkv over TCP and UDP and by the jsonagent discovery service;
//! - the jsonkv request and response objects of §3 and the JSON-RPC 2.0 mapping of §6;
//! - the jsonagent messages of §7.
//!
//! JSON is parsed with `serde_json`, but objects are walked member by member on the raw text
//! (see [`members`]) so that member order is known and the request `id` can be echoed in its
//! exact textual form (`1.0` stays `1.0`), which a parsed `serde_json::Value` cannot promise.

use bytes::{BufMut, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use crate::{be_u32, ClientCodec, Decoded, Reject, ServerCodec};

/// Size of the frame header.
pub const HEADER_LEN: usize = 16;
/// Default largest frame (header + JSON), TCP and HTTP body.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Largest UDP reply datagram (§2.2).
pub const MAX_UDP_DATAGRAM: usize = 65_507;
/// Default longest key, in UTF-8 bytes.
pub const DEFAULT_MAX_KEY: usize = 1024;
/// Default longest value, in UTF-8 bytes.
pub const DEFAULT_MAX_VALUE: usize = 65_536;
/// Default deepest JSON nesting.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Largest reply frame a client accepts by default: a batch of gets can exceed the request limit.
pub const DEFAULT_CLIENT_MAX_FRAME: usize = 64 << 20;
/// The only protocol version, in `"jsonkv"` and `"jsonagent"`.
pub const VERSION: &str = "1.0";
/// Longest agent `address` (§7.1).
pub const MAX_AGENT_ADDRESS: usize = 255;

/// The configurable limits of §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, header included (TCP) or HTTP body.
    pub max_frame: usize,
    pub max_key: usize,
    pub max_value: usize,
    /// Deepest nesting of arrays and objects; the top-level value is depth 1.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_key: DEFAULT_MAX_KEY,
            max_value: DEFAULT_MAX_VALUE,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Framing (§2)
// ---------------------------------------------------------------------------------------------

/// Finds the frame at the start of `buf`: its payload and its total size. Decided from the
/// `length` field alone (J1): `length < 16` or `length > max_frame` closes the stream before
/// anything is allocated or waited for.
pub fn split_frame(buf: &[u8], max_frame: usize) -> Result<Decoded<&[u8]>, Reject> {
    let Some(length) = be_u32(buf, 8) else {
        return Ok(Decoded::Incomplete);
    };
    let length = usize::try_from(length).unwrap_or(usize::MAX);
    if length < HEADER_LEN {
        return Err(Reject::new("jsonkv frame length under 16"));
    }
    if length > max_frame {
        return Err(Reject::new("jsonkv frame over the maximum"));
    }
    match buf.get(HEADER_LEN..length) {
        Some(payload) => Ok(Decoded::Frame(payload, length)),
        None => Ok(Decoded::Incomplete),
    }
}

/// The payload of a UDP datagram, or `None` when it must be dropped (J2): shorter than the
/// header, or a `length` field that disagrees with the datagram size.
pub fn datagram_payload(datagram: &[u8]) -> Option<&[u8]> {
    let length = usize::try_from(be_u32(datagram, 8)?).ok()?;
    if length != datagram.len() {
        return None;
    }
    datagram.get(HEADER_LEN..)
}

/// Appends a frame header (version, type and reserve 0) and lets `body` write the JSON; the
/// length is filled in afterwards.
fn put_frame(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_bytes(0, HEADER_LEN);
    body(out);
    // Frames over 4 GiB cannot be described; a peer would reject the saturated length.
    let length = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
}

/// Appends one whole frame carrying `payload`.
pub fn write_frame(out: &mut BytesMut, payload: &[u8]) {
    put_frame(out, |out| out.put_slice(payload));
}

// ---------------------------------------------------------------------------------------------
// Raw JSON helpers
// ---------------------------------------------------------------------------------------------

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(text: &[u8], mut pos: usize) -> usize {
    while text.get(pos).copied().is_some_and(is_ws) {
        pos += 1;
    }
    pos
}

/// Whether arrays and objects nest at most `max_depth` deep. Runs before the parser, so deep
/// input never reaches recursive code.
fn depth_within(text: &[u8], max_depth: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// The payload as one valid JSON document (UTF-8, nesting within `max_depth`), trimmed of
/// surrounding white space; `None` when it is not.
fn document(payload: &[u8], max_depth: usize) -> Option<&[u8]> {
    std::str::from_utf8(payload).ok()?;
    if !depth_within(payload, max_depth) {
        return None;
    }
    serde_json::from_slice::<IgnoredAny>(payload).ok()?;
    let start = skip_ws(payload, 0);
    let mut end = payload.len();
    while end > start && payload.get(end - 1).copied().is_some_and(is_ws) {
        end -= 1;
    }
    payload.get(start..end)
}

/// Parses the JSON value at the start of `text` (after optional white space): the value and
/// the offset just past it.
fn parse_prefix<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Option<(T, usize)> {
    let mut stream = serde_json::Deserializer::from_slice(text).into_iter::<T>();
    let value = stream.next()?.ok()?;
    Some((value, stream.byte_offset()))
}

/// The members of the JSON object `text` (exactly one value, already validated), in order, as
/// (decoded name, raw value text). `None` when `text` is not an object.
fn members(text: &[u8]) -> Option<Vec<(String, &[u8])>> {
    if text.first() != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    let mut pos = skip_ws(text, 1);
    if text.get(pos) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let (name, used) = parse_prefix::<String>(text.get(pos..)?)?;
        pos = skip_ws(text, pos + used);
        if text.get(pos) != Some(&b':') {
            return None;
        }
        let start = skip_ws(text, pos + 1);
        let (_, used) = parse_prefix::<IgnoredAny>(text.get(start..)?)?;
        out.push((name, text.get(start..start + used)?));
        pos = skip_ws(text, start + used);
        match text.get(pos) {
            Some(b',') => pos = skip_ws(text, pos + 1),
            Some(b'}') => return Some(out),
            _ => return None,
        }
    }
}

/// The elements of the JSON array `text` (exactly one value, already validated), as raw text.
fn elements(text: &[u8]) -> Option<Vec<&[u8]>> {
    if text.first() != Some(&b'[') {
        return None;
    }
    let mut out = Vec::new();
    let mut pos = skip_ws(text, 1);
    if text.get(pos) == Some(&b']') {
        return Some(out);
    }
    loop {
        let (_, used) = parse_prefix::<IgnoredAny>(text.get(pos..)?)?;
        out.push(text.get(pos..pos + used)?);
        pos = skip_ws(text, pos + used);
        match text.get(pos) {
            Some(b',') => pos = skip_ws(text, pos + 1),
            Some(b']') => return Some(out),
            _ => return None,
        }
    }
}

/// The raw value of member `name`; the last one wins, as in most JSON parsers.
fn member<'a>(members: &[(String, &'a [u8])], name: &str) -> Option<&'a [u8]> {
    members
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
}

/// The member `name` parsed as a `Value`: `None` when absent, `Some(None)` when unparsable
/// (for example a lone surrogate escape).
fn member_value(members: &[(String, &[u8])], name: &str) -> Option<Option<Value>> {
    member(members, name).map(|raw| serde_json::from_slice(raw).ok())
}

fn member_string(members: &[(String, &[u8])], name: &str) -> Option<String> {
    match member_value(members, name)? {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// `text` without insignificant white space.
fn minify(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    // Work on chars so multi-byte UTF-8 sequences are copied whole.
    for c in String::from_utf8_lossy(text).chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Appends `s` as a JSON string (serde_json escaping: quotes, backslashes and control
/// characters; non-ASCII stays UTF-8).
fn put_str(out: &mut BytesMut, s: &str) {
    // Writing to a BytesMut cannot fail.
    let _ = serde_json::to_writer(out.writer(), s);
}

// ---------------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------------

/// A request id, kept as its compact JSON text so that it is echoed verbatim (§3.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    pub fn null() -> Id {
        Id("null".into())
    }

    pub fn number(n: u64) -> Id {
        Id(n.to_string())
    }

    pub fn string(s: &str) -> Id {
        let mut out = BytesMut::new();
        put_str(&mut out, s);
        Id(String::from_utf8_lossy(&out).into_owned())
    }

    /// An id from JSON text (one valid value); white space outside strings is removed.
    pub fn from_json(text: &str) -> Option<Id> {
        serde_json::from_str::<IgnoredAny>(text).ok()?;
        Some(Id(minify(text.as_bytes())))
    }

    /// From the raw text of a member of a validated document.
    fn from_raw(raw: &[u8]) -> Id {
        Id(minify(raw))
    }

    pub fn is_null(&self) -> bool {
        self.0 == "null"
    }

    /// The compact JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

/// The `id` member of an object (`null` when absent).
fn read_id(members: &[(String, &[u8])]) -> Id {
    member(members, "id").map_or_else(Id::null, Id::from_raw)
}

// ---------------------------------------------------------------------------------------------
// jsonkv requests and responses (§3, §4)
// ---------------------------------------------------------------------------------------------

/// The `operate` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operate {
    Put,
    Get,
    Delete,
}

impl Operate {
    /// Case-insensitive, as the original server (§3.1).
    pub fn parse(text: &str) -> Option<Operate> {
        [Operate::Put, Operate::Get, Operate::Delete]
            .into_iter()
            .find(|op| op.as_str().eq_ignore_ascii_case(text))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operate::Put => "put",
            Operate::Get => "get",
            Operate::Delete => "delete",
        }
    }

    /// The success message (§3.3).
    pub fn success_message(self) -> &'static str {
        match self {
            Operate::Put => "put operation success",
            Operate::Get => "get operation success",
            Operate::Delete => "delete operation success",
        }
    }

    /// The JSON-RPC method name (§6), case-sensitive.
    pub fn method(self) -> &'static str {
        match self {
            Operate::Put => "Put",
            Operate::Get => "Get",
            Operate::Delete => "Delete",
        }
    }
}

/// A validated key-value operation (shared by jsonkv and JSON-RPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Put { key: String, value: String },
    Get { key: String },
    Delete { key: String },
}

impl Command {
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Self {
        Command::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn get(key: impl Into<String>) -> Self {
        Command::Get { key: key.into() }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Command::Delete { key: key.into() }
    }

    pub fn operate(&self) -> Operate {
        match self {
            Command::Put { .. } => Operate::Put,
            Command::Get { .. } => Operate::Get,
            Command::Delete { .. } => Operate::Delete,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Command::Put { key, .. } | Command::Get { key } | Command::Delete { key } => key,
        }
    }
}

/// The result codes of §3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Success,
    UnsupportedVersion,
    InvalidOperate,
    KeyNotFound,
    ValueTooLong,
    InvalidKey,
    Internal,
    Malformed,
}

impl Code {
    pub fn number(self) -> u32 {
        match self {
            Code::Success => 0,
            Code::UnsupportedVersion => 800,
            Code::InvalidOperate => 900,
            Code::KeyNotFound => 1000,
            Code::ValueTooLong => 1001,
            Code::InvalidKey => 1002,
            Code::Internal => 1024,
            Code::Malformed => 1025,
        }
    }

    /// The wire form: a decimal string.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Success => "0",
            Code::UnsupportedVersion => "800",
            Code::InvalidOperate => "900",
            Code::KeyNotFound => "1000",
            Code::ValueTooLong => "1001",
            Code::InvalidKey => "1002",
            Code::Internal => "1024",
            Code::Malformed => "1025",
        }
    }

    /// The error message (success messages depend on the operation: [`Operate::success_message`]).
    pub fn message(self) -> &'static str {
        match self {
            Code::Success => "success",
            Code::UnsupportedVersion => "unsupported protocol version",
            Code::InvalidOperate => "invalid operate",
            Code::KeyNotFound => "key does not exist.",
            Code::ValueTooLong => "value too long",
            Code::InvalidKey => "invalid key",
            Code::Internal => "internal error",
            Code::Malformed => "malformed request",
        }
    }
}

/// The message of code 1024 when a stored value cannot be returned as a JSON string.
pub const NOT_UTF8_MESSAGE: &str = "value is not valid UTF-8";
/// The message of the UDP replacement reply (§2.2).
pub const TOO_LARGE_FOR_UDP: &str = "response too large for UDP";

/// One request object, after validation steps 1–5 of §3.4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Valid: to be executed (step 6).
    Command { command: Command, id: Id },
    /// Answered with `code` without touching the engine.
    Invalid { code: Code, id: Id },
}

impl Item {
    pub fn id(&self) -> &Id {
        match self {
            Item::Command { id, .. } | Item::Invalid { id, .. } => id,
        }
    }
}

/// A whole jsonkv request payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestPayload {
    /// One object → one response object.
    Single(Item),
    /// A non-empty array → an array of responses, in order.
    Batch(Vec<Item>),
    /// Not UTF-8, not JSON, too deep, neither object nor array, or an empty array: answered
    /// by one 1025 object with id `null` (J3).
    Malformed,
}

/// A response object (§3.2). `code` is kept as text: clients meet servers that send codes
/// this module does not know (the original's `"8193"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub value: String,
    pub code: String,
    pub message: String,
    pub id: Id,
}

impl Response {
    /// Success of `op`; `value` is the stored value for get, empty otherwise.
    pub fn success(op: Operate, value: String, id: Id) -> Response {
        Response {
            value,
            code: Code::Success.as_str().into(),
            message: op.success_message().into(),
            id,
        }
    }

    /// An error with the standard message of `code`.
    pub fn error(code: Code, id: Id) -> Response {
        Response::error_with(code, code.message(), id)
    }

    /// An error with a specific message (1024 `value is not valid UTF-8`).
    pub fn error_with(code: Code, message: &str, id: Id) -> Response {
        Response {
            value: String::new(),
            code: code.as_str().into(),
            message: message.into(),
            id,
        }
    }

    /// The answer to a [`RequestPayload::Malformed`] payload.
    pub fn malformed() -> Response {
        Response::error(Code::Malformed, Id::null())
    }

    pub fn is_success(&self) -> bool {
        self.code == "0"
    }
}

/// A whole jsonkv response payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponsePayload {
    Single(Response),
    Batch(Vec<Response>),
}

/// Validates one request object (steps 1–5 of §3.4).
fn parse_item(raw: &[u8], limits: &Limits) -> Item {
    let Some(members) = members(raw) else {
        return Item::Invalid {
            code: Code::Malformed,
            id: Id::null(),
        };
    };
    let id = read_id(&members);
    let invalid = |code| Item::Invalid {
        code,
        id: id.clone(),
    };
    match member_value(&members, "jsonkv") {
        None => return invalid(Code::Malformed),
        Some(Some(Value::String(v))) if v == VERSION => {}
        // Present but not the string "1.0", whatever its type (§3.3 row 800).
        Some(_) => return invalid(Code::UnsupportedVersion),
    }
    let operate = match member_value(&members, "operate") {
        Some(Some(Value::String(op))) => op,
        _ => return invalid(Code::Malformed),
    };
    let Some(op) = Operate::parse(&operate) else {
        return invalid(Code::InvalidOperate);
    };
    let key = match member_string(&members, "key") {
        Some(key) if !key.is_empty() && key.len() <= limits.max_key => key,
        _ => return invalid(Code::InvalidKey),
    };
    let command = match op {
        Operate::Put => {
            let Some(value) = member_string(&members, "value") else {
                return invalid(Code::Malformed);
            };
            if value.len() > limits.max_value {
                return invalid(Code::ValueTooLong);
            }
            Command::Put { key, value }
        }
        Operate::Get => Command::Get { key },
        Operate::Delete => Command::Delete { key },
    };
    Item::Command { command, id }
}

/// Decodes a jsonkv request payload (the JSON after the header).
pub fn parse_request_payload(payload: &[u8], limits: &Limits) -> RequestPayload {
    let Some(doc) = document(payload, limits.max_depth) else {
        return RequestPayload::Malformed;
    };
    match doc.first() {
        Some(b'{') => RequestPayload::Single(parse_item(doc, limits)),
        Some(b'[') => match elements(doc) {
            Some(items) if !items.is_empty() => {
                RequestPayload::Batch(items.into_iter().map(|e| parse_item(e, limits)).collect())
            }
            _ => RequestPayload::Malformed,
        },
        _ => RequestPayload::Malformed,
    }
}

fn put_item(out: &mut BytesMut, item: &Item, limits: &Limits) {
    let put_id = |out: &mut BytesMut, id: &Id, first: bool| {
        if !id.is_null() {
            out.put_slice(if first { b"\"id\":" } else { b",\"id\":" });
            out.put_slice(id.as_json().as_bytes());
        }
    };
    match item {
        Item::Command { command, id } => {
            out.put_slice(b"{\"jsonkv\":\"1.0\",\"operate\":\"");
            out.put_slice(command.operate().as_str().as_bytes());
            out.put_slice(b"\",\"key\":");
            put_str(out, command.key());
            if let Command::Put { value, .. } = command {
                out.put_slice(b",\"value\":");
                put_str(out, value);
            }
            put_id(out, id, false);
            out.put_u8(b'}');
        }
        // An object that a server decodes back to the same code (hostile tests, fuzzing).
        Item::Invalid { code, id } => {
            let body: &[u8] = match code {
                Code::UnsupportedVersion => b"{\"jsonkv\":\"0\"",
                Code::InvalidOperate => b"{\"jsonkv\":\"1.0\",\"operate\":\"\"",
                Code::InvalidKey => b"{\"jsonkv\":\"1.0\",\"operate\":\"get\",\"key\":\"\"",
                Code::ValueTooLong => b"{\"jsonkv\":\"1.0\",\"operate\":\"put\",\"key\":\"k\"",
                _ => b"{",
            };
            out.put_slice(body);
            if *code == Code::ValueTooLong {
                out.put_slice(b",\"value\":\"");
                out.put_bytes(b'x', limits.max_value.saturating_add(1));
                out.put_u8(b'"');
            }
            put_id(out, id, body == b"{");
            out.put_u8(b'}');
        }
    }
}

/// Appends the JSON of a request payload (what a client sends).
pub fn write_request_payload(out: &mut BytesMut, payload: &RequestPayload, limits: &Limits) {
    match payload {
        RequestPayload::Single(item) => put_item(out, item, limits),
        RequestPayload::Batch(items) => {
            out.put_u8(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                put_item(out, item, limits);
            }
            out.put_u8(b']');
        }
        RequestPayload::Malformed => out.put_slice(b"[]"),
    }
}

fn put_response(out: &mut BytesMut, r: &Response) {
    out.put_slice(b"{\"jsonkv\":\"1.0\",\"result\":{\"value\":");
    put_str(out, &r.value);
    out.put_slice(b",\"code\":");
    put_str(out, &r.code);
    out.put_slice(b",\"message\":");
    put_str(out, &r.message);
    out.put_slice(b"},\"id\":");
    out.put_slice(r.id.as_json().as_bytes());
    out.put_u8(b'}');
}

/// Appends the JSON of a response payload: compact, members in the order of §3.2.
pub fn write_response_payload(out: &mut BytesMut, payload: &ResponsePayload) {
    match payload {
        ResponsePayload::Single(r) => put_response(out, r),
        ResponsePayload::Batch(rs) => {
            out.put_u8(b'[');
            for (i, r) in rs.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                put_response(out, r);
            }
            out.put_u8(b']');
        }
    }
}

/// A JSON string, or a number written as text (lenient: some servers may send numbers).
fn text_of(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let outer = members(raw)?;
    let result = members(member(&outer, "result")?)?;
    let value = match member_value(&result, "value") {
        None | Some(Some(Value::Null)) => String::new(),
        Some(v) => text_of(v?)?,
    };
    Some(Response {
        value,
        code: text_of(member_value(&result, "code")??)?,
        message: match member_value(&result, "message") {
            None => String::new(),
            Some(v) => text_of(v?)?,
        },
        id: read_id(&outer),
    })
}

/// Decodes a response payload (client side); `None` when it is not a jsonkv response.
pub fn parse_response_payload(payload: &[u8], max_depth: usize) -> Option<ResponsePayload> {
    let doc = document(payload, max_depth)?;
    match doc.first()? {
        b'{' => Some(ResponsePayload::Single(parse_response(doc)?)),
        b'[' => Some(ResponsePayload::Batch(
            elements(doc)?
                .into_iter()
                .map(parse_response)
                .collect::<Option<_>>()?,
        )),
        _ => None,
    }
}

/// The server side of jsonkv over TCP (and UDP through [`Self::decode_datagram`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonkvServerCodec {
    pub limits: Limits,
}

impl JsonkvServerCodec {
    /// Decodes a UDP datagram; `None` means drop it silently (J2).
    pub fn decode_datagram(&self, datagram: &[u8]) -> Option<RequestPayload> {
        datagram_payload(datagram).map(|p| parse_request_payload(p, &self.limits))
    }

    /// Appends the reply datagram. A reply over 65 507 bytes is replaced by the single 1024
    /// object of §2.2.
    pub fn encode_datagram_response(&self, response: &ResponsePayload, out: &mut BytesMut) {
        let start = out.len();
        self.encode_response(response, out);
        if out.len() - start > MAX_UDP_DATAGRAM {
            out.truncate(start);
            let too_large = Response::error_with(Code::Internal, TOO_LARGE_FOR_UDP, Id::null());
            self.encode_response(&ResponsePayload::Single(too_large), out);
        }
    }
}

impl ServerCodec for JsonkvServerCodec {
    type Request = RequestPayload;
    type Response = ResponsePayload;

    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<RequestPayload>, Reject> {
        Ok(match split_frame(buf, self.limits.max_frame)? {
            Decoded::Frame(payload, used) => {
                Decoded::Frame(parse_request_payload(payload, &self.limits), used)
            }
            Decoded::Incomplete => Decoded::Incomplete,
        })
    }

    fn encode_response(&self, response: &ResponsePayload, out: &mut BytesMut) {
        put_frame(out, |out| write_response_payload(out, response));
    }
}

/// The client side of jsonkv over TCP and UDP.
#[derive(Debug, Clone, Copy)]
pub struct JsonkvClientCodec {
    /// `max_value` is used only to build a too-long value for `Item::Invalid` (1001).
    pub limits: Limits,
}

impl Default for JsonkvClientCodec {
    fn default() -> Self {
        JsonkvClientCodec {
            limits: Limits {
                max_frame: DEFAULT_CLIENT_MAX_FRAME,
                ..Limits::default()
            },
        }
    }
}

impl JsonkvClientCodec {
    /// Decodes a reply datagram; `None` when its length disagrees or it is not a response
    /// (the client then waits or resends).
    pub fn decode_datagram(&self, datagram: &[u8]) -> Option<ResponsePayload> {
        parse_response_payload(datagram_payload(datagram)?, self.limits.max_depth)
    }
}

impl ClientCodec for JsonkvClientCodec {
    type Request = RequestPayload;
    type Response = ResponsePayload;

    fn encode_request(&self, request: &RequestPayload, out: &mut BytesMut) {
        put_frame(out, |out| write_request_payload(out, request, &self.limits));
    }

    fn decode_response(&self, buf: &[u8]) -> Result<Decoded<ResponsePayload>, Reject> {
        Ok(match split_frame(buf, self.limits.max_frame)? {
            Decoded::Frame(payload, used) => Decoded::Frame(
                parse_response_payload(payload, self.limits.max_depth)
                    .ok_or(Reject::new("not a jsonkv response"))?,
                used,
            ),
            Decoded::Incomplete => Decoded::Incomplete,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC 2.0 (§6): bodies only; HTTP is the listener's business
// ---------------------------------------------------------------------------------------------

/// The standard JSON-RPC errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcError {
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    InternalError,
}

impl RpcError {
    pub fn code(self) -> i64 {
        match self {
            RpcError::ParseError => -32700,
            RpcError::InvalidRequest => -32600,
            RpcError::MethodNotFound => -32601,
            RpcError::InvalidParams => -32602,
            RpcError::InternalError => -32603,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            RpcError::ParseError => "Parse error",
            RpcError::InvalidRequest => "Invalid Request",
            RpcError::MethodNotFound => "Method not found",
            RpcError::InvalidParams => "Invalid params",
            RpcError::InternalError => "Internal error",
        }
    }
}

/// What to do with one JSON-RPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcAction {
    /// A valid Put/Get/Delete.
    Execute(Command),
    /// A well-formed call whose key or value breaks a limit: answered in `result` with this
    /// code (1001, 1002), not in `error` [orig].
    Refuse(Code),
    /// Answered with a JSON-RPC `error` object.
    Error(RpcError),
}

/// One JSON-RPC call. `id == None` is a notification: it is executed but never answered.
/// Parse errors and invalid requests always carry an id (`null` when none could be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcCall {
    pub id: Option<Id>,
    pub action: RpcAction,
}

/// A whole JSON-RPC request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcPayload {
    Single(RpcCall),
    Batch(Vec<RpcCall>),
}

/// The id of a call: `Ok(None)` when absent, `Err(())` when present but not a string,
/// number or null.
fn rpc_id(members: &[(String, &[u8])]) -> Result<Option<Id>, ()> {
    match member(members, "id") {
        None => Ok(None),
        Some(raw) => match raw.first() {
            Some(b'"' | b'-' | b'0'..=b'9' | b'n') => Ok(Some(Id::from_raw(raw))),
            _ => Err(()),
        },
    }
}

fn parse_rpc_call(raw: &[u8], limits: &Limits) -> RpcCall {
    let invalid = |id: Option<Id>| RpcCall {
        id: Some(id.unwrap_or_else(Id::null)),
        action: RpcAction::Error(RpcError::InvalidRequest),
    };
    let Some(members) = members(raw) else {
        return invalid(None);
    };
    let Ok(id) = rpc_id(&members) else {
        return invalid(None);
    };
    if member_string(&members, "jsonrpc").as_deref() != Some("2.0") {
        return invalid(id);
    }
    let Some(method) = member_string(&members, "method") else {
        return invalid(id);
    };
    let call = |action| RpcCall {
        id: id.clone(),
        action,
    };
    let Some(op) = [Operate::Put, Operate::Get, Operate::Delete]
        .into_iter()
        .find(|op| op.method() == method)
    else {
        return call(RpcAction::Error(RpcError::MethodNotFound));
    };
    let want = if op == Operate::Put { 2 } else { 1 };
    let params: Option<Vec<String>> = match member_value(&members, "params") {
        Some(Some(Value::Array(params))) if params.len() == want => params
            .into_iter()
            .map(|p| match p {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => None,
    };
    let Some(mut params) = params else {
        return call(RpcAction::Error(RpcError::InvalidParams));
    };
    let value = (op == Operate::Put).then(|| params.pop().unwrap_or_default());
    let key = params.pop().unwrap_or_default();
    if key.is_empty() || key.len() > limits.max_key {
        return call(RpcAction::Refuse(Code::InvalidKey));
    }
    let command = match (op, value) {
        (Operate::Put, Some(value)) if value.len() > limits.max_value => {
            return call(RpcAction::Refuse(Code::ValueTooLong));
        }
        (Operate::Put, value) => Command::Put {
            key,
            value: value.unwrap_or_default(),
        },
        (Operate::Get, _) => Command::Get { key },
        (Operate::Delete, _) => Command::Delete { key },
    };
    call(RpcAction::Execute(command))
}

/// Decodes a JSON-RPC request body (server side). A body that is not JSON gives a single
/// `ParseError` call; an empty batch a single `InvalidRequest`, both with id `null`.
pub fn parse_rpc_request(body: &[u8], limits: &Limits) -> RpcPayload {
    let single_error = |error| {
        RpcPayload::Single(RpcCall {
            id: Some(Id::null()),
            action: RpcAction::Error(error),
        })
    };
    let Some(doc) = document(body, limits.max_depth) else {
        return single_error(RpcError::ParseError);
    };
    match elements(doc) {
        Some(calls) if calls.is_empty() => single_error(RpcError::InvalidRequest),
        Some(calls) => RpcPayload::Batch(
            calls
                .into_iter()
                .map(|c| parse_rpc_call(c, limits))
                .collect(),
        ),
        None => RpcPayload::Single(parse_rpc_call(doc, limits)),
    }
}

fn put_rpc_call(out: &mut BytesMut, call: &RpcCall, limits: &Limits) {
    let (method, params): (&str, Vec<&str>) = match &call.action {
        RpcAction::Execute(Command::Put { key, value }) => ("Put", vec![key, value]),
        RpcAction::Execute(Command::Get { key }) => ("Get", vec![key]),
        RpcAction::Execute(Command::Delete { key }) => ("Delete", vec![key]),
        // The forms below decode back to the same action (hostile tests, fuzzing).
        RpcAction::Refuse(Code::ValueTooLong) => ("Put", vec!["k"]),
        RpcAction::Refuse(_) => ("Get", vec![""]),
        RpcAction::Error(RpcError::MethodNotFound) => ("", vec![]),
        RpcAction::Error(RpcError::InvalidParams) => ("Get", vec![]),
        RpcAction::Error(RpcError::ParseError) => {
            out.put_slice(b"?");
            return;
        }
        RpcAction::Error(_) => {
            out.put_slice(b"{");
            if let Some(id) = &call.id {
                out.put_slice(b"\"id\":");
                out.put_slice(id.as_json().as_bytes());
            }
            out.put_slice(b"}");
            return;
        }
    };
    out.put_slice(b"{\"jsonrpc\":\"2.0\",\"method\":");
    put_str(out, method);
    out.put_slice(b",\"params\":[");
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        put_str(out, p);
    }
    if call.action == RpcAction::Refuse(Code::ValueTooLong) {
        out.put_slice(b",\"");
        out.put_bytes(b'x', limits.max_value.saturating_add(1));
        out.put_u8(b'"');
    }
    out.put_u8(b']');
    if let Some(id) = &call.id {
        out.put_slice(b",\"id\":");
        out.put_slice(id.as_json().as_bytes());
    }
    out.put_u8(b'}');
}

/// Encodes a JSON-RPC request body (client side); positional params.
pub fn encode_rpc_request(payload: &RpcPayload, limits: &Limits) -> Vec<u8> {
    let mut out = BytesMut::new();
    match payload {
        RpcPayload::Single(call) => put_rpc_call(&mut out, call, limits),
        RpcPayload::Batch(calls) => {
            out.put_u8(b'[');
            for (i, call) in calls.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                put_rpc_call(&mut out, call, limits);
            }
            out.put_u8(b']');
        }
    }
    out.to_vec()
}

/// The outcome part of a JSON-RPC response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcOutcome {
    /// `result`: numeric code, message, and the value of a successful Get.
    Result {
        code: i64,
        message: String,
        value: Option<String>,
    },
    /// `error`: a standard JSON-RPC error.
    Error { code: i64, message: String },
}

/// One JSON-RPC response object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcResponse {
    pub outcome: RpcOutcome,
    pub id: Id,
}

impl RpcResponse {
    /// Success of `op`; `value` only for Get.
    pub fn success(op: Operate, value: Option<String>, id: Id) -> RpcResponse {
        RpcResponse {
            outcome: RpcOutcome::Result {
                code: 0,
                message: op.success_message().into(),
                value,
            },
            id,
        }
    }

    /// A key-value error (1000, 1001, 1002, 1024), in `result`.
    pub fn refused(code: Code, id: Id) -> RpcResponse {
        RpcResponse::refused_with(code, code.message(), id)
    }

    pub fn refused_with(code: Code, message: &str, id: Id) -> RpcResponse {
        RpcResponse {
            outcome: RpcOutcome::Result {
                code: i64::from(code.number()),
                message: message.into(),
                value: None,
            },
            id,
        }
    }

    /// A JSON-RPC `error`.
    pub fn error(error: RpcError, id: Id) -> RpcResponse {
        RpcResponse {
            outcome: RpcOutcome::Error {
                code: error.code(),
                message: error.message().into(),
            },
            id,
        }
    }
}

/// A whole JSON-RPC response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcResponsePayload {
    Single(RpcResponse),
    Batch(Vec<RpcResponse>),
}

impl RpcResponsePayload {
    /// The body for the answers to a request payload (only calls with an id are answered);
    /// `None` when nothing needs an answer: HTTP `204 No Content`.
    pub fn for_answers(batch: bool, mut answers: Vec<RpcResponse>) -> Option<RpcResponsePayload> {
        if answers.is_empty() {
            None
        } else if batch {
            Some(RpcResponsePayload::Batch(answers))
        } else {
            answers.pop().map(RpcResponsePayload::Single)
        }
    }
}

fn put_rpc_response(out: &mut BytesMut, r: &RpcResponse) {
    out.put_slice(b"{\"jsonrpc\":\"2.0\",");
    match &r.outcome {
        RpcOutcome::Result {
            code,
            message,
            value,
        } => {
            out.put_slice(format!("\"result\":{{\"code\":{code},\"message\":").as_bytes());
            put_str(out, message);
            if let Some(value) = value {
                out.put_slice(b",\"value\":");
                put_str(out, value);
            }
        }
        RpcOutcome::Error { code, message } => {
            out.put_slice(format!("\"error\":{{\"code\":{code},\"message\":").as_bytes());
            put_str(out, message);
        }
    }
    out.put_slice(b"},\"id\":");
    out.put_slice(r.id.as_json().as_bytes());
    out.put_u8(b'}');
}

/// Encodes a JSON-RPC response body (server side).
pub fn encode_rpc_response(payload: &RpcResponsePayload) -> Vec<u8> {
    let mut out = BytesMut::new();
    match payload {
        RpcResponsePayload::Single(r) => put_rpc_response(&mut out, r),
        RpcResponsePayload::Batch(rs) => {
            out.put_u8(b'[');
            for (i, r) in rs.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                put_rpc_response(&mut out, r);
            }
            out.put_u8(b']');
        }
    }
    out.to_vec()
}

fn parse_rpc_response_object(raw: &[u8]) -> Option<RpcResponse> {
    let outer = members(raw)?;
    let id = read_id(&outer);
    let int = |v: Option<Option<Value>>| v??.as_i64();
    let string = |v: Option<Option<Value>>| match v?? {
        Value::String(s) => Some(s),
        _ => None,
    };
    if let Some(result) = member(&outer, "result") {
        let result = members(result)?;
        let value = match member_value(&result, "value") {
            None => None,
            Some(v) => Some(string(Some(v))?),
        };
        return Some(RpcResponse {
            outcome: RpcOutcome::Result {
                code: int(member_value(&result, "code"))?,
                message: string(member_value(&result, "message"))?,
                value,
            },
            id,
        });
    }
    let error = members(member(&outer, "error")?)?;
    Some(RpcResponse {
        outcome: RpcOutcome::Error {
            code: int(member_value(&error, "code"))?,
            message: string(member_value(&error, "message"))?,
        },
        id,
    })
}

/// Decodes a JSON-RPC response body (client side).
pub fn parse_rpc_response(body: &[u8], max_depth: usize) -> Option<RpcResponsePayload> {
    let doc = document(body, max_depth)?;
    match elements(doc) {
        Some(rs) => Some(RpcResponsePayload::Batch(
            rs.into_iter()
                .map(parse_rpc_response_object)
                .collect::<Option<_>>()?,
        )),
        None => Some(RpcResponsePayload::Single(parse_rpc_response_object(doc)?)),
    }
}

// ---------------------------------------------------------------------------------------------
// jsonagent (§7)
// ---------------------------------------------------------------------------------------------

/// The protocols a server can be listed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerProtocol {
    Tcp,
    Udp,
    Rpc,
}

impl ServerProtocol {
    /// Case-insensitive.
    pub fn parse(text: &str) -> Option<ServerProtocol> {
        [
            ServerProtocol::Tcp,
            ServerProtocol::Udp,
            ServerProtocol::Rpc,
        ]
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(text))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServerProtocol::Tcp => "tcp",
            ServerProtocol::Udp => "udp",
            ServerProtocol::Rpc => "rpc",
        }
    }
}

/// The agent codes of §7.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCode {
    Success,
    UnsupportedVersion,
    InvalidOperate,
    RegisterFailed,
    AlreadyRemoved,
    NoServerAlive,
    InvalidParameters,
}

impl AgentCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentCode::Success => "0",
            AgentCode::UnsupportedVersion => "800",
            AgentCode::InvalidOperate => "900",
            AgentCode::RegisterFailed => "901",
            AgentCode::AlreadyRemoved => "902",
            AgentCode::NoServerAlive => "903",
            AgentCode::InvalidParameters => "905",
        }
    }

    /// The error message (success messages depend on the request).
    pub fn message(self) -> &'static str {
        match self {
            AgentCode::Success => "success",
            AgentCode::UnsupportedVersion => "unsupported protocol version",
            AgentCode::InvalidOperate => "invalid operate",
            AgentCode::RegisterFailed => "register failed",
            AgentCode::AlreadyRemoved => "server already removed",
            AgentCode::NoServerAlive => "no server alive",
            AgentCode::InvalidParameters => "invalid parameters",
        }
    }
}

/// An agent request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRequest {
    /// At least one port is present.
    Register {
        address: String,
        tcpport: Option<u16>,
        rpcport: Option<u16>,
        udpport: Option<u16>,
    },
    Unregister,
    GetServerList {
        protocol: ServerProtocol,
    },
    /// Answered with `code` (800, 900 or 905).
    Invalid {
        code: AgentCode,
    },
}

/// One entry of a server list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    pub nodeid: u64,
    pub address: String,
    pub port: u16,
}

/// The `value` of an agent result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentValue {
    /// No `value` member.
    None,
    /// A register's node id, as the decimal string the wire carries.
    NodeId(String),
    Servers(Vec<ServerEntry>),
}

/// An agent response (§7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentResponse {
    pub value: AgentValue,
    pub code: String,
    pub message: String,
}

impl AgentResponse {
    pub fn registered(nodeid: u64) -> AgentResponse {
        AgentResponse {
            value: AgentValue::NodeId(nodeid.to_string()),
            code: "0".into(),
            message: "register success".into(),
        }
    }

    pub fn unregistered() -> AgentResponse {
        AgentResponse {
            value: AgentValue::None,
            code: "0".into(),
            message: "unregister success".into(),
        }
    }

    /// The list (sorted by the caller); an empty list is 903 `no server alive`.
    pub fn server_list(servers: Vec<ServerEntry>) -> AgentResponse {
        if servers.is_empty() {
            return AgentResponse::error(AgentCode::NoServerAlive);
        }
        AgentResponse {
            value: AgentValue::Servers(servers),
            code: "0".into(),
            message: "get server list success".into(),
        }
    }

    pub fn error(code: AgentCode) -> AgentResponse {
        AgentResponse {
            value: AgentValue::None,
            code: code.as_str().into(),
            message: code.message().into(),
        }
    }

    pub fn is_success(&self) -> bool {
        self.code == "0"
    }
}

/// A port: a JSON integer or a string of decimal digits, 1–65 535.
fn agent_port(value: Option<Option<Value>>) -> Result<Option<u16>, ()> {
    let Some(value) = value else {
        return Ok(None);
    };
    let n = match value.ok_or(())? {
        Value::Number(n) => n.as_u64().ok_or(())?,
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().map_err(|_| ())?
        }
        _ => return Err(()),
    };
    match u16::try_from(n) {
        Ok(port) if port >= 1 => Ok(Some(port)),
        _ => Err(()),
    }
}

/// Decodes an agent payload (server side).
pub fn parse_agent_request(payload: &[u8], max_depth: usize) -> AgentRequest {
    let invalid = |code| AgentRequest::Invalid { code };
    let Some(members) = document(payload, max_depth).and_then(members) else {
        return invalid(AgentCode::InvalidParameters);
    };
    match member_value(&members, "jsonagent") {
        None => return invalid(AgentCode::InvalidParameters),
        Some(Some(Value::String(v))) if v == VERSION => {}
        Some(_) => return invalid(AgentCode::UnsupportedVersion),
    }
    let operate = member_string(&members, "operate").unwrap_or_default();
    if operate.eq_ignore_ascii_case("register") {
        let address = match member_string(&members, "address") {
            Some(a) if !a.is_empty() && a.len() <= MAX_AGENT_ADDRESS => a,
            _ => return invalid(AgentCode::InvalidParameters),
        };
        let ports = (
            agent_port(member_value(&members, "tcpport")),
            agent_port(member_value(&members, "rpcport")),
            agent_port(member_value(&members, "udpport")),
        );
        match ports {
            (Ok(tcpport), Ok(rpcport), Ok(udpport))
                if tcpport.is_some() || rpcport.is_some() || udpport.is_some() =>
            {
                AgentRequest::Register {
                    address,
                    tcpport,
                    rpcport,
                    udpport,
                }
            }
            _ => invalid(AgentCode::InvalidParameters),
        }
    } else if operate.eq_ignore_ascii_case("unregister") {
        AgentRequest::Unregister
    } else if operate.eq_ignore_ascii_case("getserverlist") {
        match member_string(&members, "protocol")
            .as_deref()
            .and_then(ServerProtocol::parse)
        {
            Some(protocol) => AgentRequest::GetServerList { protocol },
            None => invalid(AgentCode::InvalidParameters),
        }
    } else {
        invalid(AgentCode::InvalidOperate)
    }
}

/// Appends the JSON of an agent request (client side).
pub fn write_agent_request(out: &mut BytesMut, request: &AgentRequest) {
    match request {
        AgentRequest::Register {
            address,
            tcpport,
            rpcport,
            udpport,
        } => {
            out.put_slice(b"{\"jsonagent\":\"1.0\",\"operate\":\"register\",\"address\":");
            put_str(out, address);
            for (name, port) in [
                ("tcpport", tcpport),
                ("rpcport", rpcport),
                ("udpport", udpport),
            ] {
                if let Some(port) = port {
                    out.put_slice(format!(",\"{name}\":{port}").as_bytes());
                }
            }
            out.put_u8(b'}');
        }
        AgentRequest::Unregister => {
            out.put_slice(b"{\"jsonagent\":\"1.0\",\"operate\":\"unregister\"}");
        }
        AgentRequest::GetServerList { protocol } => {
            out.put_slice(b"{\"jsonagent\":\"1.0\",\"operate\":\"getserverlist\",\"protocol\":\"");
            out.put_slice(protocol.as_str().as_bytes());
            out.put_slice(b"\"}");
        }
        // Objects that decode back to the same code (hostile tests, fuzzing).
        AgentRequest::Invalid { code } => out.put_slice(match code {
            AgentCode::UnsupportedVersion => b"{\"jsonagent\":\"2.0\"}".as_slice(),
            AgentCode::InvalidOperate => b"{\"jsonagent\":\"1.0\"}",
            _ => b"{}",
        }),
    }
}

/// Appends the JSON of an agent response: members in the order of §7.2.
pub fn write_agent_response(out: &mut BytesMut, response: &AgentResponse) {
    out.put_slice(b"{\"jsonagent\":\"1.0\",\"result\":{");
    match &response.value {
        AgentValue::None => {}
        AgentValue::NodeId(id) => {
            out.put_slice(b"\"value\":");
            put_str(out, id);
            out.put_u8(b',');
        }
        AgentValue::Servers(servers) => {
            out.put_slice(b"\"value\":[");
            for (i, s) in servers.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                out.put_slice(format!("{{\"nodeid\":{},\"address\":", s.nodeid).as_bytes());
                put_str(out, &s.address);
                out.put_slice(format!(",\"port\":{}}}", s.port).as_bytes());
            }
            out.put_slice(b"],");
        }
    }
    out.put_slice(b"\"code\":");
    put_str(out, &response.code);
    out.put_slice(b",\"message\":");
    put_str(out, &response.message);
    out.put_slice(b"}}");
}

fn parse_server_entry(raw: &[u8]) -> Option<ServerEntry> {
    let m = members(raw)?;
    let number = |v: Value| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    Some(ServerEntry {
        // The seed's own example lists entries without a node id.
        nodeid: match member_value(&m, "nodeid") {
            None => 0,
            Some(v) => number(v?)?,
        },
        address: member_string(&m, "address")?,
        port: u16::try_from(number(member_value(&m, "port")??)?).ok()?,
    })
}

/// Decodes an agent response payload (client side).
pub fn parse_agent_response(payload: &[u8], max_depth: usize) -> Option<AgentResponse> {
    let outer = members(document(payload, max_depth)?)?;
    let result = members(member(&outer, "result")?)?;
    let value = match member(&result, "value") {
        None => AgentValue::None,
        Some(raw) => match raw.first()? {
            b'[' => AgentValue::Servers(
                elements(raw)?
                    .into_iter()
                    .map(parse_server_entry)
                    .collect::<Option<_>>()?,
            ),
            b'n' => AgentValue::None,
            _ => AgentValue::NodeId(text_of(serde_json::from_slice(raw).ok()?)?),
        },
    };
    Some(AgentResponse {
        value,
        code: text_of(member_value(&result, "code")??)?,
        message: match member_value(&result, "message") {
            None => String::new(),
            Some(v) => text_of(v?)?,
        },
    })
}

/// The server side of jsonagent (TCP, same framing as jsonkv).
#[derive(Debug, Clone, Copy)]
pub struct AgentServerCodec {
    pub max_frame: usize,
    pub max_depth: usize,
}

impl Default for AgentServerCodec {
    fn default() -> Self {
        AgentServerCodec {
            max_frame: DEFAULT_MAX_FRAME,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl ServerCodec for AgentServerCodec {
    type Request = AgentRequest;
    type Response = AgentResponse;

    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<AgentRequest>, Reject> {
        Ok(match split_frame(buf, self.max_frame)? {
            Decoded::Frame(payload, used) => {
                Decoded::Frame(parse_agent_request(payload, self.max_depth), used)
            }
            Decoded::Incomplete => Decoded::Incomplete,
        })
    }

    fn encode_response(&self, response: &AgentResponse, out: &mut BytesMut) {
        put_frame(out, |out| write_agent_response(out, response));
    }
}

/// The client side of jsonagent.
#[derive(Debug, Clone, Copy)]
pub struct AgentClientCodec {
    pub max_frame: usize,
    pub max_depth: usize,
}

impl Default for AgentClientCodec {
    fn default() -> Self {
        AgentClientCodec {
            max_frame: DEFAULT_CLIENT_MAX_FRAME,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl ClientCodec for AgentClientCodec {
    type Request = AgentRequest;
    type Response = AgentResponse;

    fn encode_request(&self, request: &AgentRequest, out: &mut BytesMut) {
        put_frame(out, |out| write_agent_request(out, request));
    }

    fn decode_response(&self, buf: &[u8]) -> Result<Decoded<AgentResponse>, Reject> {
        Ok(match split_frame(buf, self.max_frame)? {
            Decoded::Frame(payload, used) => Decoded::Frame(
                parse_agent_response(payload, self.max_depth)
                    .ok_or(Reject::new("not a jsonagent response"))?,
                used,
            ),
            Decoded::Incomplete => Decoded::Incomplete,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz bodies
// ---------------------------------------------------------------------------------------------

/// Fuzz body for everything a server decodes: jsonkv frames, datagrams and payloads, JSON-RPC
/// bodies and agent payloads. Every decoded request is re-encoded by the client side and must
/// decode to the same request.
pub fn fuzz_server(data: &[u8]) {
    let server = JsonkvServerCodec::default();
    let client = JsonkvClientCodec::default();
    let limits = server.limits;
    let mut rest = data;
    while let Ok(Decoded::Frame(request, used)) = server.decode_request(rest) {
        assert!(used >= HEADER_LEN && used <= rest.len());
        let mut out = BytesMut::new();
        client.encode_request(&request, &mut out);
        // The canonical encoding can be longer than the input (`1` becomes `{}`).
        if out.len() <= limits.max_frame {
            assert_eq!(
                server.decode_request(&out),
                Ok(Decoded::Frame(request, out.len()))
            );
        }
        rest = &rest[used..];
    }
    if let Some(request) = server.decode_datagram(data) {
        let mut out = BytesMut::new();
        client.encode_request(&request, &mut out);
        assert_eq!(server.decode_datagram(&out), Some(request));
    }
    let request = parse_request_payload(data, &limits);
    let mut out = BytesMut::new();
    write_request_payload(&mut out, &request, &limits);
    assert_eq!(parse_request_payload(&out, &limits), request);

    let call = parse_rpc_request(data, &limits);
    let body = encode_rpc_request(&call, &limits);
    assert_eq!(parse_rpc_request(&body, &limits), call);

    let agent = parse_agent_request(data, DEFAULT_MAX_DEPTH);
    let mut out = BytesMut::new();
    write_agent_request(&mut out, &agent);
    assert_eq!(parse_agent_request(&out, DEFAULT_MAX_DEPTH), agent);
}

/// Fuzz body for everything a client decodes: jsonkv frames and datagrams, JSON-RPC bodies
/// and agent payloads, each checked to round-trip through the server-side encoder.
pub fn fuzz_client(data: &[u8]) {
    let server = JsonkvServerCodec::default();
    let client = JsonkvClientCodec::default();
    let mut rest = data;
    while let Ok(Decoded::Frame(response, used)) = client.decode_response(rest) {
        assert!(used >= HEADER_LEN && used <= rest.len());
        let mut out = BytesMut::new();
        server.encode_response(&response, &mut out);
        assert_eq!(
            client.decode_response(&out),
            Ok(Decoded::Frame(response, out.len()))
        );
        rest = &rest[used..];
    }
    if let Some(response) = client.decode_datagram(data) {
        let mut out = BytesMut::new();
        server.encode_response(&response, &mut out);
        assert_eq!(client.decode_datagram(&out), Some(response));
    }
    if let Some(response) = parse_rpc_response(data, DEFAULT_MAX_DEPTH) {
        let body = encode_rpc_response(&response);
        assert_eq!(parse_rpc_response(&body, DEFAULT_MAX_DEPTH), Some(response));
    }
    if let Some(response) = parse_agent_response(data, DEFAULT_MAX_DEPTH) {
        let mut out = BytesMut::new();
        write_agent_response(&mut out, &response);
        assert_eq!(
            parse_agent_response(&out, DEFAULT_MAX_DEPTH),
            Some(response)
        );
    }
}

#[cfg(test)]
mod tests;
