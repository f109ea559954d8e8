//! Golden vectors of nmdb.md §11, every malformed case of §6, the size checks of §4, framing,
//! the INCR format (§5.3), the checksum (§10) and round trips.

use super::*;
use proptest::prelude::*;

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

const TCP: NmdbServerCodec = NmdbServerCodec::tcp();
const UDP: NmdbServerCodec = NmdbServerCodec::udp();
const SCTP: NmdbServerCodec = NmdbServerCodec::sctp();
const TCP_CLIENT: NmdbClientCodec = NmdbClientCodec::tcp();
const UDP_CLIENT: NmdbClientCodec = NmdbClientCodec::udp();

fn encode_reply(codec: NmdbServerCodec, id: u32, body: ResponseBody) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec.encode_response(&Response { id, body }, &mut out);
    out.to_vec()
}

fn encode_request(codec: NmdbClientCodec, request: &Request) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec.encode_request(request, &mut out);
    out.to_vec()
}

/// Decodes exactly one whole TCP frame.
fn decode(bytes: &[u8]) -> Request {
    match TCP.decode_request(bytes).unwrap() {
        Decoded::Frame(request, used) => {
            assert_eq!(used, bytes.len());
            request
        }
        Decoded::Incomplete => panic!("incomplete"),
    }
}

/// Decodes exactly one whole TCP reply frame.
fn decode_reply(bytes: &[u8]) -> Response {
    match TCP_CLIENT.decode_response(bytes).unwrap() {
        Decoded::Frame(reply, used) => {
            assert_eq!(used, bytes.len());
            reply
        }
        Decoded::Incomplete => panic!("incomplete"),
    }
}

/// A bare message: version 1, id 1, `code`, flags 0, then `payload`.
fn message(code: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![0x10, 0, 0, 1];
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(payload);
    m
}

fn sizes(list: &[u32]) -> Vec<u8> {
    list.iter().flat_map(|s| s.to_be_bytes()).collect()
}

fn b(k: &str) -> Bytes {
    Bytes::copy_from_slice(k.as_bytes())
}

fn get(mode: Mode, key: &str) -> Request {
    Request::Get {
        id: 1,
        mode,
        key: b(key),
    }
}

const BROKEN: Request = Request::Broken { id: 1 };

// ---- §11 test vectors ----

#[test]
fn vector_1_ok_mini_reply() {
    let bytes = hex("00 00 00 0c  00 00 00 01  00 00 08 03");
    assert_eq!(encode_reply(TCP, 1, ResponseBody::Ok), bytes);
    assert_eq!(
        decode_reply(&bytes),
        Response {
            id: 1,
            body: ResponseBody::Ok
        }
    );
}

#[test]
fn vector_2_the_originals_byte_swapped_err_ver() {
    // The original's reply decodes, but its id is 0x01000000, not 1: libnmdb sees an error
    // either way. polykv never sends it: its bare message for the same case is below.
    let original = hex("01 00 00 00  00 00 08 00  00 00 01 01");
    assert_eq!(
        super::decode_reply(&original).unwrap(),
        Response {
            id: 0x0100_0000,
            body: ResponseBody::Error(error::VER)
        }
    );
    assert_eq!(
        encode_reply(UDP, 1, ResponseBody::Error(error::VER)),
        hex("00 00 00 01  00 00 08 00  00 00 01 01")
    );
}

#[test]
fn vector_3_err_ver_with_a_correct_id_then_close() {
    let request = decode(&hex("00 00 00 0c  20 00 00 01  01 01 00 00"));
    assert_eq!(request, Request::BadVersion { id: 1 });
    assert_eq!(request.malformed_error(), Some(error::VER));
    assert!(request.closes_after_reply(Transport::Tcp));
    assert!(!request.closes_after_reply(Transport::Udp));
    assert!(!request.closes_after_reply(Transport::Sctp));
    assert_eq!(
        encode_reply(TCP, request.id(), ResponseBody::Error(error::VER)),
        hex("00 00 00 10  00 00 00 01  00 00 08 00  00 00 01 01")
    );
}

fn numbered_stats() -> Stats {
    Stats::from_counters(&std::array::from_fn(|i| i as u64 + 1))
}

#[test]
fn vector_4_stats_reply() {
    let stats = numbered_stats();
    let bytes = encode_reply(TCP, 1, stats.to_body());
    assert_eq!(bytes.len(), 200);
    assert_eq!(
        bytes[..16],
        hex("00 00 00 c8  00 00 00 01  00 00 08 03  00 00 00 b8")[..]
    );
    // The counters in spec order: counter #i is the (i+1)-th u64.
    for i in 0..STATS_COUNTERS {
        let at = 16 + i * 8;
        assert_eq!(
            bytes[at..at + 8],
            (i as u64 + 1).to_be_bytes(),
            "{}",
            Stats::NAMES[i]
        );
    }
    let reply = decode_reply(&bytes);
    assert_eq!(reply.body.as_stats(), Some(stats));
    assert_eq!(stats.to_body(), ResponseBody::stats(&stats.counters()));
}

#[test]
fn stats_fields_are_in_spec_order() {
    let s = numbered_stats();
    let by_field = [
        (s.cache_get, "cache_get"),
        (s.cache_set, "cache_set"),
        (s.cache_del, "cache_del"),
        (s.cache_cas, "cache_cas"),
        (s.cache_incr, "cache_incr"),
        (s.db_get, "db_get"),
        (s.db_set, "db_set"),
        (s.db_del, "db_del"),
        (s.db_cas, "db_cas"),
        (s.db_incr, "db_incr"),
        (s.cache_hits, "cache_hits"),
        (s.cache_misses, "cache_misses"),
        (s.db_hits, "db_hits"),
        (s.db_misses, "db_misses"),
        (s.msg_tipc, "msg_tipc"),
        (s.msg_tcp, "msg_tcp"),
        (s.msg_udp, "msg_udp"),
        (s.msg_sctp, "msg_sctp"),
        (s.net_version_mismatch, "net_version_mismatch"),
        (s.net_broken_req, "net_broken_req"),
        (s.net_unk_req, "net_unk_req"),
        (s.db_firstkey, "db_firstkey"),
        (s.db_nextkey, "db_nextkey"),
    ];
    for (i, (value, name)) in by_field.into_iter().enumerate() {
        assert_eq!(value, i as u64 + 1, "{name}");
        assert_eq!(Stats::NAMES[i], name);
        assert_eq!(s.get(name), Some(i as u64 + 1));
    }
    assert_eq!(s.get("nope"), None);
    assert_eq!(Stats::from_counters(&s.counters()), s);
    // Only an exact 184-byte payload is a STATS reply.
    assert_eq!(
        ResponseBody::Value(Bytes::from(vec![0; 176])).as_stats(),
        None
    );
    assert_eq!(
        ResponseBody::Value(Bytes::from(vec![0; 192])).as_stats(),
        None
    );
    assert_eq!(
        ResponseBody::CacheHit(Bytes::from(vec![0; 184])).as_stats(),
        None
    );
    assert_eq!(
        ResponseBody::Value(Bytes::from(vec![0; 184])).as_stats(),
        Some(Stats::default())
    );
}

#[test]
fn vector_5_incr_format() {
    let (after_first, value) = incr_value(b"5\0", 10).unwrap();
    assert_eq!(value, 15);
    assert_eq!(after_first, format!("{}15\0", " ".repeat(21)).into_bytes());
    let (after_second, value) = incr_value(&after_first, -3).unwrap();
    assert_eq!(value, 12);
    assert_eq!(
        after_second,
        hex("20 20 20 20 20 20 20 20 20 20 20 20 20 20 20 20 20 20 20 20 20 31 32 00")
    );
}

#[test]
fn vector_6_incr_ok_reply() {
    let bytes = hex("00 00 00 18  00 00 00 01  00 00 08 03  00 00 00 08  00 00 00 00 00 00 00 0c");
    assert_eq!(encode_reply(TCP, 1, ResponseBody::incr(12)), bytes);
    assert_eq!(decode_reply(&bytes).body.as_incr(), Some(12));
    assert_eq!(ResponseBody::incr(-1).as_incr(), Some(-1));
    assert_eq!(ResponseBody::Value(b("1234567")).as_incr(), None);
    assert_eq!(ResponseBody::CacheHit(b("12345678")).as_incr(), None);
}

#[test]
fn vectors_7_to_13_requests() {
    let cases = [
        (
            "00 00 00 11  10 00 00 01  01 01 00 00  00 00 00 01  6b",
            get(Mode::Normal, "k"),
        ),
        (
            "00 00 00 16  10 00 00 01  01 02 00 00  00 00 00 01  00 00 00 01  6b 76",
            Request::Set {
                id: 1,
                mode: Mode::Normal,
                key: b("k"),
                value: b("v"),
            },
        ),
        (
            "00 00 00 16  10 00 00 01  01 02 00 02  00 00 00 01  00 00 00 01  6b 76",
            Request::Set {
                id: 1,
                mode: Mode::Sync,
                key: b("k"),
                value: b("v"),
            },
        ),
        (
            "00 00 00 1b  10 00 00 01  01 04 00 00  00 00 00 01  00 00 00 01  00 00 00 01  6b 76 77",
            Request::Cas {
                id: 1,
                mode: Mode::Normal,
                key: b("k"),
                old: b("v"),
                new: b("w"),
            },
        ),
        (
            "00 00 00 1a  10 00 00 01  01 05 00 00  00 00 00 02  6b 00  00 00 00 00 00 00 00 0a",
            Request::Incr {
                id: 1,
                mode: Mode::Normal,
                key: Bytes::from_static(b"k\0"),
                delta: 10,
            },
        ),
        (
            "00 00 00 0c  10 00 00 01  01 06 00 00",
            Request::Stats { id: 1 },
        ),
        (
            "00 00 00 0c  10 00 00 01  01 07 00 00",
            Request::FirstKey { id: 1 },
        ),
        // Not in §11, but the same layout tables (§2.2).
        (
            "00 00 00 11  10 00 00 01  01 03 00 01  00 00 00 01  6b",
            Request::Del {
                id: 1,
                mode: Mode::CacheOnly,
                key: b("k"),
            },
        ),
        (
            "00 00 00 11  10 00 00 05  01 08 00 00  00 00 00 01  61",
            Request::NextKey { id: 5, key: b("a") },
        ),
        (
            "00 00 00 1a  1f ff ff ff  01 05 00 01  00 00 00 02  6b 00  ff ff ff ff ff ff ff fd",
            Request::Incr {
                id: ID_MASK,
                mode: Mode::CacheOnly,
                key: Bytes::from_static(b"k\0"),
                delta: -3,
            },
        ),
    ];
    for (bytes, request) in cases {
        let bytes = hex(bytes);
        assert_eq!(decode(&bytes), request);
        assert_eq!(encode_request(TCP_CLIENT, &request), bytes, "{request:?}");
        // The datagram form is the same message without the prefix.
        assert_eq!(encode_request(UDP_CLIENT, &request), bytes[4..]);
        assert_eq!(decode_datagram(&bytes[4..]), Some(request));
    }
}

#[test]
fn vector_10_cache_hit_reply() {
    let bytes = hex("00 00 00 11  00 00 00 01  00 00 08 01  00 00 00 01  76");
    assert_eq!(encode_reply(TCP, 1, ResponseBody::CacheHit(b("v"))), bytes);
    assert_eq!(decode_reply(&bytes).body, ResponseBody::CacheHit(b("v")));
}

#[test]
fn vector_14_notin_and_err_broken() {
    let notin = hex("00 00 00 0c  00 00 00 01  00 00 08 04");
    let broken = hex("00 00 00 10  00 00 00 01  00 00 08 00  00 00 01 03");
    assert_eq!(encode_reply(TCP, 1, ResponseBody::NotIn), notin);
    assert_eq!(
        encode_reply(TCP, 1, ResponseBody::Error(error::BROKEN)),
        broken
    );
    assert_eq!(decode_reply(&notin).body, ResponseBody::NotIn);
    assert_eq!(
        decode_reply(&broken).body,
        ResponseBody::Error(error::BROKEN)
    );
}

#[test]
fn other_reply_shapes() {
    let cases = [
        (
            ResponseBody::NoMatch,
            "00 00 00 0c  00 00 00 07  00 00 08 05",
        ),
        (
            ResponseBody::CacheMiss,
            "00 00 00 0c  00 00 00 07  00 00 08 02",
        ),
        (
            ResponseBody::Error(error::RO),
            "00 00 00 10  00 00 00 07  00 00 08 00  00 00 01 07",
        ),
        (
            ResponseBody::Error(error::MEM),
            "00 00 00 10  00 00 00 07  00 00 08 00  00 00 01 05",
        ),
        (
            ResponseBody::Error(error::DB),
            "00 00 00 10  00 00 00 07  00 00 08 00  00 00 01 06",
        ),
        (
            ResponseBody::Error(error::UNKREQ),
            "00 00 00 10  00 00 00 07  00 00 08 00  00 00 01 04",
        ),
        (
            ResponseBody::Value(b("xy")),
            "00 00 00 12  00 00 00 07  00 00 08 03  00 00 00 02  78 79",
        ),
        (
            ResponseBody::Value(Bytes::new()),
            "00 00 00 10  00 00 00 07  00 00 08 03  00 00 00 00",
        ),
    ];
    for (body, bytes) in cases {
        let bytes = hex(bytes);
        assert_eq!(encode_reply(TCP, 7, body.clone()), bytes);
        assert_eq!(encode_reply(UDP, 7, body.clone()), bytes[4..]);
        assert_eq!(decode_reply(&bytes).body, body);
    }
    for (code, name) in [
        (error::VER, "ERR_VER"),
        (error::SEND, "ERR_SEND"),
        (error::BROKEN, "ERR_BROKEN"),
        (error::UNKREQ, "ERR_UNKREQ"),
        (error::MEM, "ERR_MEM"),
        (error::DB, "ERR_DB"),
        (error::RO, "ERR_RO"),
        (0x999, "ERR_UNKNOWN"),
    ] {
        assert_eq!(error::name(code), name);
    }
}

#[test]
fn vector_15_bad_frame_lengths_close() {
    for frame_len in [0u32, 1, 4, 8, 65_537, 0x0100_0000, u32::MAX] {
        let mut bytes = frame_len.to_be_bytes().to_vec();
        // Only the length is looked at: the decision is made before any body arrives (R2).
        assert!(TCP.decode_request(&bytes).is_err(), "F = {frame_len}");
        bytes.extend_from_slice(&[0x10, 0, 0, 1, 1, 1, 0, 0]);
        assert!(TCP.decode_request(&bytes).is_err(), "F = {frame_len}");
    }
}

#[test]
fn vector_16_unknown_flag_bits_are_ignored() {
    let request = decode(&hex(
        "00 00 00 11  10 00 00 01  01 01 ff ff  00 00 00 01  6b",
    ));
    assert_eq!(request, get(Mode::CacheOnly, "k"));
    assert_eq!(request.mode(), Some(Mode::CacheOnly));
    // CACHE_ONLY overrides SYNC; bits other than 0 and 1 mean nothing.
    assert_eq!(Mode::from_flags(0xffff), Mode::CacheOnly);
    assert_eq!(Mode::from_flags(0x0003), Mode::CacheOnly);
    assert_eq!(Mode::from_flags(0xfffe), Mode::Sync);
    assert_eq!(Mode::from_flags(0x0002), Mode::Sync);
    assert_eq!(Mode::from_flags(0xfffc), Mode::Normal);
    assert_eq!(Mode::from_flags(0), Mode::Normal);
    assert!(flags::cache_only(0x0001) && flags::cache_only(0xffff));
    assert!(!flags::cache_only(0xfffe));
    assert!(flags::sync(0x0002) && flags::sync(0xfffe));
    assert!(!flags::sync(0x0003), "CACHE_ONLY overrides SYNC");
    assert!(!flags::sync(0xfffd));
    for mode in [Mode::Normal, Mode::CacheOnly, Mode::Sync] {
        assert_eq!(Mode::from_flags(mode.flags()), mode);
    }
}

#[test]
fn vector_17_largest_tcp_set_and_its_get_reply() {
    let request = Request::Set {
        id: 1,
        mode: Mode::Normal,
        key: b("abc"),
        value: Bytes::from(vec![1u8; 65_513]),
    };
    let bytes = encode_request(TCP_CLIENT, &request);
    assert_eq!(bytes.len(), 65_536);
    assert_eq!(bytes[..4], [0, 1, 0, 0]);
    assert_eq!(decode(&bytes), request);
    let value = Bytes::from(vec![1u8; 65_513]);
    for body in [
        ResponseBody::CacheHit(value.clone()),
        ResponseBody::Value(value),
    ] {
        let reply = encode_reply(TCP, 1, body.clone());
        assert_eq!(reply.len(), 65_529);
        assert_eq!(decode_reply(&reply).body, body);
    }
}

#[test]
fn vector_18_udp_reply_too_large_is_err_send() {
    let value = Bytes::from(vec![1u8; 65_513]);
    for body in [
        ResponseBody::CacheHit(value.clone()),
        ResponseBody::Value(value),
    ] {
        assert_eq!(body.message_len(), 65_525);
        assert_eq!(
            encode_reply(UDP, 1, body),
            hex("00 00 00 01  00 00 08 00  00 00 01 02")
        );
    }
}

#[test]
fn n8_err_send_boundaries_per_transport() {
    let value = |n: usize| ResponseBody::Value(Bytes::from(vec![7u8; n]));
    let err_send = |prefix: bool| {
        let mut v = if prefix { vec![0, 0, 0, 0x10] } else { vec![] };
        v.extend(hex("00 00 00 01  00 00 08 00  00 00 01 02"));
        v
    };
    // UDP: messages up to 65 507 bytes.
    assert_eq!(encode_reply(UDP, 1, value(65_495)).len(), 65_507);
    assert_eq!(encode_reply(UDP, 1, value(65_496)), err_send(false));
    // SCTP: up to 65 532.
    assert_eq!(encode_reply(SCTP, 1, value(65_520)).len(), 65_532);
    assert_eq!(encode_reply(SCTP, 1, value(65_521)), err_send(false));
    // TCP: frames up to 65 536 (messages up to 65 532).
    assert_eq!(encode_reply(TCP, 1, value(65_520)).len(), 65_536);
    assert_eq!(encode_reply(TCP, 1, value(65_521)), err_send(true));
    assert_eq!(
        encode_reply(
            TCP,
            1,
            ResponseBody::CacheHit(Bytes::from(vec![0; 100_000]))
        ),
        err_send(true)
    );
    // Small replies are never replaced.
    assert_eq!(encode_reply(UDP, 1, ResponseBody::Ok).len(), 8);
}

#[test]
fn vector_19_largest_udp_set_is_accepted() {
    let request = Request::Set {
        id: 1,
        mode: Mode::Normal,
        key: b("k"),
        value: Bytes::from(vec![0u8; 65_490]),
    };
    let bytes = encode_request(UDP_CLIENT, &request);
    assert_eq!(bytes.len(), 65_507);
    assert_eq!(
        UDP.decode_request(&bytes).unwrap(),
        Decoded::Frame(request.clone(), 65_507)
    );
    assert_eq!(decode_datagram(&bytes), Some(request));
}

#[test]
fn vector_20_and_n3_short_datagrams_are_dropped() {
    let full = hex("10 00 00 01  01 06 00 00");
    for len in 0..8 {
        assert_eq!(decode_datagram(&full[..len]), None, "{len} bytes");
        assert!(UDP.decode_request(&full[..len]).is_err(), "{len} bytes");
        assert!(SCTP.decode_request(&full[..len]).is_err(), "{len} bytes");
    }
    assert_eq!(decode_datagram(&full), Some(Request::Stats { id: 1 }));
    assert_eq!(
        UDP.decode_request(&full).unwrap(),
        Decoded::Frame(Request::Stats { id: 1 }, 8)
    );
    // 8–11 bytes are processed like any message: a GET without its key size is broken.
    assert_eq!(
        decode_datagram(&hex("10 00 00 03  01 01 00 00  00 00")),
        Some(Request::Broken { id: 3 })
    );
}

#[test]
fn vector_21_del_replies_are_mini() {
    // Normal DEL of a missing key answers OK, SYNC DEL NOTIN: both 8-byte messages.
    assert_eq!(
        encode_reply(TCP, 1, ResponseBody::Ok),
        hex("00 00 00 0c  00 00 00 01  00 00 08 03")
    );
    assert_eq!(
        encode_reply(TCP, 1, ResponseBody::NotIn),
        hex("00 00 00 0c  00 00 00 01  00 00 08 04")
    );
    let sync_del = Request::Del {
        id: 1,
        mode: Mode::Sync,
        key: b("gone"),
    };
    assert_eq!(
        encode_request(TCP_CLIENT, &sync_del),
        hex("00 00 00 14  10 00 00 01  01 03 00 02  00 00 00 04  67 6f 6e 65")
    );
}

// ---- §6 malformed input ----

#[test]
fn n1_frame_length_out_of_range_closes() {
    assert!(TCP.decode_request(&hex("00 00 00 08")).is_err());
    assert!(TCP.decode_request(&hex("00 01 00 01")).is_err());
    // The smallest and largest accepted lengths wait for their bodies.
    assert_eq!(
        TCP.decode_request(&hex("00 00 00 09")).unwrap(),
        Decoded::Incomplete
    );
    assert_eq!(
        TCP.decode_request(&hex("00 01 00 00")).unwrap(),
        Decoded::Incomplete
    );
}

#[test]
fn n2_short_tcp_frames_are_broken_with_their_id() {
    // F = 9..11: ERR_BROKEN, the id from the low 28 bits of the first four message bytes,
    // whatever the version nibble says.
    assert_eq!(
        decode(&hex("00 00 00 09  1a bc de f0  00")),
        Request::Broken { id: 0x0abc_def0 }
    );
    assert_eq!(
        decode(&hex("00 00 00 0a  20 00 00 07  01 01")),
        Request::Broken { id: 7 }
    );
    let eleven = decode(&hex("00 00 00 0b  10 00 00 02  01 01 00"));
    assert_eq!(eleven, Request::Broken { id: 2 });
    assert_eq!(eleven.malformed_error(), Some(error::BROKEN));
    assert!(!eleven.closes_after_reply(Transport::Tcp), "keep");
}

#[test]
fn n4_bad_version() {
    for nibble in [0u8, 2, 3, 0xf] {
        let mut bytes = hex("00 00 00 11  00 00 00 2a  01 01 00 00  00 00 00 01  6b");
        bytes[4] = nibble << 4;
        assert_eq!(decode(&bytes), Request::BadVersion { id: 42 }, "{nibble}");
        let datagram = decode_datagram(&bytes[4..]);
        assert_eq!(datagram, Some(Request::BadVersion { id: 42 }));
    }
    // Version is checked before the code and the sizes.
    assert_eq!(
        decode_datagram(&hex("21 23 45 67  09 99 00 00")),
        Some(Request::BadVersion { id: 0x0123_4567 })
    );
}

#[test]
fn n5_unknown_request_code() {
    for unknown in [0u16, 0x100, 0x109, 0xffff] {
        let request = decode_message(&message(unknown, &[]));
        assert_eq!(
            request,
            Request::Unknown {
                id: 1,
                code: unknown
            }
        );
        assert_eq!(request.malformed_error(), Some(error::UNKREQ));
    }
    // The code is checked before the sizes.
    assert_eq!(
        decode_message(&message(0x109, &[0xff; 3])),
        Request::Unknown { id: 1, code: 0x109 }
    );
}

#[test]
fn n6_size_checks_of_section_4() {
    let parse = |code: u16, payload: &[u8]| decode_message(&message(code, payload));
    // GET, DEL, NEXTKEY: psize ≥ 4 and psize ≥ 4 + ksize.
    for code in [code::GET, code::DEL, code::NEXTKEY] {
        assert_eq!(parse(code, &[]), BROKEN);
        assert_eq!(parse(code, &[0, 0, 0]), BROKEN);
        assert_eq!(parse(code, &[0, 0, 0, 2, b'k']), BROKEN);
        assert_eq!(parse(code, &[0xff, 0xff, 0xff, 0xff]), BROKEN);
        assert_eq!(parse(code, &[0xff, 0xff, 0xff, 0xfc, 1, 2, 3, 4]), BROKEN);
        assert!(matches!(parse(code, &[0, 0, 0, 0]), r if r != BROKEN));
        assert!(matches!(parse(code, &[0, 0, 0, 2, b'k', b'k']), r if r != BROKEN));
    }
    assert_eq!(
        parse(code::DEL, &[0, 0, 0, 0]),
        Request::Del {
            id: 1,
            mode: Mode::Normal,
            key: Bytes::new()
        }
    );
    // SET.
    assert_eq!(parse(code::SET, &[0, 0, 0, 1, 0, 0, 0]), BROKEN);
    assert_eq!(parse(code::SET, &sizes(&[1, 1])[..7]), BROKEN);
    assert_eq!(parse(code::SET, &[0, 0, 0, 1, 0, 0, 0, 1, b'k']), BROKEN);
    assert_eq!(parse(code::SET, &sizes(&[u32::MAX, u32::MAX])), BROKEN);
    assert_eq!(parse(code::SET, &sizes(&[u32::MAX, 2])), BROKEN);
    assert_eq!(
        parse(code::SET, &sizes(&[0, 0])),
        Request::Set {
            id: 1,
            mode: Mode::Normal,
            key: Bytes::new(),
            value: Bytes::new()
        }
    );
    let set_of = |ksize: u32, vsize: u32| {
        let mut payload = sizes(&[ksize, vsize]);
        payload.resize(8 + (ksize + vsize) as usize, b'x');
        parse(code::SET, &payload)
    };
    assert!(matches!(set_of(65_536, 0), Request::Set { .. }));
    assert!(matches!(set_of(0, 65_536), Request::Set { .. }));
    assert!(matches!(set_of(30_000, 35_536), Request::Set { .. }));
    assert_eq!(set_of(30_000, 35_537), BROKEN, "sum over 65 536");
    assert_eq!(set_of(65_537, 0), BROKEN);
    assert_eq!(set_of(0, 65_537), BROKEN);
    // CAS.
    assert_eq!(parse(code::CAS, &[0; 11]), BROKEN);
    assert_eq!(parse(code::CAS, &sizes(&[1, 0, 0])), BROKEN);
    assert_eq!(parse(code::CAS, &[0xff; 12]), BROKEN);
    assert_eq!(
        parse(code::CAS, &sizes(&[0, 0, 0])),
        Request::Cas {
            id: 1,
            mode: Mode::Normal,
            key: Bytes::new(),
            old: Bytes::new(),
            new: Bytes::new()
        }
    );
    let cas_of = |k: u32, o: u32, n: u32| {
        let mut payload = sizes(&[k, o, n]);
        payload.resize(12 + (k + o + n) as usize, b'x');
        parse(code::CAS, &payload)
    };
    assert!(matches!(cas_of(1, 65_535, 0), Request::Cas { .. }));
    assert!(matches!(
        cas_of(20_000, 20_000, 25_536),
        Request::Cas { .. }
    ));
    assert_eq!(cas_of(20_000, 20_000, 25_537), BROKEN);
    assert_eq!(cas_of(65_537, 0, 0), BROKEN);
    assert_eq!(cas_of(0, 0, 65_537), BROKEN);
    // INCR: needs the 8-byte increment after the key; ksize + 8 ≤ 65 536.
    assert_eq!(parse(code::INCR, &[0, 0, 0]), BROKEN);
    assert_eq!(
        parse(code::INCR, &[0, 0, 0, 1, b'k', 0, 0, 0, 0, 0, 0, 0]),
        BROKEN
    );
    assert_eq!(parse(code::INCR, &[0xff, 0xff, 0xff, 0xf9]), BROKEN);
    assert_eq!(
        parse(code::INCR, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        Request::Incr {
            id: 1,
            mode: Mode::Normal,
            key: Bytes::new(),
            delta: 1
        }
    );
    let incr_of = |ksize: u32| {
        let mut payload = sizes(&[ksize]);
        payload.resize(4 + ksize as usize + 8, 0);
        parse(code::INCR, &payload)
    };
    assert!(matches!(incr_of(65_528), Request::Incr { .. }));
    assert_eq!(incr_of(65_529), BROKEN);
    // STATS and FIRSTKEY are always valid.
    assert_eq!(parse(code::STATS, &[]), Request::Stats { id: 1 });
    assert_eq!(parse(code::FIRSTKEY, &[]), Request::FirstKey { id: 1 });
    assert_eq!(BROKEN.malformed_error(), Some(error::BROKEN));
}

#[test]
fn n7_err_ro_reply_and_which_requests_are_mutations() {
    assert_eq!(
        encode_reply(TCP, 9, ResponseBody::Error(error::RO)),
        hex("00 00 00 10  00 00 00 09  00 00 08 00  00 00 01 07")
    );
    let mutations = [
        Request::Set {
            id: 1,
            mode: Mode::CacheOnly,
            key: b("k"),
            value: b("v"),
        },
        Request::Del {
            id: 1,
            mode: Mode::CacheOnly,
            key: b("k"),
        },
        Request::Cas {
            id: 1,
            mode: Mode::Normal,
            key: b("k"),
            old: b("a"),
            new: b("b"),
        },
        Request::Incr {
            id: 1,
            mode: Mode::Normal,
            key: b("k"),
            delta: 1,
        },
    ];
    for request in mutations {
        assert!(request.is_mutation(), "{request:?}");
        assert_eq!(request.malformed_error(), None);
    }
    for request in [
        get(Mode::Normal, "k"),
        Request::Stats { id: 1 },
        Request::FirstKey { id: 1 },
        Request::NextKey { id: 1, key: b("k") },
        BROKEN,
    ] {
        assert!(!request.is_mutation(), "{request:?}");
    }
}

#[test]
fn n9_unknown_flags_and_trailing_bytes_are_ignored() {
    let parse = |code: u16, payload: &[u8]| decode_message(&message(code, payload));
    assert_eq!(
        parse(code::GET, &[0, 0, 0, 1, b'k', 9, 9]),
        get(Mode::Normal, "k")
    );
    let mut set = sizes(&[1, 1]);
    set.extend_from_slice(b"kvtrailing");
    assert_eq!(
        parse(code::SET, &set),
        Request::Set {
            id: 1,
            mode: Mode::Normal,
            key: b("k"),
            value: b("v")
        }
    );
    let mut incr = sizes(&[1]);
    incr.extend_from_slice(&[b'k', 0, 0, 0, 0, 0, 0, 0, 5, 0xee]);
    assert_eq!(
        parse(code::INCR, &incr),
        Request::Incr {
            id: 1,
            mode: Mode::Normal,
            key: b("k"),
            delta: 5
        }
    );
    assert_eq!(parse(code::STATS, &[1, 2, 3]), Request::Stats { id: 1 });
    assert_eq!(parse(code::FIRSTKEY, &[0; 9]), Request::FirstKey { id: 1 });
    // Flags on requests that use none are ignored too.
    let mut stats = message(code::STATS, &[]);
    stats[6] = 0xff;
    stats[7] = 0xff;
    assert_eq!(decode_message(&stats), Request::Stats { id: 1 });
    let mut set_flags = message(code::SET, &set);
    set_flags[7] = 0xfe; // SYNC plus unknown bits
    assert_eq!(decode_message(&set_flags).mode(), Some(Mode::Sync));
}

#[test]
fn n10_every_prefix_of_a_frame_is_incomplete() {
    // A frame cut anywhere is Incomplete (EOF then discards it: the session's business).
    let frames = [
        encode_request(
            TCP_CLIENT,
            &Request::Set {
                id: 1,
                mode: Mode::Sync,
                key: b("key"),
                value: b("value"),
            },
        ),
        hex("00 00 00 09  10 00 00 05  01"),
        encode_request(TCP_CLIENT, &Request::Stats { id: 2 }),
    ];
    for frame in &frames {
        for cut in 0..frame.len() {
            assert_eq!(
                TCP.decode_request(&frame[..cut]).unwrap(),
                Decoded::Incomplete,
                "cut at {cut}"
            );
        }
        assert!(matches!(
            TCP.decode_request(frame).unwrap(),
            Decoded::Frame(_, used) if used == frame.len()
        ));
    }
}

// ---- framing ----

#[test]
fn pipelined_frames_are_decoded_in_order() {
    let mut all = Vec::new();
    let requests = [
        Request::Set {
            id: 1,
            mode: Mode::Sync,
            key: b("key"),
            value: b("value"),
        },
        get(Mode::Normal, "key"),
        Request::Broken { id: 3 },
        Request::Unknown { id: 4, code: 0x1ff },
        Request::Incr {
            id: 5,
            mode: Mode::CacheOnly,
            key: b("n"),
            delta: -1,
        },
        Request::BadVersion { id: 6 },
    ];
    for r in &requests {
        all.extend(encode_request(TCP_CLIENT, r));
    }
    // A frame of 10 bytes in the middle of the stream.
    let short = hex("00 00 00 0a  10 00 00 07  01 01");
    all.extend_from_slice(&short);
    let mut rest = &all[..];
    let mut decoded = Vec::new();
    while !rest.is_empty() {
        let Decoded::Frame(request, used) = TCP.decode_request(rest).unwrap() else {
            panic!("incomplete with {} bytes left", rest.len())
        };
        decoded.push(request);
        rest = &rest[used..];
    }
    let mut expected = requests.to_vec();
    expected.push(Request::Broken { id: 7 });
    assert_eq!(decoded, expected);
}

#[test]
fn replies_split_and_pipelined_on_the_client() {
    let bodies = [
        ResponseBody::Ok,
        ResponseBody::CacheHit(b("value")),
        ResponseBody::Error(error::BROKEN),
        ResponseBody::incr(99),
        numbered_stats().to_body(),
        ResponseBody::NotIn,
    ];
    let mut all = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        all.extend(encode_reply(TCP, i as u32, body.clone()));
    }
    let first = encode_reply(TCP, 0, bodies[0].clone()).len();
    for cut in 0..first {
        assert_eq!(
            TCP_CLIENT.decode_response(&all[..cut]).unwrap(),
            Decoded::Incomplete
        );
    }
    let second = encode_reply(TCP, 1, bodies[1].clone()).len();
    for cut in first..first + second {
        assert_eq!(
            TCP_CLIENT.decode_response(&all[first..cut]).unwrap(),
            Decoded::Incomplete
        );
    }
    let mut rest = &all[..];
    for (i, body) in bodies.iter().enumerate() {
        let Decoded::Frame(reply, used) = TCP_CLIENT.decode_response(rest).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(
            reply,
            Response {
                id: i as u32,
                body: body.clone()
            }
        );
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
}

#[test]
fn client_rejects_malformed_replies() {
    let bad_messages = [
        ("00 00 00 01  00 00 08 03  00 00 00 05  61", "n disagrees"),
        ("00 00 00 01  00 00 08 03  00 00 00 00  61", "n too small"),
        ("00 00 00 01  00 00 08 03  00 00", "OK of 10 bytes"),
        ("00 00 00 01  00 00 08 01", "CACHE_HIT without a payload"),
        (
            "00 00 00 01  00 00 08 04  00 00 00 00",
            "NOTIN with a payload",
        ),
        ("00 00 00 01  00 00 08 00", "ERR without a code"),
        ("00 00 00 01  00 00 08 00  00 00 01 03  00", "ERR too long"),
        ("00 00 00 01  00 00 09 99", "unknown code"),
        ("00 00 00 01  00 00 08", "7 bytes"),
        ("", "empty"),
    ];
    for (bytes, why) in bad_messages {
        let bytes = hex(bytes);
        assert!(super::decode_reply(&bytes).is_err(), "{why}");
        assert!(UDP_CLIENT.decode_response(&bytes).is_err(), "{why}");
    }
    // TCP reply frames must be 12..=65 536 bytes.
    assert!(TCP_CLIENT
        .decode_response(&hex("00 00 00 0b  00 00 00 01  00 00 08"))
        .is_err());
    assert!(TCP_CLIENT.decode_response(&hex("00 01 00 01")).is_err());
    assert_eq!(
        TCP_CLIENT
            .decode_response(&hex("00 00 00 0c  00 00"))
            .unwrap(),
        Decoded::Incomplete
    );
    // Ids are taken as sent, top bits included.
    assert_eq!(
        super::decode_reply(&hex("f0 00 00 01  00 00 08 02")).unwrap(),
        Response {
            id: 0xf000_0001,
            body: ResponseBody::CacheMiss
        }
    );
}

#[test]
fn codec_defaults_and_transport_limits() {
    assert_eq!(NmdbServerCodec::default(), TCP);
    assert_eq!(NmdbClientCodec::default(), TCP_CLIENT);
    assert_eq!(Transport::Tcp.max_message(), 65_532);
    assert_eq!(Transport::Udp.max_message(), 65_507);
    assert_eq!(Transport::Sctp.max_message(), 65_532);
    assert!(!Transport::Tcp.is_datagram());
    assert!(Transport::Udp.is_datagram() && Transport::Sctp.is_datagram());
}

// ---- §5.3 INCR value format ----

#[test]
fn incr_value_rules() {
    assert_eq!(incr_value(b"", 1), None, "empty value");
    assert_eq!(incr_value(b"5", 1), None, "not NUL-terminated");
    assert_eq!(incr_value(b"5\0x", 1), None, "NUL not last");
    assert_eq!(
        incr_value(b"abc\0", 2).unwrap().1,
        2,
        "no digits count as 0"
    );
    assert_eq!(incr_value(b"\0", 0).unwrap().1, 0);
    assert_eq!(incr_value(b" \t\n\x0b\x0c\r-7x\0", 0).unwrap().1, -7);
    assert_eq!(incr_value(b"   42\0", 1).unwrap().1, 43, "leading spaces");
    assert_eq!(incr_value(b"+9\0", 1).unwrap().1, 10);
    assert_eq!(incr_value(b"12abc\0", 0).unwrap().1, 12);
    assert_eq!(
        incr_value(b"1\x002\0", 0).unwrap().1,
        1,
        "up to the first NUL"
    );
    assert_eq!(
        incr_value(b"99999999999999999999\0", 0).unwrap().1,
        i64::MAX,
        "saturates"
    );
    assert_eq!(
        incr_value(b"99999999999999999999\0", -1).unwrap().1,
        i64::MAX - 1,
        "saturates, then adds"
    );
    assert_eq!(
        incr_value(b"-99999999999999999999\0", 0).unwrap().1,
        i64::MIN
    );
    assert_eq!(
        incr_value(b"9223372036854775807\0", 1).unwrap().1,
        i64::MIN,
        "wrapping add"
    );
    assert_eq!(
        incr_value(b"-9223372036854775808\0", -1).unwrap().1,
        i64::MAX,
        "wrapping add"
    );
    // The written value: "%23lld" then a NUL, 24 bytes, whatever the old length up to 24.
    for old in [
        &b"1\0"[..],
        b"\0",
        &[b' '; 23].iter().chain(b"\0").copied().collect::<Vec<_>>(),
    ] {
        let (stored, _) = incr_value(old, 1).unwrap();
        assert_eq!(stored.len(), 24, "{old:?}");
    }
    let (stored, _) = incr_value(b"1\0", 1).unwrap();
    assert_eq!(&stored[..], format!("{:>23}\0", 2).as_bytes());
    let (stored, _) = incr_value(b"5\0", i64::MIN).unwrap();
    assert_eq!(&stored[..], b"   -9223372036854775803\0");
    let (stored, _) = incr_value(b"1\0", -1).unwrap();
    assert_eq!(&stored[..], format!("{}0\0", " ".repeat(22)).as_bytes());
}

#[test]
fn incr_value_longer_than_24_bytes_keeps_its_tail() {
    let mut long = vec![b'7'; 30];
    long[1] = 0;
    long.push(0);
    let (stored, value) = incr_value(&long, 1).unwrap();
    assert_eq!(value, 8);
    assert_eq!(stored.len(), 31, "a longer value keeps its length");
    assert_eq!(&stored[..24], format!("{:>23}\0", 8).as_bytes());
    assert_eq!(&stored[24..], &long[24..]);
    // 25 bytes: one byte of tail (the NUL).
    let mut old = b"100".to_vec();
    old.resize(25, 0);
    let (stored, value) = incr_value(&old, 1).unwrap();
    assert_eq!(value, 101);
    assert_eq!(stored, format!("{:>23}\0\0", 101).into_bytes());
}

#[test]
fn strtoll_matches_c() {
    let cases: [(&[u8], i64); 14] = [
        (b"", 0),
        (b"  ", 0),
        (b"-", 0),
        (b"+-5", 0),
        (b"- 5", 0),
        (b"-0", 0),
        (b"007", 7),
        (b"000000000000000000000000000005", 5),
        (b"9223372036854775807", i64::MAX),
        (b"9223372036854775808", i64::MAX),
        (b"-9223372036854775808", i64::MIN),
        (b"-9223372036854775809", i64::MIN),
        (b"\x0b\x0c42", 42),
        (b"1e5", 1),
    ];
    for (text, value) in cases {
        assert_eq!(strtoll(text), value, "{:?}", String::from_utf8_lossy(text));
    }
}

// ---- §10 checksum ----

#[test]
fn checksum_vectors() {
    assert_eq!(checksum(b""), 0xffff_ffff);
    assert_eq!(checksum(b"a"), 0xffff_ff9e);
    assert_eq!(checksum(b"hello world"), 0xffff_31ca);
    // The bug: for "abc" the words are "ab" and then the odd byte is key[1] = 'b', not 'c'.
    let s = 0x6261u32 + 0x62;
    assert_eq!(checksum(b"abc"), !s);
    assert_eq!(
        checksum(b"abc"),
        checksum(b"abz"),
        "the last byte is never read"
    );
    assert_eq!(server_index(b"a", 0), None);
    assert_eq!(server_index(b"a", 1), Some(0));
    assert_eq!(server_index(b"a", 3), Some((0xffff_ff9e_u32 % 3) as usize));
}

// ---- round trips and fuzz bodies ----

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Normal), Just(Mode::CacheOnly), Just(Mode::Sync)]
}

fn blob(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn request() -> impl Strategy<Value = Request> {
    let id = 0u32..=ID_MASK;
    prop_oneof![
        (id.clone(), mode(), blob(40)).prop_map(|(id, mode, key)| Request::Get { id, mode, key }),
        (id.clone(), mode(), blob(40), blob(200)).prop_map(|(id, mode, key, value)| {
            Request::Set {
                id,
                mode,
                key,
                value,
            }
        }),
        (id.clone(), mode(), blob(40)).prop_map(|(id, mode, key)| Request::Del { id, mode, key }),
        (id.clone(), mode(), blob(40), blob(40), blob(40)).prop_map(|(id, mode, key, old, new)| {
            Request::Cas {
                id,
                mode,
                key,
                old,
                new,
            }
        }),
        (id.clone(), mode(), blob(40), any::<i64>()).prop_map(|(id, mode, key, delta)| {
            Request::Incr {
                id,
                mode,
                key,
                delta,
            }
        }),
        id.clone().prop_map(|id| Request::Stats { id }),
        id.clone().prop_map(|id| Request::FirstKey { id }),
        (id.clone(), blob(40)).prop_map(|(id, key)| Request::NextKey { id, key }),
        id.clone().prop_map(|id| Request::BadVersion { id }),
        id.clone().prop_map(|id| Request::Broken { id }),
        (id, 0x109u16..).prop_map(|(id, code)| Request::Unknown { id, code }),
    ]
}

fn reply_body() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        Just(ResponseBody::Ok),
        Just(ResponseBody::NotIn),
        Just(ResponseBody::NoMatch),
        Just(ResponseBody::CacheMiss),
        any::<u32>().prop_map(ResponseBody::Error),
        blob(300).prop_map(ResponseBody::CacheHit),
        blob(300).prop_map(ResponseBody::Value),
        any::<i64>().prop_map(ResponseBody::incr),
        any::<[u64; STATS_COUNTERS]>().prop_map(|c| ResponseBody::stats(&c)),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(request in request()) {
        for (client, server) in [(TCP_CLIENT, TCP), (UDP_CLIENT, UDP), (NmdbClientCodec::sctp(), SCTP)] {
            let bytes = encode_request(client, &request);
            prop_assert_eq!(
                server.decode_request(&bytes).unwrap(),
                Decoded::Frame(request.clone(), bytes.len())
            );
        }
    }

    #[test]
    fn replies_round_trip(id in 0u32..=ID_MASK, body in reply_body()) {
        let reply = Response { id, body };
        for (server, client) in [(TCP, TCP_CLIENT), (UDP, UDP_CLIENT)] {
            let bytes = encode_reply(server, id, reply.body.clone());
            prop_assert_eq!(bytes.len(), reply.body.message_len() + if server == TCP { 4 } else { 0 });
            prop_assert_eq!(
                client.decode_response(&bytes).unwrap(),
                Decoded::Frame(reply.clone(), bytes.len())
            );
        }
    }

    #[test]
    fn stats_round_trip(counters in any::<[u64; STATS_COUNTERS]>()) {
        let stats = Stats::from_counters(&counters);
        prop_assert_eq!(stats.counters(), counters);
        prop_assert_eq!(stats.to_body().as_stats(), Some(stats));
    }

    #[test]
    fn incr_value_is_consistent(number in any::<i64>(), delta in any::<i64>()) {
        let old = format!("{number}\0");
        let (stored, new) = incr_value(old.as_bytes(), delta).unwrap();
        prop_assert_eq!(new, number.wrapping_add(delta));
        prop_assert_eq!(stored.len(), 24);
        prop_assert_eq!(strtoll(&stored[..23]), new);
    }

    #[test]
    fn fuzz_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz_server(&data);
        fuzz_client(&data);
    }

    #[test]
    fn fuzz_bodies_on_valid_frames(request in request(), body in reply_body()) {
        fuzz_server(&encode_request(TCP_CLIENT, &request));
        fuzz_server(&encode_request(UDP_CLIENT, &request));
        fuzz_client(&encode_reply(TCP, 1, body.clone()));
        fuzz_client(&encode_reply(UDP, 1, body));
    }
}

#[test]
fn fuzz_regression_reply_id_with_high_bits() {
    // Found by scripts/fuzz.sh (nmdb_client): a reply id with its top bits set was re-encoded
    // masked to 28 bits.
    fuzz_client(&hex("00 00 00 0c 32 00 00 0a 00 00 08 02"));
    fuzz_client(&hex("32 00 00 0a 00 00 08 02"));
}

#[test]
fn fuzz_bodies_on_large_and_pipelined_input() {
    // A datagram reply larger than the UDP limit decodes, and re-encodes as ERR_SEND.
    let big = encode_reply(SCTP, 1, ResponseBody::Value(Bytes::from(vec![0; 65_520])));
    fuzz_client(&big);
    let mut frames = encode_request(TCP_CLIENT, &get(Mode::Sync, "a"));
    frames.extend(hex("00 00 00 09  10 00 00 05  01"));
    frames.extend(encode_request(TCP_CLIENT, &Request::Stats { id: 3 }));
    fuzz_server(&frames);
    let mut replies = encode_reply(TCP, 1, ResponseBody::Ok);
    replies.extend(encode_reply(TCP, 2, ResponseBody::incr(5)));
    fuzz_client(&replies);
}
