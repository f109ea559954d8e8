//! jsonkv requests and responses (§3, §4) and the jsonkv codecs.

use std::borrow::Cow;

use super::*;

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
    /// Borrowed when it is one of this module's: a server's reply allocates neither.
    pub code: Cow<'static, str>,
    pub message: Cow<'static, str>,
    pub id: Id,
}

impl Response {
    /// Success of `op`; `value` is the stored value for get, empty otherwise.
    pub fn success(op: Operate, value: String, id: Id) -> Response {
        Response {
            value,
            code: Cow::Borrowed(Code::Success.as_str()),
            message: Cow::Borrowed(op.success_message()),
            id,
        }
    }

    /// An error with the standard message of `code`.
    pub fn error(code: Code, id: Id) -> Response {
        Response::error_with(code, code.message(), id)
    }

    /// An error with a specific message (1024 `value is not valid UTF-8`).
    pub fn error_with(code: Code, message: &'static str, id: Id) -> Response {
        Response {
            value: String::new(),
            code: Cow::Borrowed(code.as_str()),
            message: Cow::Borrowed(message),
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
pub(super) fn parse_item(raw: &[u8], limits: &Limits) -> Item {
    match members(raw) {
        Some(members) => parse_fields(&RequestFields::from_members(&members), limits),
        None => Item::Invalid {
            code: Code::Malformed,
            id: Id::null(),
        },
    }
}

/// [`parse_item`] of an object already reduced to the members it reads.
fn parse_fields(fields: &RequestFields<'_>, limits: &Limits) -> Item {
    let id = fields.id.map_or_else(Id::null, Id::from_raw);
    let invalid = |code| Item::Invalid {
        code,
        id: id.clone(),
    };
    match fields.jsonkv {
        None => return invalid(Code::Malformed),
        // The usual spelling, compared as it stands.
        Some(b"\"1.0\"") => {}
        Some(raw) => match fields.text(raw) {
            Some(v) if v == VERSION => {}
            // Present but not the string "1.0", whatever its type (§3.3 row 800).
            _ => return invalid(Code::UnsupportedVersion),
        },
    }
    let op = match fields.operate {
        Some(b"\"get\"") => Operate::Get,
        Some(b"\"put\"") => Operate::Put,
        Some(b"\"delete\"") => Operate::Delete,
        Some(raw) => match fields.text(raw).map(|op| Operate::parse(&op)) {
            Some(Some(op)) => op,
            Some(None) => return invalid(Code::InvalidOperate),
            None => return invalid(Code::Malformed),
        },
        None => return invalid(Code::Malformed),
    };
    let key = match fields.key.and_then(|raw| fields.text(raw)) {
        Some(key) if !key.is_empty() && key.len() <= limits.max_key => key.into_owned(),
        _ => return invalid(Code::InvalidKey),
    };
    let command = match op {
        Operate::Put => {
            let Some(value) = fields.value.and_then(|raw| fields.text(raw)) else {
                return invalid(Code::Malformed);
            };
            if value.len() > limits.max_value {
                return invalid(Code::ValueTooLong);
            }
            Command::Put {
                key,
                value: value.into_owned(),
            }
        }
        Operate::Get => Command::Get { key },
        Operate::Delete => Command::Delete { key },
    };
    Item::Command { command, id }
}

/// Decodes a jsonkv request payload (the JSON after the header).
pub fn decode_request_payload(payload: &[u8], limits: &Limits) -> RequestPayload {
    if let Some(item) = decode_canonical_request(payload, limits) {
        return RequestPayload::Single(item);
    }
    match decode_plain_request(payload, limits) {
        Some(item) => RequestPayload::Single(item),
        None => decode_request_payload_parsed(payload, limits),
    }
}

/// A get or put exactly as [`put_item`] writes it for an ASCII key and value with nothing to
/// escape and an integer id (`{"jsonkv":"1.0","operate":"get","key":"k","id":1}`, a put's
/// `value` after its key, no `id` when it is null), read by matching that text instead of
/// walking the members; valid and in limits, else `None` and the plain reader decides. A fuzz
/// check holds it to the plain reader's result.
pub(super) fn decode_canonical_request(payload: &[u8], limits: &Limits) -> Option<Item> {
    const HEAD: &[u8; 27] = b"{\"jsonkv\":\"1.0\",\"operate\":\"";
    if limits.max_depth == 0 {
        return None;
    }
    let rest = after(payload, HEAD)?;
    let (op, rest) = match after(rest, b"get\",\"key\":\"") {
        Some(rest) => (Operate::Get, rest),
        None => (Operate::Put, after(rest, b"put\",\"key\":\"")?),
    };
    let (key, rest) = canonical_string(rest)?;
    let (value, rest) = match op {
        Operate::Put => {
            let (value, rest) = canonical_string(after(rest, b",\"value\":\"")?)?;
            (Some(value), rest)
        }
        _ => (None, rest),
    };
    let id = match rest {
        b"}" => Id::null(),
        _ => {
            let number = after(rest, b",\"id\":")?.strip_suffix(b"}")?;
            is_integer(number).then(|| Id::from_integer(number))?
        }
    };
    if key.is_empty() || key.len() > limits.max_key {
        return None;
    }
    let command = match value {
        Some(value) if value.len() > limits.max_value => return None,
        Some(value) => Command::put(key, value),
        None => Command::get(key),
    };
    Some(Item::Command { command, id })
}

/// `text` after `prefix`, if it starts so. A fixed-size compare: the compiler inlines it,
/// where `strip_prefix` called `memcmp` (3 % of the server per jsonkv GET).
#[inline(always)]
pub(super) fn after<'a, const N: usize>(text: &'a [u8], prefix: &[u8; N]) -> Option<&'a [u8]> {
    let (head, rest) = text.split_first_chunk::<N>()?;
    (head == prefix).then_some(rest)
}

/// The inside of an ASCII string without escapes that starts `text` (after its opening
/// quote), and the text after its closing quote.
fn canonical_string(text: &[u8]) -> Option<(&str, &[u8])> {
    let (end, true) = plain_string_end(text, 0)? else {
        return None;
    };
    let inside = std::str::from_utf8(text.get(..end)?).ok()?;
    Some((inside, text.get(end + 1..)?))
}

/// `-?(0|[1-9][0-9]*)`, all of `text`.
pub(super) fn is_integer(text: &[u8]) -> bool {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    match digits {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// The common request, one flat object of plain members ([`plain_members`]), read without
/// the JSON parser; `None` for any other payload.
pub(super) fn decode_plain_request(payload: &[u8], limits: &Limits) -> Option<Item> {
    if limits.max_depth == 0 {
        return None;
    }
    // The plain reader checks that the text is UTF-8 itself, string by string.
    let fields = RequestFields::plain(trim_ws(payload))?;
    Some(parse_fields(&fields, limits))
}

/// [`decode_request_payload`] through the JSON parser: any payload.
pub(super) fn decode_request_payload_parsed(payload: &[u8], limits: &Limits) -> RequestPayload {
    // Invalid syntax is found by the parse below (and is just as malformed).
    let Some(doc) = document_to_parse(payload, limits.max_depth) else {
        return RequestPayload::Malformed;
    };
    match doc.first() {
        Some(b'{') => match members(doc) {
            Some(members) => {
                RequestPayload::Single(parse_fields(&RequestFields::from_members(&members), limits))
            }
            None => RequestPayload::Malformed,
        },
        Some(b'[') => match elements(doc) {
            Some(items) if !items.is_empty() => {
                RequestPayload::Batch(items.into_iter().map(|e| parse_item(e, limits)).collect())
            }
            _ => RequestPayload::Malformed,
        },
        _ => RequestPayload::Malformed,
    }
}

pub(super) fn put_item(out: &mut BytesMut, item: &Item, limits: &Limits) {
    let put_id = |out: &mut BytesMut, id: &Id, first: bool| {
        if !id.is_null() {
            out.put_slice(if first { b"\"id\":" } else { b",\"id\":" });
            out.put_slice(id.json_bytes());
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
pub fn encode_request_payload(out: &mut BytesMut, payload: &RequestPayload, limits: &Limits) {
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

pub(super) fn put_response(out: &mut BytesMut, r: &Response) {
    out.put_slice(b"{\"jsonkv\":\"1.0\",\"result\":{\"value\":");
    put_str(out, &r.value);
    out.put_slice(b",\"code\":");
    put_str(out, &r.code);
    out.put_slice(b",\"message\":");
    put_str(out, &r.message);
    out.put_slice(b"},\"id\":");
    out.put_slice(r.id.json_bytes());
    out.put_u8(b'}');
}

/// Appends the JSON of a response payload: compact, members in the order of §3.2.
pub fn encode_response_payload(out: &mut BytesMut, payload: &ResponsePayload) {
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
pub(super) fn text_of(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn parse_response(raw: &[u8]) -> Option<Response> {
    parse_response_members(members(raw)?, members)
}

/// A response from its outer members; `members` splits the `result` object.
fn parse_response_members<'a>(
    outer: Members<'a>,
    members: impl Fn(&'a [u8]) -> Option<Members<'a>>,
) -> Option<Response> {
    let result = members(member(&outer, "result")?)?;
    let value = match member(&result, "value") {
        // A raw value is compact: `null` is its only spelling.
        None | Some(b"null") => String::new(),
        Some(_) => member_text(&result, "value")??,
    };
    Some(Response {
        value,
        code: Cow::Owned(member_text(&result, "code")??),
        message: match member_text(&result, "message") {
            None => Cow::Borrowed(""),
            Some(v) => Cow::Owned(v?),
        },
        id: read_id(&outer),
    })
}

/// The member `name` as text ([`text_of`]): `None` when absent, `Some(None)` when neither a
/// string nor a number. A string without escapes is taken without parsing it again.
fn member_text(members: &[(Cow<'_, str>, &[u8])], name: &str) -> Option<Option<String>> {
    match member_str(members, name)? {
        Some(text) => Some(Some(text.into_owned())),
        None => Some(member_value(members, name)?.and_then(text_of)),
    }
}

/// Decodes a response payload (client side); `None` when it is not a jsonkv response.
pub fn decode_response_payload(payload: &[u8], max_depth: usize) -> Option<ResponsePayload> {
    if let Some(response) = decode_plain_response(payload, max_depth) {
        return Some(ResponsePayload::Single(response));
    }
    decode_response_payload_parsed(payload, max_depth)
}

/// The common response, one object of plain members whose `result` is one too
/// ([`plain_members`]), read without the JSON parser; `None` for any other payload, and for a
/// plain object that is not a response (the parser then decides the same).
pub(super) fn decode_plain_response(payload: &[u8], max_depth: usize) -> Option<Response> {
    if max_depth < 2 {
        return None;
    }
    let outer = plain_members(trim_ws(payload), true)?;
    parse_response_members(outer, |raw| plain_members(raw, false))
}

/// [`decode_response_payload`] through the JSON parser: any payload.
pub(super) fn decode_response_payload_parsed(
    payload: &[u8],
    max_depth: usize,
) -> Option<ResponsePayload> {
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
        datagram_payload(datagram).map(|p| decode_request_payload(p, &self.limits))
    }

    /// Appends the reply datagram. A reply over 65 507 bytes is replaced by the single 1024
    /// object of §2.2.
    pub fn encode_datagram_response(&self, response: &ServerReply, out: &mut BytesMut) {
        let start = out.len();
        self.encode_response(response, out);
        if out.len() - start > MAX_UDP_DATAGRAM {
            out.truncate(start);
            let too_large = Response::error_with(Code::Internal, TOO_LARGE_FOR_UDP, Id::null());
            self.encode_response(&ResponsePayload::Single(too_large).into(), out);
        }
    }
}

impl ServerCodec for JsonkvServerCodec {
    type Request = ServerRequest;
    type Response = ServerReply;

    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<ServerRequest>, Reject> {
        Ok(match split_frame(buf, self.limits.max_frame)? {
            Decoded::Frame(payload, used) => {
                Decoded::Frame(decode_server_request(payload, &self.limits), used)
            }
            Decoded::Incomplete => Decoded::Incomplete,
        })
    }

    fn encode_response(&self, response: &ServerReply, out: &mut BytesMut) {
        match response {
            ServerReply::Payload(payload) => {
                put_frame(out, |out| encode_response_payload(out, payload))
            }
            ServerReply::Got { value, id } => put_got_frame(out, value, id),
        }
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
        decode_response_payload(datagram_payload(datagram)?, self.limits.max_depth)
    }
}

impl ClientCodec for JsonkvClientCodec {
    type Request = RequestPayload;
    type Response = ResponsePayload;

    fn encode_request(&self, request: &RequestPayload, out: &mut BytesMut) {
        put_frame(out, |out| {
            encode_request_payload(out, request, &self.limits)
        });
    }

    fn decode_response(&self, buf: &[u8]) -> Result<Decoded<ResponsePayload>, Reject> {
        Ok(match split_frame(buf, self.limits.max_frame)? {
            Decoded::Frame(payload, used) => Decoded::Frame(
                decode_response_payload(payload, self.limits.max_depth)
                    .ok_or(Reject::new("not a jsonkv response"))?,
                used,
            ),
            Decoded::Incomplete => Decoded::Incomplete,
        })
    }
}
