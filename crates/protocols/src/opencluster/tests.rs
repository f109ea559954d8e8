//! Golden vectors of opencluster.md §15, every message layout of §4, the malformed cases of
//! §3/§11, framing, and round trips.

use super::*;
use proptest::prelude::*;

/// Hex as the spec writes it: groups of digits, with spaces and `|` ignored.
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex: {text}");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

const SERVER: OpenClusterServerCodec = OpenClusterServerCodec {
    max_payload: DEFAULT_MAX_PAYLOAD,
};
const CLIENT: OpenClusterClientCodec = OpenClusterClientCodec {
    max_payload: DEFAULT_MAX_PAYLOAD,
};

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn req(user_id: u32, body: RequestBody) -> Request {
    Request { user_id, body }
}

fn reply(repcmd: u16, user_id: u32, body: ResponseBody) -> Response {
    Response::Reply {
        repcmd,
        user_id,
        body,
    }
}

fn push(user_id: u32, push: Push) -> Response {
    Response::Push { user_id, push }
}

fn encode_request(request: &Request) -> Vec<u8> {
    let mut out = BytesMut::new();
    CLIENT.encode_request(request, &mut out);
    out.to_vec()
}

fn encode_response(response: &Response) -> Vec<u8> {
    let mut out = BytesMut::new();
    SERVER.encode_response(response, &mut out);
    out.to_vec()
}

/// Decodes exactly one whole request that fills `bytes`.
fn decode_request(bytes: &[u8]) -> Request {
    match SERVER.decode_request(bytes) {
        Ok(Decoded::Frame(request, used)) => {
            assert_eq!(used, bytes.len(), "consumed length");
            request
        }
        other => panic!("expected a request frame, got {other:?}"),
    }
}

/// Decodes exactly one whole response that fills `bytes`.
fn decode_response(bytes: &[u8]) -> Response {
    match CLIENT.decode_response(bytes) {
        Ok(Decoded::Frame(response, used)) => {
            assert_eq!(used, bytes.len(), "consumed length");
            response
        }
        other => panic!("expected a response frame, got {other:?}"),
    }
}

/// A request vector: the client encodes it to `wire`, the server decodes `wire` to it.
fn request_vector(request: Request, wire: &str) {
    let wire = hex(wire);
    assert_eq!(encode_request(&request), wire, "encoding of {request:?}");
    assert_eq!(decode_request(&wire), request);
}

/// A response vector: the server encodes it to `wire`, the client decodes `wire` to it.
fn response_vector(response: Response, wire: &str) {
    let wire = hex(wire);
    assert_eq!(encode_response(&response), wire, "encoding of {response:?}");
    assert_eq!(decode_response(&wire), response);
}

fn message(id: u16, repcmd: u16, user_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_message(id, repcmd, user_id, payload, &mut out);
    out.to_vec()
}

const SOMETHING: ItemId = ItemId {
    map: 0,
    key: 0x7e47_596b,
};
const CLIENTNAME: ItemId = ItemId {
    map: 0,
    key: 0x29f6_a27d,
};

// ---------------------------------------------------------------------------------------
// §15.1 FNV-1a-32

#[test]
fn fnv1a32_verified_vectors_and_buckets() {
    let vectors: [(&str, u32, u32); 5] = [
        ("something", 0x7e47_596b, 0xb),
        ("a", 0xe40c_292c, 0xc),
        ("foobar", 0xbf9c_f968, 0x8),
        ("testkey", 0xb105_e50c, 0xc),
        ("clientname", 0x29f6_a27d, 0xd),
    ];
    for (name, hash, bucket_of) in vectors {
        assert_eq!(fnv1a32(name.as_bytes()), hash, "{name}");
        assert_eq!(bucket(hash, DEFAULT_MASK), bucket_of, "{name}");
        // ASCII: the original's signed-char variant agrees.
        assert_eq!(fnv1a32_signed_char(name.as_bytes()), hash, "{name}");
        let item = ItemId::named(None, name.as_bytes());
        assert_eq!(item, ItemId { map: 0, key: hash });
        assert_eq!(item.bucket(DEFAULT_MASK), bucket_of);
    }
    assert_eq!(fnv1a32(b""), 0x811c_9dc5);
}

#[test]
fn fnv1a32_cafe_standard_and_signed_char_quirk() {
    let cafe = hex("63 61 66 c3 a9");
    assert_eq!(cafe, "café".as_bytes());
    assert_eq!(fnv1a32(&cafe), 0xa82b_5049);
    assert_eq!(fnv1a32_signed_char(&cafe), 0x7572_c049);
}

#[test]
fn map_hash_and_engine_key() {
    let item = ItemId::named(Some(b"foobar"), b"something");
    assert_eq!(
        item,
        ItemId {
            map: 0xbf9c_f968,
            key: 0x7e47_596b
        }
    );
    assert_eq!(
        item.engine_key(),
        [0xbf, 0x9c, 0xf9, 0x68, 0x7e, 0x47, 0x59, 0x6b]
    );
    assert_eq!(ItemId::from_engine_key(&item.engine_key()), Some(item));
    assert_eq!(ItemId::from_engine_key(&[0; 7]), None);
    assert_eq!(ItemId::from_engine_key(&[0; 9]), None);
    // The map hash does not affect routing.
    assert_eq!(item.bucket(DEFAULT_MASK), 0xb);
}

// ---------------------------------------------------------------------------------------
// §15.2 session, message by message

#[test]
fn session_1_hello_ack_and_pushes() {
    request_vector(req(1, RequestBody::Hello), "000a 0000 00000001 00000000");
    response_vector(
        reply(cmd::HELLO, 1, ResponseBody::Ack),
        "0001 000a 00000001 00000000",
    );
    response_vector(
        push(0, Push::ServerList { servers: vec![] }),
        "0064 0000 00000000 00000004 | 00000000",
    );
    let mut rows = String::new();
    for bucket in 0..16 {
        rows.push_str(&format!("{bucket:08x} 00000000 "));
    }
    let hashmasks = format!("006e 0000 00000001 00000088 | 0000000f 00000010 {rows}");
    assert!(hashmasks.starts_with(
        "006e 0000 00000001 00000088 | 0000000f 00000010 00000000 00000000 00000001 00000000"
    ));
    assert!(hashmasks.ends_with("0000000f 00000000 "));
    response_vector(push(1, Push::all_buckets(DEFAULT_MASK, 0)), &hashmasks);
    assert_eq!(
        Push::all_buckets(DEFAULT_MASK, 0),
        Push::HashMasks {
            mask: 0x0f,
            rows: (0..16).map(|bucket| MaskRow { bucket, level: 0 }).collect()
        }
    );
}

#[test]
fn session_2_set_int_something() {
    request_vector(
        req(
            2,
            RequestBody::Set {
                item: SOMETHING,
                expires: 0,
                full_wait: false,
                name: b("something"),
                value: Value::Int(45),
            },
        ),
        "07d0 0000 00000002 00000021 | 00000000 7e47596b 00000000 00000000 00000009 \
         736f6d657468696e67 0000002d",
    );
    response_vector(
        reply(cmd::SET_INT, 2, ResponseBody::Ack),
        "0001 07d0 00000002 00000000",
    );
}

#[test]
fn session_3_get_int_data_int() {
    request_vector(
        req(
            3,
            RequestBody::Get {
                item: SOMETHING,
                kind: ValueType::Int,
            },
        ),
        "0834 0000 00000003 00000008 | 00000000 7e47596b",
    );
    response_vector(
        reply(
            cmd::GET_INT,
            3,
            ResponseBody::Data {
                item: SOMETHING,
                value: Value::Int(45),
            },
        ),
        "0839 0834 00000003 0000000c | 00000000 7e47596b 0000002d",
    );
}

#[test]
fn session_4_set_string_clientname() {
    request_vector(
        req(
            4,
            RequestBody::Set {
                item: CLIENTNAME,
                expires: 0,
                full_wait: false,
                name: b("clientname"),
                value: Value::String(b("Bill Grady")),
            },
        ),
        "07e4 0000 00000004 0000002c | 00000000 29f6a27d 00000000 00000000 0000000a \
         636c69656e746e616d65 0000000a 42696c6c204772616479",
    );
    response_vector(
        reply(cmd::SET_STRING, 4, ResponseBody::Ack),
        "0001 07e4 00000004 00000000",
    );
}

#[test]
fn session_5_get_string_data_string() {
    request_vector(
        req(
            5,
            RequestBody::Get {
                item: CLIENTNAME,
                kind: ValueType::String,
            },
        ),
        "0848 0000 00000005 00000008 | 00000000 29f6a27d",
    );
    response_vector(
        reply(
            cmd::GET_STRING,
            5,
            ResponseBody::Data {
                item: CLIENTNAME,
                value: Value::String(b("Bill Grady")),
            },
        ),
        "084d 0848 00000005 00000016 | 00000000 29f6a27d 0000000a 42696c6c204772616479",
    );
}

#[test]
fn session_6_get_int_on_a_string_failinfo_1() {
    request_vector(
        req(
            6,
            RequestBody::Get {
                item: CLIENTNAME,
                kind: ValueType::Int,
            },
        ),
        "0834 0000 00000006 00000008 | 00000000 29f6a27d",
    );
    response_vector(
        reply(
            cmd::GET_INT,
            6,
            ResponseBody::failinfo(failinfo::WRONG_TYPE),
        ),
        "0003 0834 00000006 00000012 | 00000001 0000000a 77726f6e672074797065",
    );
}

#[test]
fn session_7_get_int_missing_fail() {
    request_vector(
        req(
            7,
            RequestBody::Get {
                item: ItemId {
                    map: 0,
                    key: 0xe40c_292c,
                },
                kind: ValueType::Int,
            },
        ),
        "0834 0000 00000007 00000008 | 00000000 e40c292c",
    );
    response_vector(
        reply(cmd::GET_INT, 7, ResponseBody::Fail),
        "0002 0834 00000007 00000000",
    );
}

#[test]
fn session_8_unknown_command() {
    let request = req(8, RequestBody::Unknown { command: 1234 });
    request_vector(request.clone(), "04d2 0000 00000008 00000000");
    let answer = request.error_reply().expect("unknown has an error reply");
    assert_eq!(
        answer,
        reply(1234, 8, ResponseBody::Unknown { command: 1234 })
    );
    response_vector(answer, "0009 04d2 00000008 00000002 | 04d2");
}

#[test]
fn session_9_capabilities_get_type() {
    request_vector(
        req(
            9,
            RequestBody::Capabilities {
                command: cmd::GET_TYPE,
            },
        ),
        "000b 0000 00000009 00000002 | 0898",
    );
    response_vector(
        reply(cmd::CAPABILITIES, 9, ResponseBody::Ack),
        "0001 000b 00000009 00000000",
    );
}

#[test]
fn session_10_loadlevel() {
    request_vector(
        req(10, RequestBody::LoadLevel),
        "00c8 0000 0000000a 00000000",
    );
    response_vector(
        reply(
            cmd::LOAD_LEVEL,
            10,
            ResponseBody::LoadLevels {
                primary: 16,
                backup: 0,
                transferring: false,
            },
        ),
        "00d2 00c8 0000000a 0000000c | 00000010 00000000 00000000",
    );
}

#[test]
fn session_11_get_type() {
    request_vector(
        req(11, RequestBody::GetType { item: SOMETHING }),
        "0898 0000 0000000b 00000008 | 00000000 7e47596b",
    );
    response_vector(
        reply(
            cmd::GET_TYPE,
            11,
            ResponseBody::DataType {
                item: SOMETHING,
                kind: ValueType::Int,
            },
        ),
        "089d 0898 0000000b 0000000c | 00000000 7e47596b 00000001",
    );
}

#[test]
fn session_12_lock() {
    request_vector(
        req(
            12,
            RequestBody::Lock {
                timeout: 30,
                name: b("job"),
            },
        ),
        "03e8 0000 0000000c 0000000b | 0000001e 00000003 6a6f62",
    );
    response_vector(
        reply(cmd::LOCK, 12, ResponseBody::Ack),
        "0001 03e8 0000000c 00000000",
    );
}

#[test]
fn session_13_goodbye() {
    let request = req(13, RequestBody::Goodbye);
    request_vector(request.clone(), "0014 0000 0000000d 00000000");
    assert!(request.closes_connection());
    response_vector(
        request.reply(ResponseBody::Ack),
        "0001 0014 0000000d 00000000",
    );
}

#[test]
fn session_client_acks_of_the_pushes() {
    // §5.1: a client may ack a push with repcmd = push id and the push's user id.
    request_vector(
        Request::ack(cmd::SERVER_LIST, 0),
        "0001 0064 00000000 00000000",
    );
    request_vector(
        Request::ack(cmd::HASH_MASKS, 1),
        "0001 006e 00000001 00000000",
    );
    assert!(Request::ack(cmd::HASH_MASKS, 1).is_reply());
    assert_eq!(Request::ack(cmd::HASH_MASKS, 1).error_reply(), None);
}

// ---------------------------------------------------------------------------------------
// Every other message of §4 (derived)

#[test]
fn header_only_commands() {
    let cases = [
        (RequestBody::ShuttingDown, "000f"),
        (RequestBody::Ping, "001e"),
        (RequestBody::ServerHello, "0032"),
        (RequestBody::ServerList, "0064"),
        (RequestBody::HashMasks, "006e"),
        (RequestBody::HashMask, "0078"),
        (RequestBody::NewServer, "0082"),
    ];
    for (body, id) in cases {
        request_vector(
            req(0x0102_0304, body),
            &format!("{id} 0000 01020304 00000000"),
        );
    }
}

#[test]
fn commands_with_an_unused_payload_discard_it() {
    // §3 exception: 10, 15, 20, 30, 50, 100, 110, 120, 130, 200 accept any payload.
    let cases = [
        (cmd::HELLO, RequestBody::Hello),
        (cmd::SHUTTING_DOWN, RequestBody::ShuttingDown),
        (cmd::GOODBYE, RequestBody::Goodbye),
        (cmd::PING, RequestBody::Ping),
        (cmd::SERVER_HELLO, RequestBody::ServerHello),
        (cmd::SERVER_LIST, RequestBody::ServerList),
        (cmd::HASH_MASKS, RequestBody::HashMasks),
        (cmd::HASH_MASK, RequestBody::HashMask),
        (cmd::NEW_SERVER, RequestBody::NewServer),
        (cmd::LOAD_LEVEL, RequestBody::LoadLevel),
    ];
    for (id, body) in cases {
        for payload in [&b""[..], b"\x01", b"\x00\x00\x00\x05hello\xff\xff"] {
            assert_eq!(
                decode_request(&message(id, 0, 3, payload)),
                req(3, body.clone()),
                "id {id}"
            );
        }
    }
    // A real serverhello with its connect info: acked and ignored.
    assert_eq!(
        decode_request(&hex(
            "0032 0000 00000001 00000013 | 0000000f 3132372e302e302e313a3133363031"
        )),
        req(1, RequestBody::ServerHello)
    );
}

#[test]
fn set_long_and_expiry_and_full_wait() {
    request_vector(
        req(
            0x21,
            RequestBody::Set {
                item: ItemId {
                    map: 0xbf9c_f968,
                    key: 0xb105_e50c,
                },
                expires: 60,
                full_wait: true,
                name: b("testkey"),
                value: Value::Long(-2),
            },
        ),
        "07da 0000 00000021 00000023 | bf9cf968 b105e50c 0000003c 00000001 00000007 \
         746573746b6579 fffffffffffffffe",
    );
    // Any non-zero full wait means "durable".
    let wire =
        hex("07d0 0000 00000001 00000018 | 00000000 00000001 00000000 ffffffff 00000000 00000007");
    assert_eq!(
        decode_request(&wire),
        req(
            1,
            RequestBody::Set {
                item: ItemId { map: 0, key: 1 },
                expires: 0,
                full_wait: true,
                name: Bytes::new(),
                value: Value::Int(7),
            }
        )
    );
    // Largest expires.
    let wire =
        hex("07d0 0000 00000001 00000018 | 00000000 00000001 7fffffff 00000000 00000000 00000007");
    assert!(matches!(
        decode_request(&wire).body,
        RequestBody::Set {
            expires: i32::MAX,
            full_wait: false,
            ..
        }
    ));
}

#[test]
fn set_string_empty_value_and_get_long_and_unlock() {
    request_vector(
        req(
            5,
            RequestBody::Set {
                item: SOMETHING,
                expires: 2,
                full_wait: false,
                name: b("something"),
                value: Value::String(Bytes::new()),
            },
        ),
        "07e4 0000 00000005 00000021 | 00000000 7e47596b 00000002 00000000 00000009 \
         736f6d657468696e67 00000000",
    );
    request_vector(
        req(
            6,
            RequestBody::Get {
                item: SOMETHING,
                kind: ValueType::Long,
            },
        ),
        "083e 0000 00000006 00000008 | 00000000 7e47596b",
    );
    request_vector(
        req(7, RequestBody::Unlock { name: b("job") }),
        "03f2 0000 00000007 00000007 | 00000003 6a6f62",
    );
    request_vector(
        req(
            8,
            RequestBody::Lock {
                timeout: 0,
                name: b("j"),
            },
        ),
        "03e8 0000 00000008 00000009 | 00000000 00000001 6a",
    );
}

#[test]
fn every_reply() {
    response_vector(
        reply(
            cmd::GET_LONG,
            6,
            ResponseBody::Data {
                item: SOMETHING,
                value: Value::Long(0x0102_0304_0506_0708),
            },
        ),
        "0843 083e 00000006 00000010 | 00000000 7e47596b 0102030405060708",
    );
    response_vector(
        reply(
            cmd::GET_STRING,
            6,
            ResponseBody::Data {
                item: SOMETHING,
                value: Value::String(Bytes::new()),
            },
        ),
        "084d 0848 00000006 0000000c | 00000000 7e47596b 00000000",
    );
    response_vector(
        reply(
            cmd::GET_TYPE,
            1,
            ResponseBody::DataType {
                item: CLIENTNAME,
                kind: ValueType::String,
            },
        ),
        "089d 0898 00000001 0000000c | 00000000 29f6a27d 00000003",
    );
    response_vector(
        reply(
            cmd::GET_TYPE,
            1,
            ResponseBody::DataType {
                item: CLIENTNAME,
                kind: ValueType::Long,
            },
        ),
        "089d 0898 00000001 0000000c | 00000000 29f6a27d 00000002",
    );
    response_vector(
        reply(
            cmd::GET_INT,
            2,
            ResponseBody::TryElsewhere {
                addr: b("10.0.0.2:13600"),
            },
        ),
        "0004 0834 00000002 00000012 | 0000000e 31302e302e302e323a3133363030",
    );
    response_vector(
        reply(cmd::CAPABILITIES, 3, ResponseBody::Fail),
        "0002 000b 00000003 00000000",
    );
    response_vector(
        reply(
            cmd::LOAD_LEVEL,
            4,
            ResponseBody::LoadLevels {
                primary: 5,
                backup: 6,
                transferring: true,
            },
        ),
        "00d2 00c8 00000004 0000000c | 00000005 00000006 00000001",
    );
}

#[test]
fn failinfo_codes_and_texts() {
    let cases = [
        (failinfo::WRONG_TYPE, "wrong type"),
        (failinfo::MALFORMED, "malformed payload"),
        (failinfo::TOO_LARGE, "payload too large"),
        (failinfo::INVALID_ARGUMENT, "invalid argument"),
        (failinfo::UNAVAILABLE, "unavailable"),
        (failinfo::LIMIT_EXCEEDED, "limit exceeded"),
    ];
    for (code, text) in cases {
        let body = ResponseBody::failinfo(code);
        assert_eq!(
            body,
            ResponseBody::FailInfo {
                code,
                text: b(text)
            }
        );
        let mut wire = message(rep::FAILINFO, cmd::SET_INT, 9, &[]);
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(&(text.len() as u32).to_be_bytes());
        payload.extend_from_slice(text.as_bytes());
        wire.truncate(8);
        wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        wire.extend_from_slice(&payload);
        let response = reply(cmd::SET_INT, 9, body);
        assert_eq!(encode_response(&response), wire);
        assert_eq!(decode_response(&wire), response);
    }
    response_vector(
        reply(
            cmd::SET_INT,
            1,
            ResponseBody::failinfo(failinfo::UNAVAILABLE),
        ),
        "0003 07d0 00000001 00000013 | 00000005 0000000b 756e617661696c61626c65",
    );
}

#[test]
fn every_push() {
    response_vector(
        push(
            2,
            Push::ServerList {
                servers: vec![b("10.0.0.2:13600"), b("h:1")],
            },
        ),
        "0064 0000 00000002 0000001d | 00000002 0000000e 31302e302e302e323a3133363030 \
         00000003 683a31",
    );
    response_vector(
        push(
            3,
            Push::HashMask {
                mask: 0x0f,
                bucket: 3,
                level: -1,
            },
        ),
        "0078 0000 00000003 0000000c | 0000000f 00000003 ffffffff",
    );
    response_vector(
        push(
            4,
            Push::HashMask {
                mask: 0x0f,
                bucket: 15,
                level: 0,
            },
        ),
        "0078 0000 00000004 0000000c | 0000000f 0000000f 00000000",
    );
    response_vector(
        push(
            5,
            Push::HashMasks {
                mask: 0xff,
                rows: vec![
                    MaskRow {
                        bucket: 1,
                        level: 1,
                    },
                    MaskRow {
                        bucket: 200,
                        level: 0,
                    },
                ],
            },
        ),
        "006e 0000 00000005 00000018 | 000000ff 00000002 00000001 00000001 000000c8 00000000",
    );
    response_vector(
        push(
            0,
            Push::HashMasks {
                mask: 0,
                rows: vec![],
            },
        ),
        "006e 0000 00000000 00000008 | 00000000 00000000",
    );
    response_vector(push(6, Push::Goodbye), "0014 0000 00000006 00000000");
    response_vector(
        push(7, Push::Other { command: 30 }),
        "001e 0000 00000007 00000000",
    );
}

#[test]
fn client_decodes_pushes_leniently_where_harmless() {
    // goodbye and unrecognised commands: payload discarded.
    assert_eq!(
        decode_response(&message(cmd::GOODBYE, 0, 1, b"xyz")),
        push(1, Push::Goodbye)
    );
    assert_eq!(
        decode_response(&message(cmd::CAPABILITIES, 0, 1, &[0, 10])),
        push(1, Push::Other { command: 11 })
    );
    // The original's unknown (9) with no payload: the id is the repcmd.
    assert_eq!(
        decode_response(&hex("0009 04d2 00000008 00000000")),
        reply(1234, 8, ResponseBody::Unknown { command: 1234 })
    );
}

#[test]
fn capabilities_table() {
    for id in [
        10, 11, 15, 20, 30, 50, 100, 110, 120, 130, 200, 1000, 1010, 2000, 2010, 2020, 2100, 2110,
        2120, 2200,
    ] {
        assert!(cmd::is_accepted(id), "{id}");
    }
    for id in [
        0, 1, 2, 3, 4, 9, 210, 2105, 2115, 2125, 2205, 12, 1234, 65535,
    ] {
        assert!(!cmd::is_accepted(id), "{id}");
    }
}

#[test]
fn reply_helpers_echo_command_and_user_id() {
    let request = req(
        77,
        RequestBody::Set {
            item: SOMETHING,
            expires: 0,
            full_wait: false,
            name: b("x"),
            value: Value::Long(1),
        },
    );
    assert_eq!(
        request.reply(ResponseBody::Ack),
        reply(cmd::SET_LONG, 77, ResponseBody::Ack)
    );
    assert_eq!(request.error_reply(), None);
    assert!(!request.closes_connection());
    assert!(!request.is_reply());
}

// ---------------------------------------------------------------------------------------
// §11 malformed input

#[test]
fn o1_payload_over_the_limit_is_decided_from_the_header() {
    // Only the header is present: the payload is never awaited.
    let header = hex("07d0 0000 00000005 00100001");
    assert_eq!(
        SERVER.decode_request(&header),
        Ok(Decoded::Frame(
            req(
                5,
                RequestBody::TooLarge {
                    command: cmd::SET_INT
                }
            ),
            12
        ))
    );
    let request = req(
        5,
        RequestBody::TooLarge {
            command: cmd::SET_INT,
        },
    );
    assert!(request.closes_connection());
    let answer = request.error_reply().unwrap();
    response_vector(
        answer,
        "0003 07d0 00000005 00000019 | 00000003 00000011 7061796c6f616420746f6f206c61726765",
    );
    // Exactly the limit is fine (incomplete until the payload arrives).
    assert_eq!(
        SERVER.decode_request(&hex("07d0 0000 00000005 00100000")),
        Ok(Decoded::Incomplete)
    );
    // An unknown id over the limit is also O1; the header is all that is consumed.
    let mut wire = hex("04d2 0000 00000006 ffffffff");
    wire.extend_from_slice(b"more");
    assert_eq!(
        SERVER.decode_request(&wire),
        Ok(Decoded::Frame(
            req(6, RequestBody::TooLarge { command: 1234 }),
            12
        ))
    );
    // A configured smaller limit.
    let small = OpenClusterServerCodec { max_payload: 8 };
    assert_eq!(
        small.decode_request(&hex("0834 0000 00000001 00000009")),
        Ok(Decoded::Frame(
            req(
                1,
                RequestBody::TooLarge {
                    command: cmd::GET_INT
                }
            ),
            12
        ))
    );
    assert_eq!(
        small.decode_request(&hex("0834 0000 00000001 00000008 | 00000000 7e47596b")),
        Ok(Decoded::Frame(
            req(
                1,
                RequestBody::Get {
                    item: SOMETHING,
                    kind: ValueType::Int
                }
            ),
            20
        ))
    );
    // A *reply* over the limit cannot be answered (O3) nor read (R2): close.
    assert!(SERVER
        .decode_request(&hex("0001 0064 00000000 00100001"))
        .is_err());
    assert_eq!(
        OpenClusterServerCodec::default(),
        OpenClusterServerCodec {
            max_payload: 1_048_576
        }
    );
}

#[test]
fn o2_unknown_ids_discard_their_payload() {
    for id in [
        0u16, 1, 2, 3, 4, 9, 12, 210, 2105, 2115, 2125, 2205, 1234, 65535,
    ] {
        let wire = message(id, 0, 42, b"\x00\x01\x02");
        let request = decode_request(&wire);
        assert_eq!(request, req(42, RequestBody::Unknown { command: id }));
        assert_eq!(
            request.error_reply(),
            Some(reply(id, 42, ResponseBody::Unknown { command: id }))
        );
    }
    // The payload must arrive before the frame is complete.
    assert_eq!(
        SERVER.decode_request(&hex("04d2 0000 00000001 00000003 | 0001")),
        Ok(Decoded::Incomplete)
    );
}

#[test]
fn o3_replies_are_discarded_whatever_their_id() {
    for (id, repcmd) in [
        (1u16, 100u16),
        (2, 110),
        (9, 20),
        (2105, 2100),
        (10, 1),
        (0, 7),
    ] {
        let request = decode_request(&message(id, repcmd, 3, b"payload"));
        assert_eq!(request, req(3, RequestBody::Reply { id, repcmd }));
        assert!(request.is_reply());
        assert_eq!(request.error_reply(), None);
    }
}

fn assert_malformed(id: u16, payload: &[u8]) {
    let request = decode_request(&message(id, 0, 11, payload));
    assert_eq!(
        request,
        req(11, RequestBody::Malformed { command: id }),
        "id {id} payload {payload:02x?}"
    );
    assert_eq!(
        request.error_reply(),
        Some(reply(id, 11, ResponseBody::failinfo(failinfo::MALFORMED)))
    );
    assert!(!request.closes_connection());
}

#[test]
fn o4_malformed_payloads_get_failinfo_2() {
    // capabilities: exactly a u16.
    assert_malformed(cmd::CAPABILITIES, b"");
    assert_malformed(cmd::CAPABILITIES, b"\x00");
    assert_malformed(cmd::CAPABILITIES, b"\x00\x0a\x00");
    // get_*: exactly 8 bytes.
    for id in [cmd::GET_INT, cmd::GET_LONG, cmd::GET_STRING, cmd::GET_TYPE] {
        assert_malformed(id, b"");
        assert_malformed(id, &[0; 7]);
        assert_malformed(id, &[0; 9]);
    }
    // set_*: map, key, expires, full wait, str name, value.
    let prefix = "00000000 7e47596b 00000000 00000000";
    for (id, payload) in [
        // lock: int, str.
        (cmd::LOCK, "0000001e".to_string()),
        (cmd::LOCK, "0000001e 00000004 6a6f62".into()),
        (cmd::LOCK, "0000001e 00000003 6a6f62 00".into()),
        (cmd::LOCK, "0000001e ffffffff 6a6f62".into()),
        // unlock: str.
        (cmd::UNLOCK, "".into()),
        (cmd::UNLOCK, "000000".into()),
        (cmd::UNLOCK, "00000002 6a".into()),
        (cmd::UNLOCK, "00000001 6a 6f".into()),
        (cmd::SET_INT, prefix.into()),
        (cmd::SET_INT, format!("{prefix} 00000001 61")),
        (cmd::SET_INT, format!("{prefix} 00000001 61 000000")),
        (cmd::SET_INT, format!("{prefix} 00000001 61 00000001 00")),
        (cmd::SET_INT, format!("{prefix} 00000009 61 00000001")),
        (cmd::SET_LONG, format!("{prefix} 00000001 61 00000001")),
        (
            cmd::SET_LONG,
            format!("{prefix} 00000001 61 0000000000000001 00"),
        ),
        (cmd::SET_STRING, format!("{prefix} 00000001 61")),
        (cmd::SET_STRING, format!("{prefix} 00000001 61 00000002 78")),
        (
            cmd::SET_STRING,
            format!("{prefix} 00000001 61 00000001 78 79"),
        ),
        (cmd::SET_STRING, format!("{prefix} 00000001 61 ffffffff")),
    ] {
        assert_malformed(id, &hex(&payload));
    }
    // A short payload that also has a negative expires is malformed first.
    assert_malformed(cmd::SET_INT, &hex("00000000 7e47596b ffffffff 00000000"));
}

fn assert_invalid(id: u16, payload: &[u8]) {
    let request = decode_request(&message(id, 0, 12, payload));
    assert_eq!(
        request,
        req(12, RequestBody::InvalidArgument { command: id }),
        "id {id} payload {payload:02x?}"
    );
    assert_eq!(
        request.error_reply(),
        Some(reply(
            id,
            12,
            ResponseBody::failinfo(failinfo::INVALID_ARGUMENT)
        ))
    );
}

#[test]
fn o5_invalid_arguments_get_failinfo_4() {
    let item = "00000000 7e47596b";
    assert_invalid(
        cmd::SET_INT,
        &hex(&format!("{item} ffffffff 00000000 00000001 61 00000001")),
    );
    assert_invalid(
        cmd::SET_LONG,
        &hex(&format!(
            "{item} 80000000 00000001 00000001 61 0000000000000001"
        )),
    );
    assert_invalid(
        cmd::SET_STRING,
        &hex(&format!("{item} fffffffe 00000000 00000001 61 00000001 78")),
    );
    assert_invalid(cmd::LOCK, &hex("ffffffff 00000003 6a6f62"));
    assert_invalid(cmd::LOCK, &hex("0000001e 00000000"));
    assert_invalid(cmd::UNLOCK, &hex("00000000"));
}

#[test]
fn o6_partial_messages_are_incomplete() {
    let wire = hex("07d0 0000 00000002 00000021 | 00000000 7e47596b 00000000 00000000 00000009 736f6d657468696e67 0000002d");
    for cut in 0..wire.len() {
        assert_eq!(
            SERVER.decode_request(&wire[..cut]),
            Ok(Decoded::Incomplete),
            "cut {cut}"
        );
    }
}

#[test]
fn client_rejects_malformed_server_messages() {
    let bad = [
        // Payload over the client's limit, decided from the header.
        "0839 0834 00000003 00100001",
        // Unknown reply id.
        "0007 0834 00000003 00000000",
        "0834 0001 00000003 00000000",
        // Replies with wrong payloads.
        "0001 000a 00000001 00000001 | 00",
        "0002 000a 00000001 00000001 | 00",
        "0839 0834 00000003 00000008 | 00000000 7e47596b",
        "0839 0834 00000003 0000000d | 00000000 7e47596b 0000002d 00",
        "0843 083e 00000003 0000000c | 00000000 7e47596b 0000002d",
        "084d 0848 00000003 0000000c | 00000000 7e47596b 00000001",
        "089d 0898 00000003 0000000c | 00000000 7e47596b 00000004",
        "089d 0898 00000003 0000000c | 00000000 7e47596b 00000000",
        "0003 0834 00000003 00000004 | 00000001",
        "0003 0834 00000003 00000009 | 00000001 00000002 61",
        "0004 0834 00000003 00000005 | 00000002 61",
        "0009 04d2 00000003 00000001 | 04",
        "0009 04d2 00000003 00000003 | 04d2 00",
        "00d2 00c8 00000003 00000008 | 00000010 00000000",
        // Pushes with wrong payloads.
        "0064 0000 00000000 00000000",
        "0064 0000 00000000 00000004 | ffffffff",
        "0064 0000 00000000 00000004 | 00000001",
        "0064 0000 00000000 0000000a | 00000001 00000001 61 00",
        "0064 0000 00000000 00000008 | 7fffffff 00000000",
        "006e 0000 00000000 00000004 | 0000000f",
        "006e 0000 00000000 00000008 | 0000000f 00000001",
        "006e 0000 00000000 00000008 | 0000000f ffffffff",
        "006e 0000 00000000 00000010 | 0000000f 7fffffff 00000000 00000000",
        "0078 0000 00000000 00000008 | 0000000f 00000003",
        "0078 0000 00000000 0000000d | 0000000f 00000003 00000000 00",
    ];
    for wire in bad {
        assert!(
            CLIENT.decode_response(&hex(wire)).is_err(),
            "accepted {wire}"
        );
    }
    assert_eq!(
        OpenClusterClientCodec::default(),
        OpenClusterClientCodec {
            max_payload: 1_048_576
        }
    );
}

// ---------------------------------------------------------------------------------------
// Framing

fn sample_requests() -> Vec<Request> {
    vec![
        req(1, RequestBody::Hello),
        Request::ack(cmd::SERVER_LIST, 0),
        req(
            2,
            RequestBody::Set {
                item: SOMETHING,
                expires: 5,
                full_wait: true,
                name: b("something"),
                value: Value::String(b("value")),
            },
        ),
        req(
            3,
            RequestBody::Get {
                item: SOMETHING,
                kind: ValueType::String,
            },
        ),
        req(
            4,
            RequestBody::Lock {
                timeout: 1,
                name: b("job"),
            },
        ),
        req(5, RequestBody::Unknown { command: 777 }),
        req(
            6,
            RequestBody::Malformed {
                command: cmd::GET_TYPE,
            },
        ),
        req(
            7,
            RequestBody::InvalidArgument {
                command: cmd::SET_LONG,
            },
        ),
        req(8, RequestBody::Capabilities { command: 2 }),
        req(9, RequestBody::Goodbye),
    ]
}

fn sample_responses() -> Vec<Response> {
    vec![
        reply(cmd::HELLO, 1, ResponseBody::Ack),
        push(
            0,
            Push::ServerList {
                servers: vec![b("a:1")],
            },
        ),
        push(1, Push::all_buckets(3, 1)),
        reply(cmd::SET_STRING, 2, ResponseBody::Ack),
        push(
            2,
            Push::HashMask {
                mask: 3,
                bucket: 1,
                level: -1,
            },
        ),
        reply(
            cmd::GET_STRING,
            3,
            ResponseBody::Data {
                item: SOMETHING,
                value: Value::String(b("value")),
            },
        ),
        reply(
            cmd::LOCK,
            4,
            ResponseBody::failinfo(failinfo::LIMIT_EXCEEDED),
        ),
        reply(777, 5, ResponseBody::Unknown { command: 777 }),
        reply(
            cmd::GET_INT,
            6,
            ResponseBody::TryElsewhere { addr: b("b:2") },
        ),
        push(3, Push::Goodbye),
    ]
}

#[test]
fn requests_split_at_every_byte_boundary() {
    for request in sample_requests() {
        let wire = encode_request(&request);
        for cut in 0..wire.len() {
            assert_eq!(SERVER.decode_request(&wire[..cut]), Ok(Decoded::Incomplete));
        }
        assert_eq!(
            SERVER.decode_request(&wire),
            Ok(Decoded::Frame(request, wire.len()))
        );
    }
}

#[test]
fn responses_split_at_every_byte_boundary() {
    for response in sample_responses() {
        let wire = encode_response(&response);
        for cut in 0..wire.len() {
            assert_eq!(
                CLIENT.decode_response(&wire[..cut]),
                Ok(Decoded::Incomplete)
            );
        }
        assert_eq!(
            CLIENT.decode_response(&wire),
            Ok(Decoded::Frame(response, wire.len()))
        );
    }
}

#[test]
fn many_frames_in_one_buffer() {
    let requests = sample_requests();
    let mut wire = Vec::new();
    for request in &requests {
        wire.extend(encode_request(request));
    }
    let mut rest = &wire[..];
    let mut decoded = Vec::new();
    while let Ok(Decoded::Frame(request, used)) = SERVER.decode_request(rest) {
        decoded.push(request);
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!(decoded, requests);

    let responses = sample_responses();
    let mut wire = Vec::new();
    for response in &responses {
        wire.extend(encode_response(response));
    }
    let mut rest = &wire[..];
    let mut decoded = Vec::new();
    while let Ok(Decoded::Frame(response, used)) = CLIENT.decode_response(rest) {
        decoded.push(response);
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!(decoded, responses);
}

#[test]
fn too_large_then_more_bytes_consumes_only_the_header() {
    let mut wire = hex("0834 0000 00000001 7fffffff");
    wire.extend(encode_request(&req(2, RequestBody::Ping)));
    assert_eq!(
        SERVER.decode_request(&wire),
        Ok(Decoded::Frame(
            req(
                1,
                RequestBody::TooLarge {
                    command: cmd::GET_INT
                }
            ),
            12
        ))
    );
}

#[test]
fn malformed_variants_encode_to_wire_forms_that_decode_back() {
    for command in [
        cmd::CAPABILITIES,
        cmd::LOCK,
        cmd::UNLOCK,
        cmd::SET_INT,
        cmd::SET_LONG,
        cmd::SET_STRING,
        cmd::GET_INT,
        cmd::GET_LONG,
        cmd::GET_STRING,
        cmd::GET_TYPE,
    ] {
        let request = req(1, RequestBody::Malformed { command });
        assert_eq!(decode_request(&encode_request(&request)), request);
    }
    for command in [
        cmd::LOCK,
        cmd::UNLOCK,
        cmd::SET_INT,
        cmd::SET_LONG,
        cmd::SET_STRING,
    ] {
        let request = req(1, RequestBody::InvalidArgument { command });
        assert_eq!(decode_request(&encode_request(&request)), request);
    }
    let request = req(1, RequestBody::TooLarge { command: 5 });
    assert_eq!(encode_request(&request), hex("0005 0000 00000001 ffffffff"));
}

#[test]
fn fuzz_bodies_accept_the_session_transcript() {
    let mut requests = Vec::new();
    for request in sample_requests() {
        requests.extend(encode_request(&request));
    }
    requests.extend(hex("0834 0000 00000001 7fffffff"));
    fuzz_server(&requests);
    let mut responses = Vec::new();
    for response in sample_responses() {
        responses.extend(encode_response(&response));
    }
    fuzz_client(&responses);
}

// ---------------------------------------------------------------------------------------
// Property tests

fn item_strategy() -> impl Strategy<Value = ItemId> {
    (any::<u32>(), any::<u32>()).prop_map(|(map, key)| ItemId { map, key })
}

fn bytes_strategy() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn value_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(Value::Int),
        any::<i64>().prop_map(Value::Long),
        bytes_strategy().prop_map(Value::String),
    ]
}

fn kind_strategy() -> impl Strategy<Value = ValueType> {
    prop_oneof![
        Just(ValueType::Int),
        Just(ValueType::Long),
        Just(ValueType::String)
    ]
}

fn request_body_strategy() -> impl Strategy<Value = RequestBody> {
    let non_empty = proptest::collection::vec(any::<u8>(), 1..40).prop_map(Bytes::from);
    let unknown = any::<u16>()
        .prop_filter("not a command", |id| !cmd::is_accepted(*id))
        .prop_map(|command| RequestBody::Unknown { command });
    prop_oneof![
        Just(RequestBody::Hello),
        any::<u16>().prop_map(|command| RequestBody::Capabilities { command }),
        Just(RequestBody::ShuttingDown),
        Just(RequestBody::Goodbye),
        Just(RequestBody::Ping),
        Just(RequestBody::ServerHello),
        Just(RequestBody::ServerList),
        Just(RequestBody::HashMasks),
        Just(RequestBody::HashMask),
        Just(RequestBody::NewServer),
        Just(RequestBody::LoadLevel),
        (0..=i32::MAX, non_empty.clone())
            .prop_map(|(timeout, name)| RequestBody::Lock { timeout, name }),
        non_empty.prop_map(|name| RequestBody::Unlock { name }),
        (
            item_strategy(),
            0..=i32::MAX,
            any::<bool>(),
            bytes_strategy(),
            value_strategy()
        )
            .prop_map(|(item, expires, full_wait, name, value)| RequestBody::Set {
                item,
                expires,
                full_wait,
                name,
                value
            }),
        (item_strategy(), kind_strategy()).prop_map(|(item, kind)| RequestBody::Get { item, kind }),
        item_strategy().prop_map(|item| RequestBody::GetType { item }),
        unknown,
        prop::sample::select(vec![
            cmd::CAPABILITIES,
            cmd::LOCK,
            cmd::UNLOCK,
            cmd::SET_INT,
            cmd::SET_LONG,
            cmd::SET_STRING,
            cmd::GET_INT,
            cmd::GET_LONG,
            cmd::GET_STRING,
            cmd::GET_TYPE,
        ])
        .prop_map(|command| RequestBody::Malformed { command }),
        prop::sample::select(vec![
            cmd::LOCK,
            cmd::UNLOCK,
            cmd::SET_INT,
            cmd::SET_LONG,
            cmd::SET_STRING
        ])
        .prop_map(|command| RequestBody::InvalidArgument { command }),
        any::<u16>().prop_map(|command| RequestBody::TooLarge { command }),
        (any::<u16>(), 1..=u16::MAX).prop_map(|(id, repcmd)| RequestBody::Reply { id, repcmd }),
    ]
}

fn reply_body_strategy() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        Just(ResponseBody::Ack),
        Just(ResponseBody::Fail),
        (any::<i32>(), bytes_strategy())
            .prop_map(|(code, text)| ResponseBody::FailInfo { code, text }),
        bytes_strategy().prop_map(|addr| ResponseBody::TryElsewhere { addr }),
        any::<u16>().prop_map(|command| ResponseBody::Unknown { command }),
        (any::<i32>(), any::<i32>(), any::<bool>()).prop_map(|(primary, backup, transferring)| {
            ResponseBody::LoadLevels {
                primary,
                backup,
                transferring,
            }
        }),
        (item_strategy(), value_strategy())
            .prop_map(|(item, value)| ResponseBody::Data { item, value }),
        (item_strategy(), kind_strategy())
            .prop_map(|(item, kind)| ResponseBody::DataType { item, kind }),
    ]
}

fn push_strategy() -> impl Strategy<Value = Push> {
    prop_oneof![
        proptest::collection::vec(bytes_strategy(), 0..5)
            .prop_map(|servers| Push::ServerList { servers }),
        (
            any::<u32>(),
            proptest::collection::vec((any::<u32>(), any::<i32>()), 0..20)
        )
            .prop_map(|(mask, rows)| Push::HashMasks {
                mask,
                rows: rows
                    .into_iter()
                    .map(|(bucket, level)| MaskRow { bucket, level })
                    .collect()
            }),
        (any::<u32>(), any::<u32>(), any::<i32>()).prop_map(|(mask, bucket, level)| {
            Push::HashMask {
                mask,
                bucket,
                level,
            }
        }),
        Just(Push::Goodbye),
        any::<u16>()
            .prop_filter("not a modelled push", |id| ![
                cmd::SERVER_LIST,
                cmd::HASH_MASKS,
                cmd::HASH_MASK,
                cmd::GOODBYE
            ]
            .contains(id))
            .prop_map(|command| Push::Other { command }),
    ]
}

fn response_strategy() -> impl Strategy<Value = Response> {
    prop_oneof![
        (1..=u16::MAX, any::<u32>(), reply_body_strategy()).prop_map(|(repcmd, user_id, body)| {
            Response::Reply {
                repcmd,
                user_id,
                body,
            }
        }),
        (any::<u32>(), push_strategy())
            .prop_map(|(user_id, push)| Response::Push { user_id, push }),
    ]
}

proptest! {
    #[test]
    fn request_round_trip(user_id in any::<u32>(), body in request_body_strategy()) {
        let request = Request { user_id, body };
        let wire = encode_request(&request);
        let used = if matches!(request.body, RequestBody::TooLarge { .. }) { 12 } else { wire.len() };
        prop_assert_eq!(SERVER.decode_request(&wire), Ok(Decoded::Frame(request, used)));
    }

    #[test]
    fn response_round_trip(response in response_strategy()) {
        let wire = encode_response(&response);
        prop_assert_eq!(CLIENT.decode_response(&wire), Ok(Decoded::Frame(response, wire.len())));
    }

    #[test]
    fn fuzz_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz_server(&data);
        fuzz_client(&data);
    }

    #[test]
    fn fuzz_bodies_never_panic_on_plausible_headers(
        id in prop::sample::select(vec![0u16, 1, 2, 3, 4, 9, 10, 11, 20, 100, 110, 120, 210,
            1000, 1010, 2000, 2010, 2020, 2100, 2105, 2110, 2115, 2120, 2125, 2200, 2205]),
        repcmd in prop::sample::select(vec![0u16, 10, 2100]),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let wire = message(id, repcmd, 1, &payload);
        fuzz_server(&wire);
        fuzz_client(&wire);
    }
}
