//! smalld codec: see `shared/protocols/smalld.md`.
//!
//! One request per connection: an 8-byte header (`u32 secret key, u16 type, 2 bytes padding`)
//! and a body whose layout depends on the type; one reply (`u8 code, 3 bytes padding`, then for
//! successful get/digest/run `u16 N` and N bytes).

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::{be_u16, be_u32, ClientCodec, Decoded, Reject, ServerCodec};

/// Longest value (set, digest) and longest reply value.
pub const MAX_VALUE: usize = 100;
/// Longest request: a set with a 100-byte value.
pub const MAX_REQUEST: usize = 26 + MAX_VALUE;
pub const HEADER_LEN: usize = 8;

pub mod kind {
    pub const SET: u16 = 0;
    pub const GET: u16 = 1;
    pub const DIGEST: u16 = 2;
    pub const RUN: u16 = 3;
}

/// The 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub key: u32,
    pub kind: u16,
}

pub fn decode_header(buf: &[u8]) -> Option<Header> {
    Some(Header {
        key: be_u32(buf, 0)?,
        kind: be_u16(buf, 4)?,
    })
}

/// A request body, or the reason it is answered with a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Set {
        name: Bytes,
        value: Bytes,
    },
    Get {
        name: Bytes,
    },
    Digest {
        value: Bytes,
    },
    Run {
        program: Bytes,
    },
    /// S3, S5, S6, S7: answered with a failure reply. `detail` is what the log prints.
    Invalid {
        kind: u16,
        detail: Bytes,
    },
}

/// The name before the first `00` of a field, if it has one and it is not empty.
fn field_name(field: &[u8], max_len: usize) -> Option<Bytes> {
    let end = field.iter().position(|b| *b == 0)?;
    (end >= 1 && end <= max_len).then(|| Bytes::copy_from_slice(&field[..end]))
}

/// Decodes the request after a header whose key was already checked. `buf` starts with the
/// header. Decides S6 (value too long) from the length field, before the value arrives.
pub fn decode_request(buf: &[u8]) -> Decoded<Request> {
    let (Some(header), Some(body)) = (decode_header(buf), buf.get(HEADER_LEN..)) else {
        return Decoded::Incomplete;
    };
    let invalid = |detail: &[u8], used: usize| {
        Decoded::Frame(
            Request::Invalid {
                kind: header.kind,
                detail: Bytes::copy_from_slice(detail),
            },
            used,
        )
    };
    match header.kind {
        kind::SET => {
            let Some(len) = be_u16(body, 16).map(usize::from) else {
                return Decoded::Incomplete;
            };
            let name_field = &body[..16];
            if len > MAX_VALUE {
                return invalid(name_field, HEADER_LEN + 18);
            }
            let Some(value) = body.get(18..18 + len) else {
                return Decoded::Incomplete;
            };
            let used = HEADER_LEN + 18 + len;
            match field_name(name_field, 15) {
                Some(name) => Decoded::Frame(
                    Request::Set {
                        name,
                        value: Bytes::copy_from_slice(value),
                    },
                    used,
                ),
                None => invalid(name_field, used),
            }
        }
        kind::GET => {
            let Some(name_field) = body.get(..16) else {
                return Decoded::Incomplete;
            };
            match field_name(name_field, 15) {
                Some(name) => Decoded::Frame(Request::Get { name }, HEADER_LEN + 16),
                None => invalid(name_field, HEADER_LEN + 16),
            }
        }
        kind::DIGEST => {
            let Some(len) = be_u16(body, 0).map(usize::from) else {
                return Decoded::Incomplete;
            };
            if len > MAX_VALUE {
                return invalid(b"", HEADER_LEN + 2);
            }
            let Some(value) = body.get(2..2 + len) else {
                return Decoded::Incomplete;
            };
            Decoded::Frame(
                Request::Digest {
                    value: Bytes::copy_from_slice(value),
                },
                HEADER_LEN + 2 + len,
            )
        }
        kind::RUN => {
            let Some(field) = body.get(..8) else {
                return Decoded::Incomplete;
            };
            match field_name(field, 7) {
                Some(program) => Decoded::Frame(Request::Run { program }, HEADER_LEN + 8),
                None => invalid(field, HEADER_LEN + 8),
            }
        }
        _ => invalid(b"", HEADER_LEN),
    }
}

/// Encodes a request as a conforming client sends it (name fields padded with zeros).
pub fn encode_request(key: u32, request: &Request, out: &mut BytesMut) {
    let field = |out: &mut BytesMut, text: &[u8], width: usize| {
        let n = text.len().min(width);
        out.put_slice(&text[..n]);
        out.put_bytes(0, width - n);
    };
    let kind = match request {
        Request::Set { .. } => kind::SET,
        Request::Get { .. } => kind::GET,
        Request::Digest { .. } => kind::DIGEST,
        Request::Run { .. } => kind::RUN,
        Request::Invalid { kind, .. } => *kind,
    };
    out.put_u32(key);
    out.put_u16(kind);
    out.put_u16(0);
    match request {
        Request::Set { name, value } => {
            field(out, name, 16);
            out.put_u16(value.len() as u16);
            out.put_slice(value);
        }
        Request::Get { name } => field(out, name, 16),
        Request::Digest { value } => {
            out.put_u16(value.len() as u16);
            out.put_slice(value);
        }
        Request::Run { program } => field(out, program, 8),
        Request::Invalid { detail, .. } => out.put_slice(detail),
    }
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Success without a value (set).
    Ok,
    /// Success with a value (get, digest, run).
    Value(Bytes),
    Failure,
}

pub fn encode_reply(reply: &Response, out: &mut BytesMut) {
    match reply {
        Response::Ok => out.put_slice(&[0, 0, 0, 0]),
        Response::Value(value) => {
            let value = &value[..value.len().min(MAX_VALUE)];
            out.put_slice(&[0, 0, 0, 0]);
            out.put_u16(value.len() as u16);
            out.put_slice(value);
        }
        Response::Failure => out.put_slice(&[0xff, 0, 0, 0]),
    }
}

/// Decodes a whole reply (the client reads until EOF). `expects_value`: get, digest and run
/// successes carry a value; set does not. Bytes after the reply are ignored (some servers
/// appended a length or a status word to failures).
pub fn decode_reply(buf: &[u8], expects_value: bool) -> Option<Response> {
    if buf.len() < 4 {
        return None;
    }
    match buf.first()? {
        0xff => Some(Response::Failure),
        0 if !expects_value => Some(Response::Ok),
        0 => {
            // A reply value is at most 100 bytes; anything longer is not a smalld reply.
            let n = usize::from(be_u16(buf, 4)?);
            if n > MAX_VALUE {
                return None;
            }
            buf.get(6..6 + n)
                .map(|v| Response::Value(Bytes::copy_from_slice(v)))
        }
        _ => None,
    }
}

/// The server side as a [`ServerCodec`]. With `key = Some(k)` a header carrying another key
/// is a [`Reject`] (S2: close without a reply; the server logs the wrong key first); with
/// `None` the key is not checked here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmalldServerCodec {
    pub key: Option<u32>,
}

impl ServerCodec for SmalldServerCodec {
    type Request = Request;
    type Response = Response;

    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<Request>, Reject> {
        if let (Some(want), Some(header)) = (self.key, decode_header(buf)) {
            if header.key != want {
                return Err(Reject::new("smalld: wrong secret key"));
            }
        }
        Ok(decode_request(buf))
    }

    fn encode_response(&self, reply: &Response, out: &mut BytesMut) {
        encode_reply(reply, out);
    }
}

/// The client side as a [`ClientCodec`], for one request: whether a success carries a value
/// depends on the request type, so a codec is made per request ([`Self::for_request`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmalldClientCodec {
    pub key: u32,
    /// Get, digest and run successes carry `u16 N` and a value; set successes do not.
    pub expects_value: bool,
}

impl SmalldClientCodec {
    pub fn for_request(key: u32, request: &Request) -> Self {
        SmalldClientCodec {
            key,
            expects_value: !matches!(request, Request::Set { .. }),
        }
    }
}

impl ClientCodec for SmalldClientCodec {
    type Request = Request;
    type Response = Response;

    fn encode_request(&self, request: &Request, out: &mut BytesMut) {
        encode_request(self.key, request, out);
    }

    fn decode_response(&self, buf: &[u8]) -> Result<Decoded<Response>, Reject> {
        let (Some(&code), Some(_)) = (buf.first(), buf.get(..4)) else {
            return Ok(Decoded::Incomplete);
        };
        match code {
            0xff => Ok(Decoded::Frame(Response::Failure, 4)),
            0 if !self.expects_value => Ok(Decoded::Frame(Response::Ok, 4)),
            0 => {
                let Some(n) = be_u16(buf, 4).map(usize::from) else {
                    return Ok(Decoded::Incomplete);
                };
                if n > MAX_VALUE {
                    return Err(Reject::new("smalld reply value over 100 bytes"));
                }
                Ok(match buf.get(6..6 + n) {
                    Some(value) => {
                        Decoded::Frame(Response::Value(Bytes::copy_from_slice(value)), 6 + n)
                    }
                    None => Decoded::Incomplete,
                })
            }
            _ => Err(Reject::new("smalld reply code neither 00 nor FF")),
        }
    }
}

/// The digest reply value (§4.3): SHA-256 of the value up to its first `00` plus a newline, as
/// 64 hex digits, then `"  -\n"` and a `00` (69 bytes).
pub fn digest(value: &[u8]) -> Bytes {
    let text = &value[..value.iter().position(|b| *b == 0).unwrap_or(value.len())];
    let mut hasher = Sha256::new();
    hasher.update(text);
    hasher.update(b"\n");
    let mut out = String::with_capacity(69);
    for byte in hasher.finalize() {
        out.push_str(&format!("{byte:02x}"));
    }
    out.push_str("  -\n\0");
    Bytes::from(out)
}

/// Fuzz body: decode arbitrary bytes as a request; re-encode what decoded and check it decodes
/// to the same request.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_server(data: &[u8]) {
    if let Decoded::Frame(request, used) = decode_request(data) {
        assert!(used <= data.len() && used <= MAX_REQUEST);
        if !matches!(request, Request::Invalid { .. }) {
            let key = decode_header(data).map_or(0, |h| h.key);
            let mut out = BytesMut::new();
            encode_request(key, &request, &mut out);
            assert_eq!(decode_request(&out), Decoded::Frame(request, out.len()));
        }
    }
}

/// Fuzz body: decode arbitrary bytes as a reply and check the round trip.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_client(data: &[u8]) {
    for expects_value in [false, true] {
        if let Some(reply) = decode_reply(data, expects_value) {
            let mut out = BytesMut::new();
            encode_reply(&reply, &mut out);
            assert_eq!(decode_reply(&out, expects_value), Some(reply));
        }
        let codec = SmalldClientCodec {
            key: 0,
            expects_value,
        };
        if let Ok(Decoded::Frame(reply, used)) = codec.decode_response(data) {
            assert!(used <= data.len());
            assert_eq!(decode_reply(data, expects_value), Some(reply.clone()));
            let mut out = BytesMut::new();
            SmalldServerCodec::default().encode_response(&reply, &mut out);
            assert_eq!(
                codec.decode_response(&out),
                Ok(Decoded::Frame(reply, out.len()))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    const ALFRED: &str = "41 6c 66 72 65 64 20 45 2e 20 4e 65 77 6d 61 6e 00";

    #[test]
    fn vector_1_set_with_garbage_after_the_name() {
        let bytes = hex(&format!("00 00 10 92 00 00 00 00  6e 61 6d 65 00 aa bb cc dd ee ff 11 22 33 44 55  00 11  {ALFRED}"));
        assert_eq!(bytes.len(), 43);
        assert_eq!(decode_header(&bytes), Some(Header { key: 4242, kind: 0 }));
        let Decoded::Frame(request, used) = decode_request(&bytes) else {
            panic!()
        };
        assert_eq!(used, 43);
        assert_eq!(
            request,
            Request::Set {
                name: "name".into(),
                value: Bytes::from(b"Alfred E. Newman\0".to_vec())
            }
        );
        for cut in 0..43 {
            assert_eq!(
                decode_request(&bytes[..cut]),
                Decoded::Incomplete,
                "cut {cut}"
            );
        }
        let mut out = BytesMut::new();
        encode_reply(&Response::Ok, &mut out);
        assert_eq!(out.as_ref(), [0, 0, 0, 0]);
    }

    #[test]
    fn vectors_2_and_3_get() {
        let bytes = hex(
            "00 00 10 92 00 01 00 00  6e 61 6d 65 00 ?? ?? ?? ?? ?? ?? ?? ?? ?? ?? ??"
                .replace("??", "7f")
                .as_str(),
        );
        assert_eq!(
            decode_request(&bytes),
            Decoded::Frame(
                Request::Get {
                    name: "name".into()
                },
                24
            )
        );
        let mut out = BytesMut::new();
        encode_reply(
            &Response::Value(Bytes::from(b"Alfred E. Newman\0".to_vec())),
            &mut out,
        );
        assert_eq!(out.to_vec(), hex(&format!("00 00 00 00 00 11 {ALFRED}")));
        out.clear();
        encode_reply(&Response::Failure, &mut out);
        assert_eq!(out.as_ref(), [0xff, 0, 0, 0]);
    }

    #[test]
    fn vector_4_digest() {
        let bytes = hex(&format!("00 00 10 92 00 02 00 00  00 11 {ALFRED}"));
        let Decoded::Frame(Request::Digest { value }, 27) = decode_request(&bytes) else {
            panic!()
        };
        let d = digest(&value);
        assert_eq!(d.len(), 69);
        assert_eq!(
            &d[..],
            b"a7b47dc97e99389e3b09850c3a8843e28f8c29a8ee78b3ce6aee19ba5daf1a05  -\n\0"
        );
        let mut out = BytesMut::new();
        encode_reply(&Response::Value(d), &mut out);
        assert_eq!(out.len(), 75);
        assert_eq!(&out[..6], [0, 0, 0, 0, 0, 0x45]);
    }

    #[test]
    fn vectors_5_and_6_run_fields() {
        let run = hex("00 00 10 92 00 03 00 00 68 6f 73 74 73 00 00 00");
        assert_eq!(
            decode_request(&run),
            Decoded::Frame(
                Request::Run {
                    program: "hosts".into()
                },
                16
            )
        );
        let mut out = BytesMut::new();
        encode_request(
            4242,
            &Request::Run {
                program: "hosts".into(),
            },
            &mut out,
        );
        assert_eq!(out.to_vec(), run);
        let no_nul = hex("00 00 10 92 00 03 00 00 68 6f 73 74 73 78 78 78");
        assert!(matches!(
            decode_request(&no_nul),
            Decoded::Frame(Request::Invalid { kind: 3, .. }, 16)
        ));
    }

    #[test]
    fn malformed_requests() {
        // S3: unknown type, decided from the header.
        let unknown = hex("00 00 10 92 00 07 00 00");
        assert_eq!(
            decode_request(&unknown),
            Decoded::Frame(
                Request::Invalid {
                    kind: 7,
                    detail: Bytes::new()
                },
                8
            )
        );
        // S5: empty name; no 00 in the name field.
        let empty = hex("00 00 10 92 00 01 00 00  00 61 62 63 00 00 00 00 00 00 00 00 00 00 00 00");
        assert!(matches!(
            decode_request(&empty),
            Decoded::Frame(Request::Invalid { kind: 1, .. }, 24)
        ));
        let full = [&hex("00 00 10 92 00 01 00 00")[..], &[b'a'; 16]].concat();
        assert!(matches!(
            decode_request(&full),
            Decoded::Frame(Request::Invalid { kind: 1, .. }, 24)
        ));
        // S6: value length over 100, decided before the value arrives.
        let long = [
            &hex("00 00 10 92 00 00 00 00")[..],
            b"n\0..............",
            &[0, 101],
        ]
        .concat();
        assert!(matches!(
            decode_request(&long),
            Decoded::Frame(Request::Invalid { kind: 0, .. }, 26)
        ));
        assert!(matches!(
            decode_request(&hex("00 00 10 92 00 02 00 00 ff ff")),
            Decoded::Frame(Request::Invalid { kind: 2, .. }, 10)
        ));
        // The longest valid set.
        let max = [
            &hex("00 00 10 92 00 00 00 00")[..],
            b"n\0..............",
            &[0, 100],
            &[7u8; 100],
        ]
        .concat();
        assert_eq!(max.len(), MAX_REQUEST);
        assert!(matches!(
            decode_request(&max),
            Decoded::Frame(Request::Set { .. }, MAX_REQUEST)
        ));
    }

    #[test]
    fn replies_decode() {
        assert_eq!(decode_reply(&[0, 0, 0, 0], false), Some(Response::Ok));
        assert_eq!(
            decode_reply(&[0xff, 0, 0, 0], true),
            Some(Response::Failure)
        );
        assert_eq!(
            decode_reply(&[0, 0, 0, 0, 0, 2, b'h', b'i'], true),
            Some(Response::Value("hi".into()))
        );
        assert_eq!(decode_reply(&[0, 0, 0, 0, 0, 3, b'h'], true), None);
        assert_eq!(decode_reply(&[], true), None);
    }

    #[test]
    fn fuzz_regression_reply_longer_than_100_bytes() {
        // Found by scripts/fuzz.sh (smalld_client): N = 142 decoded, then re-encoded cut to 100.
        let mut reply = vec![0, 0, 0, 0, 0, 0x8e];
        reply.extend_from_slice(&[0x8e; 142]);
        assert_eq!(decode_reply(&reply, true), None);
        fuzz_client(&reply);
    }

    /// Decodes a whole request with a codec holding the server key 4242.
    fn server_decode(bytes: &[u8]) -> Result<Decoded<Request>, Reject> {
        SmalldServerCodec { key: Some(4242) }.decode_request(bytes)
    }

    #[test]
    fn vector_3_get_of_an_unset_name_is_a_failure_reply() {
        let bytes = hex("00 00 10 92 00 01 00 00  6e 6f 6d 65 00 01 02 03 04 05 06 07 08 09 0a 0b");
        assert_eq!(
            server_decode(&bytes),
            Ok(Decoded::Frame(
                Request::Get {
                    name: "nome".into()
                },
                24
            ))
        );
        // Not found is decided by the service; the codec answers it with the 4-byte failure.
        let mut out = BytesMut::new();
        SmalldServerCodec::default().encode_response(&Response::Failure, &mut out);
        assert_eq!(out.as_ref(), [0xff, 0, 0, 0]);
    }

    #[test]
    fn vector_5_run_hosts_reply_has_no_terminator() {
        // The value is the first N bytes of the output, sent as is (no 00 appended).
        let output = b"127.0.0.1 localhost\n";
        let mut out = BytesMut::new();
        encode_reply(&Response::Value(Bytes::from_static(output)), &mut out);
        assert_eq!(&out[..6], [0, 0, 0, 0, 0, 20]);
        assert_eq!(&out[6..], output);
        // Longer output is cut to 100 bytes.
        out.clear();
        encode_reply(&Response::Value(Bytes::from(vec![b'x'; 300])), &mut out);
        assert_eq!(out.len(), 106);
        assert_eq!(&out[4..6], [0, 100]);
    }

    #[test]
    fn vector_6_run_of_an_unknown_program() {
        let bytes = hex("00 00 10 92 00 03 00 00 69 6e 6f 74 00 00 00 00");
        // A well-formed run: the service answers `inot` with the failure reply (S7).
        assert_eq!(
            server_decode(&bytes),
            Ok(Decoded::Frame(
                Request::Run {
                    program: "inot".into()
                },
                16
            ))
        );
    }

    #[test]
    fn vector_7_wrong_key_closes_without_reply() {
        let bytes = hex("00 00 10 93 00 01 00 00");
        assert_eq!(decode_header(&bytes), Some(Header { key: 4243, kind: 1 }));
        // Decided from the header alone: nothing after it is read.
        assert!(server_decode(&bytes).is_err());
        assert!(server_decode(&[&bytes[..], b"name\0garbage.."].concat()).is_err());
        // A codec without a key leaves the check to the caller.
        assert_eq!(
            SmalldServerCodec::default().decode_request(&bytes),
            Ok(Decoded::Incomplete)
        );
    }

    #[test]
    fn s1_and_s4_incomplete_requests() {
        let requests = [
            hex(&format!("00 00 10 92 00 00 00 00  6e 61 6d 65 00 aa bb cc dd ee ff 11 22 33 44 55  00 11  {ALFRED}")),
            hex("00 00 10 92 00 01 00 00  6e 61 6d 65 00 00 00 00 00 00 00 00 00 00 00 00"),
            hex(&format!("00 00 10 92 00 02 00 00 00 11 {ALFRED}")),
            hex("00 00 10 92 00 02 00 00 00 00"),
            hex("00 00 10 92 00 03 00 00 68 6f 73 74 73 00 00 00"),
            hex("00 00 10 92 00 09 00 00"),
        ];
        for bytes in &requests {
            for cut in 0..bytes.len() {
                assert_eq!(
                    server_decode(&bytes[..cut]),
                    Ok(Decoded::Incomplete),
                    "{bytes:02x?} cut {cut}"
                );
            }
            let Ok(Decoded::Frame(_, used)) = server_decode(bytes) else {
                panic!("{bytes:02x?}")
            };
            assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn s5_undecodable_fields_decode_as_invalid() {
        let no_nul = [&hex("00 00 10 92 00 01 00 00")[..], b"abcdefghijklmnop"].concat();
        let Decoded::Frame(_, 24) = decode_request(&no_nul) else {
            panic!()
        };
        let empty = hex("00 00 10 92 00 03 00 00 00 41 00 00 00 00 00 00");
        let Decoded::Frame(request, 16) = decode_request(&empty) else {
            panic!()
        };
        assert_eq!(
            request,
            Request::Invalid {
                kind: 3,
                detail: Bytes::from(hex("00 41 00 00 00 00 00 00"))
            }
        );
        // A 15-byte name is the longest; the set with a bad name still reads its value.
        let max_name = [
            &hex("00 00 10 92 00 00 00 00")[..],
            b"abcdefghijklmno\0",
            &[0, 1],
            b"v",
        ]
        .concat();
        assert_eq!(
            decode_request(&max_name),
            Decoded::Frame(
                Request::Set {
                    name: "abcdefghijklmno".into(),
                    value: "v".into()
                },
                27
            )
        );
        let empty_name = [
            &hex("00 00 10 92 00 00 00 00")[..],
            &[0u8; 16],
            &[0, 1],
            b"v",
        ]
        .concat();
        assert!(matches!(
            decode_request(&empty_name[..26]),
            Decoded::Incomplete
        ));
        assert!(matches!(
            decode_request(&empty_name),
            Decoded::Frame(Request::Invalid { kind: 0, .. }, 27)
        ));
    }

    #[test]
    fn s10_bytes_after_the_request_are_not_consumed() {
        let bytes = hex("00 00 10 92 00 03 00 00 68 6f 73 74 73 00 00 00 ff ff ff ff 00 00 10 92");
        assert_eq!(
            server_decode(&bytes),
            Ok(Decoded::Frame(
                Request::Run {
                    program: "hosts".into()
                },
                16
            ))
        );
    }

    #[test]
    fn digest_of_other_values() {
        // `echo | sha256sum` of the empty string, and a value without a 00 (all L bytes).
        assert_eq!(
            &digest(b"")[..],
            b"01ba4719c80b6fe911b091a7c05124b64eeece964e09c058ef8f9805daca546b  -\n\0"
        );
        assert_eq!(digest(b"\0ignored"), digest(b""));
        assert_eq!(
            digest(b"Alfred E. Newman"),
            digest(b"Alfred E. Newman\0junk")
        );
    }

    #[test]
    fn client_codec_frames_replies() {
        let set = SmalldClientCodec::for_request(
            7,
            &Request::Set {
                name: "a".into(),
                value: Bytes::new(),
            },
        );
        let get = SmalldClientCodec::for_request(7, &Request::Get { name: "a".into() });
        assert!(!set.expects_value);
        assert!(get.expects_value);
        assert_eq!(
            set.decode_response(&[0, 0, 0, 0]),
            Ok(Decoded::Frame(Response::Ok, 4))
        );
        assert_eq!(
            get.decode_response(&[0xff, 0, 0, 0, 0, 0]),
            Ok(Decoded::Frame(Response::Failure, 4))
        );
        let reply = hex(&format!("00 00 00 00 00 11 {ALFRED}"));
        for cut in 0..reply.len() {
            assert_eq!(get.decode_response(&reply[..cut]), Ok(Decoded::Incomplete));
        }
        assert_eq!(
            get.decode_response(&reply),
            Ok(Decoded::Frame(
                Response::Value(Bytes::from(b"Alfred E. Newman\0".to_vec())),
                23
            ))
        );
        assert!(get.decode_response(&[0, 0, 0, 0, 0, 101]).is_err());
        assert!(get.decode_response(&[1, 0, 0, 0]).is_err());
        let mut out = BytesMut::new();
        get.encode_request(&Request::Get { name: "a".into() }, &mut out);
        assert_eq!(
            out.to_vec(),
            hex("00 00 00 07 00 01 00 00 61 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00")
        );
        // decode_reply (read until EOF) needs a whole 4-byte code word.
        assert_eq!(decode_reply(&[0xff], true), None);
        assert_eq!(decode_reply(&[0, 0, 0], false), None);
    }

    proptest! {
        #[test]
        fn requests_round_trip(name in "[a-zA-Z0-9 ]{1,15}", value in proptest::collection::vec(any::<u8>(), 0..=100), key in any::<u32>()) {
            for request in [
                Request::Set { name: name.clone().into(), value: value.clone().into() },
                Request::Get { name: name.clone().into() },
                Request::Digest { value: value.clone().into() },
                Request::Run { program: name.chars().take(7).collect::<String>().into() },
            ] {
                let mut out = BytesMut::new();
                encode_request(key, &request, &mut out);
                prop_assert_eq!(decode_request(&out), Decoded::Frame(request, out.len()));
            }
        }

        #[test]
        fn replies_round_trip(value in proptest::collection::vec(any::<u8>(), 0..=100)) {
            for (reply, expects_value) in [
                (Response::Ok, false),
                (Response::Failure, false),
                (Response::Failure, true),
                (Response::Value(value.clone().into()), true),
            ] {
                let mut out = BytesMut::new();
                SmalldServerCodec::default().encode_response(&reply, &mut out);
                let codec = SmalldClientCodec { key: 1, expects_value };
                prop_assert_eq!(codec.decode_response(&out), Ok(Decoded::Frame(reply.clone(), out.len())));
                prop_assert_eq!(decode_reply(&out, expects_value), Some(reply));
            }
        }

        #[test]
        fn fuzz_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..160)) {
            fuzz_server(&data);
            fuzz_client(&data);
        }
    }
}
