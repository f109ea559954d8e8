//! What a jsonkv server writes: any [`ResponsePayload`], or a get's success written straight
//! from the stored bytes ([`ServerReply::Got`]). The client, the UDP codec's tests and the fuzz
//! bodies keep [`ResponsePayload`]; only the server's answer to the common request skips
//! building a [`Response`] piece by piece.

use bytes::Bytes;

use super::*;

/// Bytes that a JSON string holds as they stand: valid UTF-8 with nothing to escape. Checked
/// once, when made; written without looking at them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainText(Bytes);

impl PlainText {
    /// `bytes` when they are plain text, else the bytes back (for the general path, which
    /// escapes them or refuses them as not UTF-8).
    pub fn new(bytes: Bytes) -> Result<PlainText, Bytes> {
        if is_plain_text(&bytes) {
            Ok(PlainText(bytes))
        } else {
            Err(bytes)
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether `s` is UTF-8 with no byte a JSON string must escape. The usual value (printable
/// ASCII without a quote or a backslash) is decided in one pass; anything else is checked as
/// UTF-8 and for escapes separately.
fn is_plain_text(s: &[u8]) -> bool {
    !needs_escape_or_non_ascii(s) || (std::str::from_utf8(s).is_ok() && !needs_escape(s))
}

/// A jsonkv server's answer to one request payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerReply {
    /// Any response payload, written member by member.
    Payload(ResponsePayload),
    /// A get's success (`Response::success(Operate::Get, value, id)`), written in one go.
    Got { value: PlainText, id: Id },
}

impl From<ResponsePayload> for ServerReply {
    fn from(payload: ResponsePayload) -> ServerReply {
        ServerReply::Payload(payload)
    }
}

impl ServerReply {
    /// The same reply as a [`ResponsePayload`] (what a client decodes from it).
    pub fn to_payload(&self) -> ResponsePayload {
        match self {
            ServerReply::Payload(payload) => payload.clone(),
            ServerReply::Got { value, id } => ResponsePayload::Single(Response::success(
                Operate::Get,
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
                id.clone(),
            )),
        }
    }
}

/// Appends the whole frame of a get's success: the same bytes as [`put_frame`] around
/// [`put_response`] of `Response::success(Operate::Get, value, id)`, with the length known
/// before the first byte is written.
pub(super) fn put_got_frame(out: &mut BytesMut, value: &PlainText, id: &Id) {
    const HEAD: &[u8; 35] = b"{\"jsonkv\":\"1.0\",\"result\":{\"value\":\"";
    const TAIL: &[u8; 53] = b"\",\"code\":\"0\",\"message\":\"get operation success\"},\"id\":";
    let id = id.json_bytes();
    let length = HEADER_LEN + HEAD.len() + value.len() + TAIL.len() + id.len() + 1;
    out.reserve(length);
    // The header and the head as one fixed-size copy.
    let mut head = [0u8; HEADER_LEN + HEAD.len()];
    // Frames over 4 GiB cannot be described; a peer would reject the saturated length.
    head[8..12].copy_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
    head[HEADER_LEN..].copy_from_slice(HEAD);
    out.extend_from_slice(&head);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(TAIL);
    out.extend_from_slice(id);
    out.extend_from_slice(b"}");
}
