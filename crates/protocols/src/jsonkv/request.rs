//! What a jsonkv server reads over TCP: any [`RequestPayload`], or the common get, read in
//! one pass ([`ServerRequest::Get`]). The client, the UDP codec, JSON-RPC and the fuzz bodies
//! keep [`RequestPayload`]; only the server's reading of the usual request skips building a
//! [`Command`] (and the key's `String`).

use super::*;

/// The longest key a [`GetKey`] holds (inline, so reading a get allocates nothing).
pub const GET_KEY_INLINE: usize = 48;

/// A get's key: printable ASCII without a quote or a backslash (its JSON string is its text),
/// 1 to [`GET_KEY_INLINE`] bytes, held inline at the end of `bytes` (what comes before it is
/// not part of the key).
///
/// Laid out for moves: word-aligned, the key's bytes first, its length a whole word (moving
/// a request copies it in wide words, and a byte-wise layout made the copies stall).
#[derive(Clone)]
#[repr(C, align(16))]
pub struct GetKey {
    bytes: [u8; GET_KEY_INLINE],
    len: usize,
}

impl GetKey {
    /// The key that ends `text` and is `len` bytes long, already known to be plain ASCII:
    /// only its length is checked. When `text` has at least [`GET_KEY_INLINE`] bytes, its last
    /// ones are copied as one fixed-size block (a few wide moves, where a `memcpy` of the key's
    /// length wrote bytes that the request's later moves read back as words, and stalled).
    fn ending_at(text: &[u8], len: usize) -> Option<GetKey> {
        let start = end_minus(text, len)?;
        if len == 0 || len > GET_KEY_INLINE {
            return None;
        }
        let mut bytes = [0; GET_KEY_INLINE];
        match end_minus(text, GET_KEY_INLINE).and_then(|from| text.get(from..)?.first_chunk()) {
            Some(block) => bytes = *block,
            None => bytes[GET_KEY_INLINE - len..].copy_from_slice(text.get(start..)?),
        }
        Some(GetKey { bytes, len })
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[GET_KEY_INLINE - self.len..]
    }

    /// The key as text (ASCII by construction).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// Where the last `n` bytes of `text` start.
fn end_minus(text: &[u8], n: usize) -> Option<usize> {
    text.len().checked_sub(n)
}

impl PartialEq for GetKey {
    fn eq(&self, other: &GetKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for GetKey {}

impl std::fmt::Debug for GetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GetKey").field(&self.as_str()).finish()
    }
}

/// A jsonkv request as the TCP server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerRequest {
    /// `{"jsonkv":"1.0","operate":"get","key":KEY}` with an integer `id` or none, exactly as
    /// the client codec writes it: the same request as
    /// `Single(Item::Command { command: Command::Get { key }, id })`.
    Get { key: GetKey, id: Id },
    /// Anything else, as [`decode_request_payload`] reads it.
    Payload(RequestPayload),
}

impl From<RequestPayload> for ServerRequest {
    fn from(payload: RequestPayload) -> ServerRequest {
        ServerRequest::Payload(payload)
    }
}

impl ServerRequest {
    /// The same request as a [`RequestPayload`] (what [`decode_request_payload`] reads).
    pub fn into_payload(self) -> RequestPayload {
        match self {
            ServerRequest::Get { key, id } => RequestPayload::Single(Item::Command {
                command: Command::get(key.as_str()),
                id,
            }),
            ServerRequest::Payload(payload) => payload,
        }
    }
}

/// Decodes a request payload as the server reads it: the common get in one pass
/// ([`decode_fast_get`]), anything else through [`decode_request_payload`]. Always the same
/// request as [`decode_request_payload`] (a property test and the fuzz body check it).
pub fn decode_server_request(payload: &[u8], limits: &Limits) -> ServerRequest {
    match decode_fast_get(payload, limits) {
        Some((key, id)) => ServerRequest::Get { key, id },
        None => ServerRequest::Payload(decode_request_payload(payload, limits)),
    }
}

/// The get the client codec writes for a plain ASCII key and an integer id (or none):
/// `{"jsonkv":"1.0","operate":"get","key":"KEY","id":ID}` (or `…"KEY"}`), nothing before or
/// after it, the key within the limits and [`GET_KEY_INLINE`]. One pass: a fixed-size compare
/// of the head, the key's scan, the id's digits. `None` for anything else, valid or not: the
/// general reader then decides.
pub(super) fn decode_fast_get(payload: &[u8], limits: &Limits) -> Option<(GetKey, Id)> {
    const HEAD: &[u8; 39] = b"{\"jsonkv\":\"1.0\",\"operate\":\"get\",\"key\":\"";
    if limits.max_depth == 0 {
        return None;
    }
    let rest = after(payload, HEAD)?;
    let (end, true) = plain_string_end(rest, 0)? else {
        return None;
    };
    if end > limits.max_key {
        return None;
    }
    // The scan found no byte to escape and none past ASCII; the key ends where the payload
    // up to its closing quote does.
    let key = GetKey::ending_at(payload.get(..HEAD.len() + end)?, end)?;
    let rest = rest.get(end + 1..)?;
    let id = match rest {
        b"}" => Id::null(),
        _ => {
            let number = after(rest, b",\"id\":")?.strip_suffix(b"}")?;
            is_integer(number).then(|| Id::from_integer(number))?
        }
    };
    Some((key, id))
}
