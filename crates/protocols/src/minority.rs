//! minority codec: see `shared/protocols/minority.md`.
//!
//! Frames are a 16-byte header (`magic, opcode, u16 A, u16 B, u16 reserved|status, u32 T,
//! u32 opaque`) and a body of `T` bytes: dataId (`A`) ‖ datanumId (`B`) ‖ value.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{be_u16, be_u32, ClientCodec, Decoded, Reject, ServerCodec};

pub const REQUEST_MAGIC: u8 = 0x80;
pub const RESPONSE_MAGIC: u8 = 0x81;
pub const HEADER_LEN: usize = 16;
/// Default largest body.
pub const DEFAULT_MAX_BODY: u32 = 1 << 20;

pub mod op {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const NOTIFY: u8 = 0x02;
    pub const HEARTBEAT: u8 = 0x03;
    pub const VERSION: u8 = 0x04;
    pub const DELETE: u8 = 0x05;
}

/// A request's operation: the opcodes of `op`, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Set,
    Notify,
    Heartbeat,
    Version,
    Delete,
}

impl Op {
    /// Its opcode.
    pub const fn code(self) -> u8 {
        match self {
            Op::Get => op::GET,
            Op::Set => op::SET,
            Op::Notify => op::NOTIFY,
            Op::Heartbeat => op::HEARTBEAT,
            Op::Version => op::VERSION,
            Op::Delete => op::DELETE,
        }
    }

    /// The operation of an opcode; `None` for an unknown one (M4).
    pub const fn from_code(code: u8) -> Option<Op> {
        match code {
            op::GET => Some(Op::Get),
            op::SET => Some(Op::Set),
            op::NOTIFY => Some(Op::Notify),
            op::HEARTBEAT => Some(Op::Heartbeat),
            op::VERSION => Some(Op::Version),
            op::DELETE => Some(Op::Delete),
            _ => None,
        }
    }
}

pub mod status {
    pub const OK: u16 = 0x0000;
    pub const STORE_FAIL: u16 = 0x0001;
    pub const NOT_FOUND: u16 = 0x0002;
    pub const INVALID: u16 = 0x0003;
}

/// A request frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Frame {
        op: Op,
        opaque: u32,
        data_id: Bytes,
        datanum_id: Bytes,
        value: Bytes,
    },
    /// M2: body longer than the maximum: answered 0x0003, then the connection closes.
    TooLarge { op: u8, opaque: u32 },
    /// M3 (`A + B > T`) and M4 (unknown opcode): answered 0x0003 with empty ids; keep.
    Malformed { op: u8, opaque: u32 },
}

/// A response or push frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub op: u8,
    pub status: u16,
    pub opaque: u32,
    pub data_id: Bytes,
    pub datanum_id: Bytes,
    pub value: Bytes,
}

impl Response {
    /// A reply with empty ids and body (heartbeat, errors on untrusted frames).
    pub fn bare(op: u8, status: u16, opaque: u32) -> Response {
        Response {
            op,
            status,
            opaque,
            data_id: Bytes::new(),
            datanum_id: Bytes::new(),
            value: Bytes::new(),
        }
    }
}

/// Writes a frame; `body` is dataId, datanumId and value.
fn put_frame(out: &mut BytesMut, magic: u8, op: u8, word: u16, opaque: u32, body: [&[u8]; 3]) {
    let [data_id, datanum_id, value] = body;
    out.put_u8(magic);
    out.put_u8(op);
    out.put_u16(data_id.len() as u16);
    out.put_u16(datanum_id.len() as u16);
    out.put_u16(word);
    out.put_u32((data_id.len() + datanum_id.len() + value.len()) as u32);
    out.put_u32(opaque);
    out.put_slice(data_id);
    out.put_slice(datanum_id);
    out.put_slice(value);
}

struct Head {
    magic: u8,
    op: u8,
    a: usize,
    b: usize,
    word: u16,
    t: u32,
    opaque: u32,
}

fn head(buf: &[u8]) -> Option<Head> {
    Some(Head {
        magic: *buf.first()?,
        op: *buf.get(1)?,
        a: usize::from(be_u16(buf, 2)?),
        b: usize::from(be_u16(buf, 4)?),
        word: be_u16(buf, 6)?,
        t: be_u32(buf, 8)?,
        opaque: be_u32(buf, 12)?,
    })
}

/// The server side: requests in, responses out.
#[derive(Debug, Clone, Copy)]
pub struct MinorityServerCodec {
    pub max_body: u32,
}

impl Default for MinorityServerCodec {
    fn default() -> Self {
        MinorityServerCodec {
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

impl ServerCodec for MinorityServerCodec {
    type Request = Request;
    type Response = Response;

    fn decode_request(&self, buf: &[u8]) -> Result<Decoded<Request>, Reject> {
        if buf.first().is_some_and(|m| *m != REQUEST_MAGIC) {
            return Err(Reject::new("minority frame without the 0x80 magic"));
        }
        let Some(h) = head(buf) else {
            return Ok(Decoded::Incomplete);
        };
        if h.t > self.max_body {
            // Decided from the header: the body is never read.
            return Ok(Decoded::Frame(
                Request::TooLarge {
                    op: h.op,
                    opaque: h.opaque,
                },
                HEADER_LEN,
            ));
        }
        let total = HEADER_LEN + h.t as usize;
        let Some(body) = buf.get(HEADER_LEN..total) else {
            return Ok(Decoded::Incomplete);
        };
        let known = Op::from_code(h.op);
        let Some(op) = known.filter(|_| h.a + h.b <= body.len()) else {
            return Ok(Decoded::Frame(
                Request::Malformed {
                    op: h.op,
                    opaque: h.opaque,
                },
                total,
            ));
        };
        Ok(Decoded::Frame(
            Request::Frame {
                op,
                opaque: h.opaque,
                data_id: Bytes::copy_from_slice(&body[..h.a]),
                datanum_id: Bytes::copy_from_slice(&body[h.a..h.a + h.b]),
                value: Bytes::copy_from_slice(&body[h.a + h.b..]),
            },
            total,
        ))
    }

    fn encode_response(&self, r: &Response, out: &mut BytesMut) {
        put_frame(
            out,
            RESPONSE_MAGIC,
            r.op,
            r.status,
            r.opaque,
            [&r.data_id, &r.datanum_id, &r.value],
        );
    }
}

/// The client side: requests out, responses (and pushes) in.
#[derive(Debug, Clone, Copy)]
pub struct MinorityClientCodec {
    pub max_body: u32,
}

impl Default for MinorityClientCodec {
    fn default() -> Self {
        MinorityClientCodec { max_body: u32::MAX }
    }
}

impl ClientCodec for MinorityClientCodec {
    type Request = Request;
    type Response = Response;

    fn encode_request(&self, request: &Request, out: &mut BytesMut) {
        match request {
            Request::Frame {
                op,
                opaque,
                data_id,
                datanum_id,
                value,
            } => put_frame(
                out,
                REQUEST_MAGIC,
                op.code(),
                0,
                *opaque,
                [data_id, datanum_id, value],
            ),
            // The nearest wire forms of the two malformed kinds.
            Request::TooLarge { op, opaque } => {
                out.put_u8(REQUEST_MAGIC);
                out.put_u8(*op);
                out.put_slice(&[0, 0, 0, 0, 0, 0]);
                out.put_u32(u32::MAX);
                out.put_u32(*opaque);
            }
            Request::Malformed { op, opaque } => put_frame(
                out,
                REQUEST_MAGIC,
                (*op).max(op::DELETE + 1),
                0,
                *opaque,
                [b"", b"", b""],
            ),
        }
    }

    fn decode_response(&self, buf: &[u8]) -> Result<Decoded<Response>, Reject> {
        if buf.first().is_some_and(|m| *m != RESPONSE_MAGIC) {
            return Err(Reject::new("minority response without the 0x81 magic"));
        }
        let Some(h) = head(buf) else {
            return Ok(Decoded::Incomplete);
        };
        if h.t > self.max_body {
            return Err(Reject::new("minority response body too large"));
        }
        let total = HEADER_LEN + h.t as usize;
        let Some(body) = buf.get(HEADER_LEN..total) else {
            return Ok(Decoded::Incomplete);
        };
        if h.a + h.b > body.len() || h.magic != RESPONSE_MAGIC {
            return Err(Reject::new("minority response lengths disagree"));
        }
        Ok(Decoded::Frame(
            Response {
                op: h.op,
                status: h.word,
                opaque: h.opaque,
                data_id: Bytes::copy_from_slice(&body[..h.a]),
                datanum_id: Bytes::copy_from_slice(&body[h.a..h.a + h.b]),
                value: Bytes::copy_from_slice(&body[h.a + h.b..]),
            },
            total,
        ))
    }
}

/// Fuzz body: requests decode, re-encode and decode to the same request.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_server(data: &[u8]) {
    let server = MinorityServerCodec { max_body: 4096 };
    let client = MinorityClientCodec::default();
    let mut rest = data;
    while let Ok(Decoded::Frame(request, used)) = server.decode_request(rest) {
        if let Request::Frame { .. } = &request {
            let mut out = BytesMut::new();
            client.encode_request(&request, &mut out);
            assert_eq!(
                server.decode_request(&out),
                Ok(Decoded::Frame(request, out.len()))
            );
        }
        rest = &rest[used.min(rest.len())..];
    }
}

/// Fuzz body: responses decode, re-encode and decode to the same response.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_client(data: &[u8]) {
    let server = MinorityServerCodec::default();
    let client = MinorityClientCodec { max_body: 4096 };
    if let Ok(Decoded::Frame(response, _)) = client.decode_response(data) {
        let mut out = BytesMut::new();
        server.encode_response(&response, &mut out);
        assert_eq!(
            client.decode_response(&out),
            Ok(Decoded::Frame(response, out.len()))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(text: &str) -> Vec<u8> {
        text.replace('|', " ")
            .split_whitespace()
            .flat_map(|group| {
                (0..group.len())
                    .step_by(2)
                    .map(move |i| u8::from_str_radix(&group[i..i + 2], 16).unwrap())
            })
            .collect()
    }

    const SERVER: MinorityServerCodec = MinorityServerCodec {
        max_body: DEFAULT_MAX_BODY,
    };
    const CLIENT: MinorityClientCodec = MinorityClientCodec { max_body: u32::MAX };

    fn frame(op: u8, opaque: u32, d: &str, n: &str, v: &str) -> Request {
        Request::Frame {
            op: Op::from_code(op).expect("a known opcode"),
            opaque,
            data_id: Bytes::copy_from_slice(d.as_bytes()),
            datanum_id: Bytes::copy_from_slice(n.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    fn response(op: u8, status: u16, opaque: u32, d: &str, n: &str, v: &str) -> Response {
        Response {
            op,
            status,
            opaque,
            data_id: Bytes::copy_from_slice(d.as_bytes()),
            datanum_id: Bytes::copy_from_slice(n.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    fn encode(r: &Response) -> Vec<u8> {
        let mut out = BytesMut::new();
        SERVER.encode_response(r, &mut out);
        out.to_vec()
    }

    fn check_request(bytes: &str, expected: Request) {
        let bytes = hex(bytes);
        assert_eq!(
            SERVER.decode_request(&bytes),
            Ok(Decoded::Frame(expected.clone(), bytes.len()))
        );
        if let Request::Frame { .. } = expected {
            let mut out = BytesMut::new();
            CLIENT.encode_request(&expected, &mut out);
            assert_eq!(out.to_vec(), bytes);
        }
    }

    #[test]
    fn section_13_vectors() {
        // Requests, each as the spec writes it and as it decodes.
        for (wire, request) in [
            (
                "80 01 0004 0004 0000 0000000d 00000001 | 74657374 74657374 68656c6c6f",
                frame(op::SET, 1, "test", "test", "hello"),
            ),
            (
                "80 00 0004 0004 0000 00000008 00000002 | 74657374 74657374",
                frame(op::GET, 2, "test", "test", ""),
            ),
            (
                "80 03 0000 0000 0000 00000000 00000004",
                frame(op::HEARTBEAT, 4, "", "", ""),
            ),
            (
                "80 02 0004 0000 0000 00000004 00000005 | 74657374",
                frame(op::NOTIFY, 5, "test", "", ""),
            ),
            (
                "80 05 0004 0004 0000 00000008 00000006 | 74657374 74657374",
                frame(op::DELETE, 6, "test", "test", ""),
            ),
            (
                "80 04 0000 0000 0000 00000000 00000007",
                frame(op::VERSION, 7, "", "", ""),
            ),
        ] {
            check_request(wire, request);
        }
        // Responses and pushes, each as it encodes and as the spec writes it.
        for (response, wire) in [
            (
                response(op::SET, 0, 1, "test", "test", ""),
                "81 01 0004 0004 0000 00000008 00000001 | 74657374 74657374",
            ),
            (
                response(op::GET, 0, 2, "test", "test", "hello"),
                "81 00 0004 0004 0000 0000000d 00000002 | 74657374 74657374 68656c6c6f",
            ),
            (
                response(op::GET, status::NOT_FOUND, 3, "test", "nope", ""),
                "81 00 0004 0004 0002 00000008 00000003 | 74657374 6e6f7065",
            ),
            (
                Response::bare(op::HEARTBEAT, 0, 4),
                "81 03 0000 0000 0000 00000000 00000004",
            ),
            (
                response(op::NOTIFY, 0, 5, "test", "", ""),
                "81 02 0004 0000 0000 00000004 00000005 | 74657374",
            ),
            (
                response(op::NOTIFY, 0, 5, "test", "test", "hello"),
                "81 02 0004 0004 0000 0000000d 00000005 | 74657374 74657374 68656c6c6f",
            ),
            (
                response(op::NOTIFY, status::NOT_FOUND, 5, "test", "test", ""),
                "81 02 0004 0004 0002 00000008 00000005 | 74657374 74657374",
            ),
            (
                response(op::VERSION, 0, 7, "", "", "polykv 0.1.0"),
                "81 04 0000 0000 0000 0000000c 00000007 | 706f6c796b7620302e312e30",
            ),
        ] {
            assert_eq!(encode(&response), hex(wire), "{response:?}");
        }
        // 9: A + B > T.
        check_request(
            "80 00 0004 0004 0000 00000005 00000008 | 68656c6c6f",
            Request::Malformed { op: 0, opaque: 8 },
        );
        assert_eq!(
            encode(&Response::bare(0, status::INVALID, 8)),
            hex("81 00 0000 0000 0003 00000000 00000008")
        );
        // 10: bad magic closes.
        assert!(SERVER.decode_request(&[0x00, 0, 0]).is_err());
        assert!(SERVER.decode_request(&[0x81]).is_err());
        // 11: T over the maximum, decided from the header alone.
        assert_eq!(
            SERVER.decode_request(&hex("80 00 0004 0004 0000 00100001 00000009")),
            Ok(Decoded::Frame(Request::TooLarge { op: 0, opaque: 9 }, 16))
        );
    }

    #[test]
    fn unknown_opcodes_and_split_frames() {
        check_request(
            "80 06 0000 0000 0000 00000002 00000001 | abcd",
            Request::Malformed { op: 6, opaque: 1 },
        );
        let bytes = hex("80 01 0004 0004 0000 0000000d 00000001 | 74657374 74657374 68656c6c6f");
        for cut in 0..bytes.len() {
            assert_eq!(
                SERVER.decode_request(&bytes[..cut]),
                Ok(Decoded::Incomplete),
                "cut {cut}"
            );
        }
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let Ok(Decoded::Frame(_, used)) = SERVER.decode_request(&two) else {
            panic!()
        };
        assert_eq!(used, bytes.len());
        // Reserved bytes 6-7 are ignored.
        let mut flagged = bytes.clone();
        flagged[6] = 0xff;
        assert_eq!(
            SERVER.decode_request(&flagged),
            Ok(Decoded::Frame(
                frame(op::SET, 1, "test", "test", "hello"),
                bytes.len()
            ))
        );
    }

    proptest! {
        #[test]
        fn frames_round_trip(op in 0u8..=5, opaque in any::<u32>(), d in proptest::collection::vec(any::<u8>(), 0..20), n in proptest::collection::vec(any::<u8>(), 0..20), v in proptest::collection::vec(any::<u8>(), 0..50), st in 0u16..4) {
            let request = Request::Frame { op: Op::from_code(op).expect("0 to 5 are known"), opaque, data_id: d.clone().into(), datanum_id: n.clone().into(), value: v.clone().into() };
            let mut out = BytesMut::new();
            CLIENT.encode_request(&request, &mut out);
            prop_assert_eq!(SERVER.decode_request(&out), Ok(Decoded::Frame(request, out.len())));
            let response = Response { op, status: st, opaque, data_id: d.into(), datanum_id: n.into(), value: v.into() };
            let mut out = BytesMut::new();
            SERVER.encode_response(&response, &mut out);
            prop_assert_eq!(CLIENT.decode_response(&out), Ok(Decoded::Frame(response, out.len())));
        }

        #[test]
        fn fuzz_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz_server(&data);
            fuzz_client(&data);
        }
    }
}
