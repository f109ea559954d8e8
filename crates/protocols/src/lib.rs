//! Pure codecs for every wire protocol polykv speaks.
//!
//! A codec turns bytes into messages and messages into bytes. It does no I/O, knows nothing of
//! the engine and never panics on input: every length is checked against a limit before anything
//! is allocated. The same types serve the server, the client library, the load generator and the
//! fuzzers.
//!
//! Each protocol module offers two codecs built on the traits below:
//! - a [`ServerCodec`], which decodes requests and encodes responses (used by the server), and
//! - a [`ClientCodec`], which encodes requests and decodes responses (used by clients and bench).

use bytes::BytesMut;

pub mod jsonkv;
pub mod minority;
pub mod nmdb;
pub mod opencluster;
pub mod smalld;

/// The result of looking at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// One whole message, and how many bytes of the buffer it used (always > 0).
    Frame(T, usize),
    /// The buffer holds only part of a message; read more and try again.
    Incomplete,
}

impl<T> Decoded<T> {
    /// The same result with the message mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Decoded<U> {
        match self {
            Decoded::Frame(message, used) => Decoded::Frame(f(message), used),
            Decoded::Incomplete => Decoded::Incomplete,
        }
    }
}

/// The stream cannot go on: the connection must be closed, without a reply.
///
/// Protocol errors that are answered with an error reply are not `Reject`s: they are decoded as
/// ordinary messages (a request variant that stands for the malformed frame), so the service can
/// answer them in order with every other request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Reject {
    /// Why the stream was abandoned, for logs and metrics.
    pub reason: &'static str,
}

impl Reject {
    pub const fn new(reason: &'static str) -> Self {
        Reject { reason }
    }
}

/// The server side of a protocol: requests in, responses out.
pub trait ServerCodec {
    type Request;
    type Response;

    /// Decodes the message at the start of `buf`.
    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<Self::Request>, Reject>;

    /// Appends the wire form of `response` to `out`.
    fn encode_response(&self, response: &Self::Response, out: &mut BytesMut);
}

/// The client side of a protocol: requests out, responses in.
pub trait ClientCodec {
    type Request;
    type Response;

    /// Appends the wire form of `request` to `out`.
    fn encode_request(&self, request: &Self::Request, out: &mut BytesMut);

    /// Decodes the message at the start of `buf`.
    fn decode_response(&self, buf: &[u8]) -> Result<Decoded<Self::Response>, Reject>;
}

/// Reads a big-endian u16 at `at`, or `None` when the slice is too short.
#[inline]
pub fn be_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// Reads a big-endian u32 at `at`, or `None` when the slice is too short.
#[inline]
pub fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Reads a big-endian u64 at `at`, or `None` when the slice is too short.
#[inline]
pub fn be_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    Some(u64::from_be_bytes(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_endian_readers_check_bounds() {
        let buf = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
        assert_eq!(be_u16(&buf, 0), Some(0x1234));
        assert_eq!(be_u16(&buf, 7), None);
        assert_eq!(be_u32(&buf, 4), Some(0x9abc_def0));
        assert_eq!(be_u32(&buf, 5), None);
        assert_eq!(be_u64(&buf, 0), Some(0x1234_5678_9abc_def0));
        assert_eq!(be_u64(&buf, 1), None);
        assert_eq!(be_u32(&buf, usize::MAX), None);
    }
}
