//! Framing (§2): the 16-byte header (`version, type, length, reserve`), then `length - 16`
//! bytes of JSON, over TCP and the agent; one frame per datagram over UDP.

use super::*;

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
pub(super) fn put_frame(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_bytes(0, HEADER_LEN);
    body(out);
    // Frames over 4 GiB cannot be described; a peer would reject the saturated length.
    let length = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
}

/// Appends one whole frame carrying `payload`.
pub fn encode_frame(out: &mut BytesMut, payload: &[u8]) {
    put_frame(out, |out| out.put_slice(payload));
}
