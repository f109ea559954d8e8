//! Golden vectors of jsonkv.md §11, framing (§2), every reply shape, validation order (§3.4),
//! JSON-RPC (§6), jsonagent (§7), malformed input (§5) and round trips.

use super::*;
use proptest::prelude::*;

const SERVER: JsonkvServerCodec = JsonkvServerCodec {
    limits: Limits {
        max_frame: DEFAULT_MAX_FRAME,
        max_key: DEFAULT_MAX_KEY,
        max_value: DEFAULT_MAX_VALUE,
        max_depth: DEFAULT_MAX_DEPTH,
    },
};

fn limits() -> Limits {
    Limits::default()
}

/// A frame as the spec shows it: version, type and reserve 0, then the JSON.
fn frame(json: &str) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    out[8..12].copy_from_slice(&(16 + json.len() as u32).to_be_bytes());
    out.extend_from_slice(json.as_bytes());
    out
}

fn decode(bytes: &[u8]) -> RequestPayload {
    match SERVER.decode_request(bytes) {
        Ok(Decoded::Frame(request, used)) => {
            assert_eq!(used, bytes.len());
            request.into_payload()
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn payload(json: &str) -> RequestPayload {
    decode_request_payload(json.as_bytes(), &limits())
}

fn encode_response(response: &ResponsePayload) -> Vec<u8> {
    let mut out = BytesMut::new();
    SERVER.encode_response(&response.clone().into(), &mut out);
    out.to_vec()
}

fn id(json: &str) -> Id {
    Id::from_json(json).unwrap()
}

fn cmd(command: Command, id_json: &str) -> Item {
    Item::Command {
        command,
        id: id(id_json),
    }
}

fn invalid(code: Code, id_json: &str) -> Item {
    Item::Invalid {
        code,
        id: id(id_json),
    }
}

fn single_code(json: &str) -> Code {
    match payload(json) {
        RequestPayload::Single(Item::Invalid { code, .. }) => code,
        other => panic!("{json}: expected an invalid item, got {other:?}"),
    }
}

// --- §11 vectors 1–8 ---------------------------------------------------------------------------

const V1_REQ: &str = r#"{"jsonkv":"1.0","operate":"put","key":"1","value":"999","id":"1"}"#;
const V1_RESP: &str = r#"{"jsonkv":"1.0","result":{"value":"","code":"0","message":"put operation success"},"id":"1"}"#;

#[test]
fn vector_1_seed_put_frame_verified() {
    let bytes = frame(V1_REQ);
    assert_eq!(bytes.len(), 81);
    assert_eq!(
        bytes[..16],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x51, 0, 0, 0, 0]
    );
    let request = decode(&bytes);
    assert_eq!(
        request,
        RequestPayload::Single(cmd(Command::put("1", "999"), r#""1""#))
    );
    // A conforming client sends exactly the seed's bytes.
    let mut out = BytesMut::new();
    JsonkvClientCodec::default().encode_request(&request, &mut out);
    assert_eq!(out.to_vec(), bytes);

    let reply = encode_response(&ResponsePayload::Single(Response::success(
        Operate::Put,
        String::new(),
        id(r#""1""#),
    )));
    assert_eq!(reply, frame(V1_RESP));
    assert_eq!(reply.len(), 108);
    assert_eq!(reply[11], 0x6c);
}

#[test]
fn vector_2_get_with_empty_value_member() {
    let json = r#"{"jsonkv":"1.0","operate":"get","key":"1","value":"","id":"2"}"#;
    assert_eq!(frame(json).len(), 78);
    assert_eq!(
        decode(&frame(json)),
        RequestPayload::Single(cmd(Command::get("1"), r#""2""#))
    );
    let reply = encode_response(&ResponsePayload::Single(Response::success(
        Operate::Get,
        "999".into(),
        id(r#""2""#),
    )));
    assert_eq!(
        reply,
        frame(
            r#"{"jsonkv":"1.0","result":{"value":"999","code":"0","message":"get operation success"},"id":"2"}"#
        )
    );
    assert_eq!(reply[11], 0x6f);
}

#[test]
fn vector_3_upper_case_operate_numeric_id_not_found() {
    let json = r#"{"jsonkv":"1.0","operate":"GET","key":"2","id":3}"#;
    assert_eq!(frame(json).len(), 65);
    assert_eq!(
        decode(&frame(json)),
        RequestPayload::Single(cmd(Command::get("2"), "3"))
    );
    let reply = encode_response(&ResponsePayload::Single(Response::error(
        Code::KeyNotFound,
        id("3"),
    )));
    assert_eq!(
        reply,
        frame(
            r#"{"jsonkv":"1.0","result":{"value":"","code":"1000","message":"key does not exist."},"id":3}"#
        )
    );
    assert_eq!(reply[11], 0x6b);
}

#[test]
fn vector_4_batch_with_a_wrong_version_element() {
    let json = r#"[{"jsonkv":"1.0","operate":"delete","key":"1","id":"4"},{"jsonkv":"2.0","operate":"get","key":"1","id":"5"}]"#;
    assert_eq!(frame(json).len(), 124);
    assert_eq!(
        decode(&frame(json)),
        RequestPayload::Batch(vec![
            cmd(Command::delete("1"), r#""4""#),
            invalid(Code::UnsupportedVersion, r#""5""#)
        ])
    );
    let reply = encode_response(&ResponsePayload::Batch(vec![
        Response::success(Operate::Delete, String::new(), id(r#""4""#)),
        Response::error(Code::UnsupportedVersion, id(r#""5""#)),
    ]));
    assert_eq!(
        reply,
        frame(
            r#"[{"jsonkv":"1.0","result":{"value":"","code":"0","message":"delete operation success"},"id":"4"},{"jsonkv":"1.0","result":{"value":"","code":"800","message":"unsupported protocol version"},"id":"5"}]"#
        )
    );
    assert_eq!(reply[11], 0xd7);
}

#[test]
fn vector_5_invalid_operate_without_id() {
    let json = r#"{"jsonkv":"1.0","operate":"fetch","key":"1"}"#;
    assert_eq!(frame(json).len(), 60);
    assert_eq!(
        decode(&frame(json)),
        RequestPayload::Single(invalid(Code::InvalidOperate, "null"))
    );
    let reply = encode_response(&ResponsePayload::Single(Response::error(
        Code::InvalidOperate,
        Id::null(),
    )));
    assert_eq!(
        reply,
        frame(
            r#"{"jsonkv":"1.0","result":{"value":"","code":"900","message":"invalid operate"},"id":null}"#
        )
    );
    assert_eq!(reply.len(), 105);
}

#[test]
fn vector_6_payload_not_json() {
    assert_eq!(frame("hello").len(), 21);
    assert_eq!(decode(&frame("hello")), RequestPayload::Malformed);
    let reply = encode_response(&ResponsePayload::Single(Response::malformed()));
    assert_eq!(
        reply,
        frame(
            r#"{"jsonkv":"1.0","result":{"value":"","code":"1025","message":"malformed request"},"id":null}"#
        )
    );
    assert_eq!(reply.len(), 108);
}

#[test]
fn vector_7_tcp_length_15_closes() {
    let mut bytes = frame("");
    bytes[11] = 15;
    assert!(SERVER.decode_request(&bytes).is_err());
    // Decided from the first 12 bytes, before anything else arrives.
    assert!(SERVER.decode_request(&bytes[..12]).is_err());
    assert!(AgentServerCodec::default().decode_request(&bytes).is_err());
}

#[test]
fn vector_8_udp_length_disagrees_drops() {
    let mut datagram = frame(V1_REQ);
    assert_eq!(datagram.len(), 81);
    datagram[11] = 80;
    assert_eq!(SERVER.decode_datagram(&datagram), None);
    datagram[11] = 82;
    assert_eq!(SERVER.decode_datagram(&datagram), None);
    datagram[11] = 81;
    assert_eq!(
        SERVER.decode_datagram(&datagram),
        Some(RequestPayload::Single(cmd(
            Command::put("1", "999"),
            r#""1""#
        )))
    );
    // Shorter than a header, or exactly a header: a 16-byte datagram is a valid empty frame.
    assert_eq!(SERVER.decode_datagram(&datagram[..15]), None);
    assert_eq!(SERVER.decode_datagram(&[]), None);
    assert_eq!(
        SERVER.decode_datagram(&frame("")),
        Some(RequestPayload::Malformed)
    );
    // Trailing bytes after the announced length are a mismatch too.
    let mut longer = frame(V1_REQ);
    longer.push(b' ');
    assert_eq!(SERVER.decode_datagram(&longer), None);
}

// --- Framing ------------------------------------------------------------------------------------

#[test]
fn header_fields_other_than_length_are_ignored() {
    let mut bytes = frame(V1_REQ);
    bytes[..8].copy_from_slice(&[0, 0, 0, 100, 0xff, 0xff, 0xff, 0xff]);
    bytes[12..16].copy_from_slice(&[1, 2, 3, 4]);
    assert_eq!(
        decode(&bytes),
        RequestPayload::Single(cmd(Command::put("1", "999"), r#""1""#))
    );
}

#[test]
fn split_at_every_byte_is_incomplete_until_whole() {
    for json in [
        V1_REQ,
        "hello",
        r#"[{"jsonkv":"1.0","operate":"get","key":"é"}]"#,
    ] {
        let bytes = frame(json);
        for cut in 0..bytes.len() {
            assert_eq!(
                SERVER.decode_request(&bytes[..cut]),
                Ok(Decoded::Incomplete),
                "cut {cut}"
            );
        }
    }
    let reply = encode_response(&ResponsePayload::Single(Response::malformed()));
    let client = JsonkvClientCodec::default();
    for cut in 0..reply.len() {
        assert_eq!(
            client.decode_response(&reply[..cut]),
            Ok(Decoded::Incomplete)
        );
    }
}

#[test]
fn pipelined_frames_in_one_buffer() {
    let mut buf = frame(V1_REQ);
    buf.extend(frame("hello"));
    buf.extend(frame(
        r#"{"jsonkv":"1.0","operate":"delete","key":"x","id":[1, 2]}"#,
    ));
    buf.extend(&frame(V1_REQ)[..20]);
    let mut rest = &buf[..];
    let mut seen = Vec::new();
    while let Ok(Decoded::Frame(request, used)) = SERVER.decode_request(rest) {
        seen.push(request.into_payload());
        rest = &rest[used..];
    }
    assert_eq!(
        seen,
        vec![
            RequestPayload::Single(cmd(Command::put("1", "999"), r#""1""#)),
            RequestPayload::Malformed,
            RequestPayload::Single(cmd(Command::delete("x"), "[1,2]")),
        ]
    );
    assert_eq!(rest.len(), 20);
}

#[test]
fn frame_limits_decided_from_the_header() {
    let small = JsonkvServerCodec {
        limits: Limits {
            max_frame: 100,
            ..Limits::default()
        },
    };
    let mut header = frame("");
    header[8..12].copy_from_slice(&100u32.to_be_bytes());
    assert_eq!(small.decode_request(&header), Ok(Decoded::Incomplete));
    header[8..12].copy_from_slice(&101u32.to_be_bytes());
    assert!(small.decode_request(&header).is_err());
    header[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(SERVER.decode_request(&header[..12]).is_err());
    for length in 0..16u32 {
        header[8..12].copy_from_slice(&length.to_be_bytes());
        assert!(SERVER.decode_request(&header).is_err(), "length {length}");
    }
    // Exactly the header: an empty payload, answered 1025.
    assert_eq!(decode(&frame("")), RequestPayload::Malformed);
    assert_eq!(
        split_frame(&frame("ab"), 18),
        Ok(Decoded::Frame(&b"ab"[..], 18))
    );
}

#[test]
fn write_frame_fills_the_length() {
    let mut out = BytesMut::new();
    encode_frame(&mut out, b"{}");
    assert_eq!(out.to_vec(), frame("{}"));
}

// --- Validation order (§3.4) and malformed payloads (J3, J4) -------------------------------------

#[test]
fn validation_order() {
    // 1. Not an object (batch elements).
    assert_eq!(
        payload(r#"[1,"x",null,[],{"jsonkv":"1.0","operate":"get","key":"k"}]"#),
        RequestPayload::Batch(vec![
            invalid(Code::Malformed, "null"),
            invalid(Code::Malformed, "null"),
            invalid(Code::Malformed, "null"),
            invalid(Code::Malformed, "null"),
            cmd(Command::get("k"), "null"),
        ])
    );
    // 2. jsonkv missing → 1025 (even with a bad operate); not "1.0" → 800 (before operate).
    assert_eq!(
        single_code(r#"{"operate":"fetch","key":"k"}"#),
        Code::Malformed
    );
    assert_eq!(
        single_code(r#"{"jsonkv":"2.0","operate":"fetch"}"#),
        Code::UnsupportedVersion
    );
    assert_eq!(
        single_code(r#"{"jsonkv":1.0,"operate":"get","key":"k"}"#),
        Code::UnsupportedVersion
    );
    assert_eq!(
        single_code(r#"{"jsonkv":null,"operate":"get","key":"k"}"#),
        Code::UnsupportedVersion
    );
    // 3. operate missing or not a string → 1025; unknown → 900 (before the key).
    assert_eq!(
        single_code(r#"{"jsonkv":"1.0","key":"k"}"#),
        Code::Malformed
    );
    assert_eq!(
        single_code(r#"{"jsonkv":"1.0","operate":1,"key":"k"}"#),
        Code::Malformed
    );
    assert_eq!(
        single_code(r#"{"jsonkv":"1.0","operate":"fetch","key":""}"#),
        Code::InvalidOperate
    );
    // 4. key missing, not a string, empty or too long → 1002 (before the value).
    for key in ["", r#","key":1"#, r#","key":"""#, r#","key":null"#] {
        let json = format!(r#"{{"jsonkv":"1.0","operate":"put"{key}}}"#);
        assert_eq!(single_code(&json), Code::InvalidKey, "{json}");
    }
    let long_key = "k".repeat(DEFAULT_MAX_KEY + 1);
    assert_eq!(
        single_code(&format!(
            r#"{{"jsonkv":"1.0","operate":"get","key":"{long_key}"}}"#
        )),
        Code::InvalidKey
    );
    let max_key = "é".repeat(DEFAULT_MAX_KEY / 2);
    assert_eq!(
        payload(&format!(
            r#"{{"jsonkv":"1.0","operate":"get","key":"{max_key}"}}"#
        )),
        RequestPayload::Single(cmd(Command::get(&max_key), "null"))
    );
    // Key length counts UTF-8 bytes.
    let long_utf8 = format!("{max_key}x");
    assert_eq!(
        single_code(&format!(
            r#"{{"jsonkv":"1.0","operate":"get","key":"{long_utf8}"}}"#
        )),
        Code::InvalidKey
    );
    // 5. put value missing or not a string → 1025; too long → 1001.
    assert_eq!(
        single_code(r#"{"jsonkv":"1.0","operate":"put","key":"k"}"#),
        Code::Malformed
    );
    assert_eq!(
        single_code(r#"{"jsonkv":"1.0","operate":"put","key":"k","value":999}"#),
        Code::Malformed
    );
    let long_value = "v".repeat(DEFAULT_MAX_VALUE + 1);
    assert_eq!(
        single_code(&format!(
            r#"{{"jsonkv":"1.0","operate":"put","key":"k","value":"{long_value}"}}"#
        )),
        Code::ValueTooLong
    );
    let max_value = "v".repeat(DEFAULT_MAX_VALUE);
    assert_eq!(
        payload(&format!(
            r#"{{"jsonkv":"1.0","operate":"put","key":"k","value":"{max_value}"}}"#
        )),
        RequestPayload::Single(cmd(Command::put("k", &max_value), "null"))
    );
    // get and delete ignore `value` whatever it is.
    assert_eq!(
        payload(r#"{"jsonkv":"1.0","operate":"Delete","key":"k","value":[1],"extra":{}}"#),
        RequestPayload::Single(cmd(Command::delete("k"), "null"))
    );
}

#[test]
fn ids_are_echoed_verbatim_but_compact() {
    for (json_id, echoed) in [
        ("1.0", "1.0"),
        ("-0", "-0"),
        ("1e3", "1e3"),
        ("\"a b\"", "\"a b\""),
        ("\"\\u0041\"", "\"\\u0041\""),
        ("null", "null"),
        ("true", "true"),
        (
            "{ \"b\" : 1 , \"a\" : [ 2 , \"x y\" ] }",
            "{\"b\":1,\"a\":[2,\"x y\"]}",
        ),
        ("\"é\"", "\"é\""),
        ("12345678901234567890123", "12345678901234567890123"),
    ] {
        let json = format!(r#"{{"jsonkv":"1.0","operate":"get","key":"k","id":{json_id}}}"#);
        let RequestPayload::Single(item) = payload(&json) else {
            panic!("{json}")
        };
        assert_eq!(item.id().as_json(), echoed, "{json}");
        let reply = encode_response(&ResponsePayload::Single(Response::error(
            Code::KeyNotFound,
            item.id().clone(),
        )));
        assert!(
            String::from_utf8_lossy(&reply).ends_with(&format!(",\"id\":{echoed}}}")),
            "{json}"
        );
    }
    // The id of an invalid object is still echoed; the last duplicate member wins.
    assert_eq!(
        payload(r#"{"jsonkv":"9","id":1,"id":2}"#),
        RequestPayload::Single(invalid(Code::UnsupportedVersion, "2"))
    );
    assert_eq!(Id::string("a\"b").as_json(), r#""a\"b""#);
    assert_eq!(Id::number(7).as_json(), "7");
    assert_eq!(Id::from_json("{"), None);
}

#[test]
fn whole_payload_malformed_cases() {
    let deep_ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
    let too_deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    let bad_utf8: &[u8] = b"{\"jsonkv\":\"1.0\",\"operate\":\"get\",\"key\":\"\xff\"}";
    assert_eq!(
        decode_request_payload(bad_utf8, &limits()),
        RequestPayload::Malformed
    );
    for json in [
        "",
        " ",
        "hello",
        "[]",
        " [ ] ",
        "1",
        "\"text\"",
        "null",
        "{",
        r#"{"a":1}}"#,
        r#"{"a":1} {"b":2}"#,
        r#"{"a":"\u00"}"#,
        "{\"a\":\"tab\tinside\"}",
        too_deep.as_str(),
    ] {
        assert_eq!(payload(json), RequestPayload::Malformed, "{json:?}");
    }
    // Deep but within the limit: a batch of one element that is not an object.
    assert_eq!(
        payload(&deep_ok),
        RequestPayload::Batch(vec![invalid(Code::Malformed, "null")])
    );
    // Brackets inside strings do not count.
    let brackets = format!(
        r#"{{"jsonkv":"1.0","operate":"get","key":"{}"}}"#,
        "[".repeat(100)
    );
    assert!(matches!(
        payload(&brackets),
        RequestPayload::Single(Item::Command { .. })
    ));
    // White space around the document is fine.
    assert_eq!(
        payload(" \n{\"jsonkv\" : \"1.0\" , \"operate\" : \"get\" , \"key\" : \"k\"}\r\n"),
        RequestPayload::Single(cmd(Command::get("k"), "null"))
    );
    // A configurable depth.
    let shallow = Limits {
        max_depth: 1,
        ..Limits::default()
    };
    assert_eq!(
        decode_request_payload(br#"[{"jsonkv":"1.0"}]"#, &shallow),
        RequestPayload::Malformed
    );
    // An escaped member name is the same name.
    assert_eq!(
        payload(r#"{"\u006asonkv":"1.0","operate":"get","key":"k"}"#),
        RequestPayload::Single(cmd(Command::get("k"), "null"))
    );
    // Escaped values are the same strings: version, operate and key.
    assert_eq!(
        payload(r#"{"jsonkv":"\u0031.0","operate":"g\u0065t","key":"a\"b"}"#),
        RequestPayload::Single(cmd(Command::get("a\"b"), "null"))
    );
    // An id written with white space is echoed compact; a compact one as it is.
    assert_eq!(
        payload(r#"{"jsonkv":"1.0","operate":"get","key":"k","id":[1, 2.0]}"#),
        RequestPayload::Single(cmd(Command::get("k"), "[1,2.0]"))
    );
    // A batch whose second element is not valid JSON is malformed as a whole.
    assert_eq!(
        payload(r#"[{"jsonkv":"1.0","operate":"get","key":"k"},{"a":tru}]"#),
        RequestPayload::Malformed
    );
}

#[test]
fn every_reply_shape() {
    let shapes = [
        (
            Response::success(Operate::Put, String::new(), Id::number(1)),
            r#"{"jsonkv":"1.0","result":{"value":"","code":"0","message":"put operation success"},"id":1}"#,
        ),
        (
            Response::success(Operate::Get, "v\"é\n".into(), Id::number(1)),
            r#"{"jsonkv":"1.0","result":{"value":"v\"é\n","code":"0","message":"get operation success"},"id":1}"#,
        ),
        (
            Response::success(Operate::Delete, String::new(), Id::null()),
            r#"{"jsonkv":"1.0","result":{"value":"","code":"0","message":"delete operation success"},"id":null}"#,
        ),
        (
            Response::error(Code::KeyNotFound, Id::null()),
            r#"{"jsonkv":"1.0","result":{"value":"","code":"1000","message":"key does not exist."},"id":null}"#,
        ),
        (
            Response::error(Code::UnsupportedVersion, Id::null()),
            r#"{"jsonkv":"1.0","result":{"value":"","code":"800","message":"unsupported protocol version"},"id":null}"#,
        ),
        (
            Response::error(Code::InvalidOperate, Id::null()),
            r#"{"jsonkv":"1.0","result":{"value":"","code":"900","message":"invalid operate"},"id":null}"#,
        ),
        (
            Response::error(Code::ValueTooLong, Id::null()),
            r#"{"jsonkv":"1.0","result":{"value":"","code":"1001","message":"value too long"},"id":null}"#,
        ),
        (
            Response::error(Code::InvalidKey, Id::null()),
            r#"{"jsonkv":"1.0","result":{"value":"","code":"1002","message":"invalid key"},"id":null}"#,
        ),
        (
            Response::error(Code::Internal, Id::null()),
            r#"{"jsonkv":"1.0","result":{"value":"","code":"1024","message":"internal error"},"id":null}"#,
        ),
        (
            Response::error_with(Code::Internal, NOT_UTF8_MESSAGE, Id::null()),
            r#"{"jsonkv":"1.0","result":{"value":"","code":"1024","message":"value is not valid UTF-8"},"id":null}"#,
        ),
        (
            Response::malformed(),
            r#"{"jsonkv":"1.0","result":{"value":"","code":"1025","message":"malformed request"},"id":null}"#,
        ),
    ];
    let client = JsonkvClientCodec::default();
    for (response, json) in shapes {
        let payload = ResponsePayload::Single(response);
        let bytes = encode_response(&payload);
        assert_eq!(bytes, frame(json));
        assert_eq!(
            client.decode_response(&bytes),
            Ok(Decoded::Frame(payload, bytes.len()))
        );
    }
}

#[test]
fn udp_reply_too_large_is_replaced() {
    let mut out = BytesMut::new();
    let fits = "v".repeat(MAX_UDP_DATAGRAM - 200);
    let response = ResponsePayload::Single(Response::success(Operate::Get, fits, Id::number(1)));
    SERVER.encode_datagram_response(&response.clone().into(), &mut out);
    assert!(out.len() <= MAX_UDP_DATAGRAM);
    assert_eq!(
        JsonkvClientCodec::default().decode_datagram(&out),
        Some(response)
    );

    out.clear();
    let big = ResponsePayload::Single(Response::success(
        Operate::Get,
        "v".repeat(MAX_UDP_DATAGRAM),
        Id::number(1),
    ));
    SERVER.encode_datagram_response(&big.into(), &mut out);
    assert_eq!(
        out.to_vec(),
        frame(
            r#"{"jsonkv":"1.0","result":{"value":"","code":"1024","message":"response too large for UDP"},"id":null}"#
        )
    );
}

#[test]
fn client_decodes_original_server_replies() {
    // The original server: value "0", code 8193, spaces after separators.
    let json = r#"{"jsonkv": "1.0", "result": {"value": "0", "code": "8193", "message": "Key does not exist."}, "id": "1"}"#;
    assert_eq!(
        decode_response_payload(json.as_bytes(), DEFAULT_MAX_DEPTH),
        Some(ResponsePayload::Single(Response {
            value: "0".into(),
            code: "8193".into(),
            message: "Key does not exist.".into(),
            id: id(r#""1""#),
        }))
    );
    let client = JsonkvClientCodec::default();
    assert!(client.decode_response(&frame("hello")).is_err());
    assert!(client
        .decode_response(&frame(r#"{"jsonkv":"1.0"}"#))
        .is_err());
    let mut bad = frame("{}");
    bad[11] = 3;
    assert!(client.decode_response(&bad).is_err());
}

// --- JSON-RPC (§6) --------------------------------------------------------------------------------

fn rpc(body: &str) -> RpcPayload {
    decode_rpc_request(body.as_bytes(), &limits())
}

fn rpc_call(id_json: Option<&str>, action: RpcAction) -> RpcPayload {
    RpcPayload::Single(RpcCall {
        id: id_json.map(id),
        action,
    })
}

fn rpc_body(response: RpcResponse) -> String {
    String::from_utf8(encode_rpc_response(&RpcResponsePayload::Single(response))).unwrap()
}

#[test]
fn vectors_9_to_12_json_rpc() {
    let v9 = r#"{"jsonrpc":"2.0","method":"Put","params":["tomato","999"],"id":1}"#;
    assert_eq!(
        rpc(v9),
        rpc_call(Some("1"), RpcAction::Execute(Command::put("tomato", "999")))
    );
    assert_eq!(
        encode_rpc_request(&rpc(v9), &limits()),
        v9.as_bytes(),
        "the client writes the same body"
    );
    assert_eq!(
        rpc_body(RpcResponse::success(Operate::Put, None, id("1"))),
        r#"{"jsonrpc":"2.0","result":{"code":0,"message":"put operation success"},"id":1}"#
    );

    let v10 = r#"{"jsonrpc":"2.0","method":"Get","params":["tomato"],"id":2}"#;
    assert_eq!(
        rpc(v10),
        rpc_call(Some("2"), RpcAction::Execute(Command::get("tomato")))
    );
    assert_eq!(
        rpc_body(RpcResponse::success(
            Operate::Get,
            Some("999".into()),
            id("2")
        )),
        r#"{"jsonrpc":"2.0","result":{"code":0,"message":"get operation success","value":"999"},"id":2}"#
    );

    let v11 = r#"{"jsonrpc":"2.0","method":"Get","params":["nope"],"id":3}"#;
    assert_eq!(
        rpc(v11),
        rpc_call(Some("3"), RpcAction::Execute(Command::get("nope")))
    );
    assert_eq!(
        rpc_body(RpcResponse::refused(Code::KeyNotFound, id("3"))),
        r#"{"jsonrpc":"2.0","result":{"code":1000,"message":"key does not exist."},"id":3}"#
    );

    let v12 = r#"{"jsonrpc":"2.0","method":"get","params":["tomato"],"id":4}"#;
    assert_eq!(
        rpc(v12),
        rpc_call(Some("4"), RpcAction::Error(RpcError::MethodNotFound))
    );
    assert_eq!(
        rpc_body(RpcResponse::error(RpcError::MethodNotFound, id("4"))),
        r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":4}"#
    );

    // The client reads each of them back.
    for body in [
        r#"{"jsonrpc":"2.0","result":{"code":0,"message":"get operation success","value":"999"},"id":2}"#,
        r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":4}"#,
    ] {
        let parsed = decode_rpc_response(body.as_bytes(), DEFAULT_MAX_DEPTH).unwrap();
        assert_eq!(encode_rpc_response(&parsed), body.as_bytes());
    }
}

#[test]
fn json_rpc_errors() {
    let invalid_request =
        |id_json| rpc_call(Some(id_json), RpcAction::Error(RpcError::InvalidRequest));
    let invalid_params =
        |id_json| rpc_call(Some(id_json), RpcAction::Error(RpcError::InvalidParams));
    assert_eq!(
        rpc("{nope"),
        rpc_call(Some("null"), RpcAction::Error(RpcError::ParseError))
    );
    assert_eq!(
        rpc(""),
        rpc_call(Some("null"), RpcAction::Error(RpcError::ParseError))
    );
    assert_eq!(rpc("[]"), invalid_request("null"));
    assert_eq!(rpc("1"), invalid_request("null"));
    assert_eq!(
        rpc(r#"{"method":"Get","params":["k"],"id":5}"#),
        invalid_request("5")
    );
    assert_eq!(
        rpc(r#"{"jsonrpc":"1.0","method":"Get","params":["k"],"id":5}"#),
        invalid_request("5")
    );
    assert_eq!(
        rpc(r#"{"jsonrpc":"2.0","method":1,"params":"bar"}"#),
        invalid_request("null")
    );
    assert_eq!(
        rpc(r#"{"jsonrpc":"2.0","method":"Get","params":["k"],"id":{"a":1}}"#),
        invalid_request("null")
    );
    for params in [
        r#""params":["k","v"]"#,
        r#""params":[]"#,
        r#""params":[1]"#,
        r#""params":{"key":"k"}"#,
        r#""params":"k""#,
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","method":"Get",{params},"id":"x"}}"#);
        assert_eq!(rpc(&body), invalid_params(r#""x""#), "{body}");
    }
    assert_eq!(
        rpc(r#"{"jsonrpc":"2.0","method":"Get","id":"x"}"#),
        invalid_params(r#""x""#)
    );
    assert_eq!(
        rpc(r#"{"jsonrpc":"2.0","method":"Put","params":["k"],"id":"x"}"#),
        invalid_params(r#""x""#)
    );
    assert_eq!(
        rpc(r#"{"jsonrpc":"2.0","method":"Put","params":["k",null],"id":"x"}"#),
        invalid_params(r#""x""#)
    );
    // Limits are answered in `result`.
    assert_eq!(
        rpc(r#"{"jsonrpc":"2.0","method":"Delete","params":[""],"id":1}"#),
        rpc_call(Some("1"), RpcAction::Refuse(Code::InvalidKey))
    );
    let long = format!(
        r#"{{"jsonrpc":"2.0","method":"Put","params":["k","{}"],"id":1}}"#,
        "v".repeat(DEFAULT_MAX_VALUE + 1)
    );
    assert_eq!(
        rpc(&long),
        rpc_call(Some("1"), RpcAction::Refuse(Code::ValueTooLong))
    );
    assert_eq!(
        rpc_body(RpcResponse::refused(Code::ValueTooLong, id("1"))),
        r#"{"jsonrpc":"2.0","result":{"code":1001,"message":"value too long"},"id":1}"#
    );
    assert_eq!(
        rpc_body(RpcResponse::refused(Code::InvalidKey, id("1"))),
        r#"{"jsonrpc":"2.0","result":{"code":1002,"message":"invalid key"},"id":1}"#
    );
    assert_eq!(
        rpc_body(RpcResponse::refused_with(
            Code::Internal,
            NOT_UTF8_MESSAGE,
            id("1")
        )),
        r#"{"jsonrpc":"2.0","result":{"code":1024,"message":"value is not valid UTF-8"},"id":1}"#
    );
    for (error, text) in [
        (
            RpcError::ParseError,
            r#"{"code":-32700,"message":"Parse error"}"#,
        ),
        (
            RpcError::InvalidRequest,
            r#"{"code":-32600,"message":"Invalid Request"}"#,
        ),
        (
            RpcError::InvalidParams,
            r#"{"code":-32602,"message":"Invalid params"}"#,
        ),
    ] {
        assert_eq!(
            rpc_body(RpcResponse::error(error, Id::null())),
            format!(r#"{{"jsonrpc":"2.0","error":{text},"id":null}}"#)
        );
    }
}

#[test]
fn json_rpc_notifications_and_batches() {
    // No id: a notification, executed but not answered; errors in it are not answered either.
    assert_eq!(
        rpc(r#"{"jsonrpc":"2.0","method":"Delete","params":["k"]}"#),
        rpc_call(None, RpcAction::Execute(Command::delete("k")))
    );
    assert_eq!(
        rpc(r#"{"jsonrpc":"2.0","method":"Nope","params":["k"]}"#),
        rpc_call(None, RpcAction::Error(RpcError::MethodNotFound))
    );
    // An explicit null id is not a notification.
    assert_eq!(
        rpc(r#"{"jsonrpc":"2.0","method":"Get","params":["k"],"id":null}"#),
        rpc_call(Some("null"), RpcAction::Execute(Command::get("k")))
    );
    let batch = rpc(
        r#"[{"jsonrpc":"2.0","method":"Put","params":["a","1"],"id":"1"},{"jsonrpc":"2.0","method":"Get","params":["a"]},1,{"jsonrpc":"2.0","method":"Get","params":["a"],"id":2.50}]"#,
    );
    assert_eq!(
        batch,
        RpcPayload::Batch(vec![
            RpcCall {
                id: Some(id(r#""1""#)),
                action: RpcAction::Execute(Command::put("a", "1"))
            },
            RpcCall {
                id: None,
                action: RpcAction::Execute(Command::get("a"))
            },
            RpcCall {
                id: Some(Id::null()),
                action: RpcAction::Error(RpcError::InvalidRequest)
            },
            RpcCall {
                id: Some(id("2.50")),
                action: RpcAction::Execute(Command::get("a"))
            },
        ])
    );
    assert_eq!(RpcResponsePayload::for_answers(true, vec![]), None);
    assert_eq!(RpcResponsePayload::for_answers(false, vec![]), None);
    let answers = vec![
        RpcResponse::success(Operate::Put, None, id(r#""1""#)),
        RpcResponse::error(RpcError::InvalidRequest, Id::null()),
    ];
    let body =
        encode_rpc_response(&RpcResponsePayload::for_answers(true, answers.clone()).unwrap());
    assert_eq!(
        String::from_utf8(body.clone()).unwrap(),
        r#"[{"jsonrpc":"2.0","result":{"code":0,"message":"put operation success"},"id":"1"},{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}]"#
    );
    assert_eq!(
        decode_rpc_response(&body, DEFAULT_MAX_DEPTH),
        Some(RpcResponsePayload::Batch(answers.clone()))
    );
    assert_eq!(
        RpcResponsePayload::for_answers(false, answers[..1].to_vec()),
        Some(RpcResponsePayload::Single(answers[0].clone()))
    );
    assert_eq!(
        decode_rpc_response(b"{\"jsonrpc\":\"2.0\",\"id\":1}", 64),
        None
    );
    assert_eq!(decode_rpc_response(b"nope", 64), None);
}

// --- jsonagent (§7) --------------------------------------------------------------------------------

fn agent(json: &str) -> AgentRequest {
    let request = decode_agent_request(json.as_bytes(), DEFAULT_MAX_DEPTH);
    // The framed path gives the same.
    let bytes = frame(json);
    assert_eq!(
        AgentServerCodec::default().decode_request(&bytes),
        Ok(Decoded::Frame(request.clone(), bytes.len()))
    );
    request
}

fn agent_reply(response: &AgentResponse) -> Vec<u8> {
    let mut out = BytesMut::new();
    AgentServerCodec::default().encode_response(response, &mut out);
    out.to_vec()
}

#[test]
fn vectors_13_to_16_jsonagent() {
    let v13 = r#"{"jsonagent":"1.0","operate":"register","address":"10.0.0.5","tcpport":"15001","rpcport":15003,"udpport":15002}"#;
    assert_eq!(frame(v13).len(), 127);
    assert_eq!(
        agent(v13),
        AgentRequest::Register {
            address: "10.0.0.5".into(),
            tcpport: Some(15001),
            rpcport: Some(15003),
            udpport: Some(15002)
        }
    );
    let r13 = agent_reply(&AgentResponse::registered(2));
    assert_eq!(
        r13,
        frame(
            r#"{"jsonagent":"1.0","result":{"value":"2","code":"0","message":"register success"}}"#
        )
    );
    assert_eq!(r13.len(), 98);

    let v14 = r#"{"jsonagent":"1.0","operate":"getserverlist","protocol":"tcp"}"#;
    assert_eq!(frame(v14).len(), 78);
    assert_eq!(
        agent(v14),
        AgentRequest::GetServerList {
            protocol: ServerProtocol::Tcp
        }
    );
    let r14 = agent_reply(&AgentResponse::server_list(vec![
        ServerEntry {
            nodeid: 1,
            address: "127.0.0.1".into(),
            port: 15001,
        },
        ServerEntry {
            nodeid: 2,
            address: "10.0.0.5".into(),
            port: 15001,
        },
    ]));
    assert_eq!(
        r14,
        frame(
            r#"{"jsonagent":"1.0","result":{"value":[{"nodeid":1,"address":"127.0.0.1","port":15001},{"nodeid":2,"address":"10.0.0.5","port":15001}],"code":"0","message":"get server list success"}}"#
        )
    );
    assert_eq!(r14.len(), 198);

    let v15 = r#"{"jsonagent":"1.0","operate":"unregister"}"#;
    assert_eq!(frame(v15).len(), 58);
    assert_eq!(agent(v15), AgentRequest::Unregister);
    let r15 = agent_reply(&AgentResponse::unregistered());
    assert_eq!(
        r15,
        frame(r#"{"jsonagent":"1.0","result":{"code":"0","message":"unregister success"}}"#)
    );
    assert_eq!(r15.len(), 88);

    let r16 = agent_reply(&AgentResponse::error(AgentCode::AlreadyRemoved));
    assert_eq!(
        r16,
        frame(r#"{"jsonagent":"1.0","result":{"code":"902","message":"server already removed"}}"#)
    );
    assert_eq!(r16.len(), 94);

    // The client decodes every one of them back.
    let client = AgentClientCodec::default();
    for (bytes, response) in [
        (r13, AgentResponse::registered(2)),
        (r15, AgentResponse::unregistered()),
        (r16, AgentResponse::error(AgentCode::AlreadyRemoved)),
    ] {
        assert_eq!(
            client.decode_response(&bytes),
            Ok(Decoded::Frame(response, bytes.len()))
        );
    }
    assert!(matches!(
        client.decode_response(&r14),
        Ok(Decoded::Frame(
            AgentResponse {
                value: AgentValue::Servers(ref s),
                ..
            },
            198
        )) if s.len() == 2 && s[1].address == "10.0.0.5"
    ));
    // The client writes the requests the way the table shows them (ports as numbers).
    let mut out = BytesMut::new();
    client.encode_request(&agent(v14), &mut out);
    assert_eq!(out.to_vec(), frame(v14));
    out.clear();
    client.encode_request(&AgentRequest::Unregister, &mut out);
    assert_eq!(out.to_vec(), frame(v15));
}

#[test]
fn jsonagent_errors() {
    let code = |json: &str| match agent(json) {
        AgentRequest::Invalid { code } => code,
        other => panic!("{json}: {other:?}"),
    };
    let p = AgentCode::InvalidParameters;
    assert_eq!(code("hello"), p);
    assert_eq!(code("[]"), p);
    assert_eq!(code(r#"[{"jsonagent":"1.0","operate":"unregister"}]"#), p);
    assert_eq!(code(r#"{"operate":"unregister"}"#), p);
    assert_eq!(
        code(r#"{"jsonagent":"2.0","operate":"unregister"}"#),
        AgentCode::UnsupportedVersion
    );
    assert_eq!(
        code(r#"{"jsonagent":1,"operate":"unregister"}"#),
        AgentCode::UnsupportedVersion
    );
    assert_eq!(
        code(r#"{"jsonagent":"1.0","operate":"fly"}"#),
        AgentCode::InvalidOperate
    );
    assert_eq!(code(r#"{"jsonagent":"1.0"}"#), AgentCode::InvalidOperate);
    assert_eq!(code(r#"{"jsonagent":"1.0","operate":"getserverlist"}"#), p);
    assert_eq!(
        code(r#"{"jsonagent":"1.0","operate":"getserverlist","protocol":"sctp"}"#),
        p
    );
    assert_eq!(
        agent(r#"{"jsonagent":"1.0","operate":"GetServerList","protocol":"UDP"}"#),
        AgentRequest::GetServerList {
            protocol: ServerProtocol::Udp
        }
    );
    let register = |members: &str| {
        agent(&format!(
            r#"{{"jsonagent":"1.0","operate":"Register"{members}}}"#
        ))
    };
    for members in [
        r#","tcpport":1"#,
        r#","address":"","tcpport":1"#,
        r#","address":5,"tcpport":1"#,
        r#","address":"h""#,
        r#","address":"h","tcpport":0"#,
        r#","address":"h","tcpport":65536"#,
        r#","address":"h","tcpport":"65536""#,
        r#","address":"h","tcpport":"""#,
        r#","address":"h","tcpport":"+1""#,
        r#","address":"h","tcpport":"1 ""#,
        r#","address":"h","tcpport":1.5"#,
        r#","address":"h","tcpport":-1"#,
        r#","address":"h","tcpport":null"#,
        r#","address":"h","tcpport":1,"rpcport":true"#,
    ] {
        assert_eq!(
            register(members),
            AgentRequest::Invalid { code: p },
            "{members}"
        );
    }
    let long = "a".repeat(MAX_AGENT_ADDRESS + 1);
    assert_eq!(
        register(&format!(r#","address":"{long}","udpport":1"#)),
        AgentRequest::Invalid { code: p }
    );
    assert_eq!(
        register(&format!(
            r#","address":"{}","udpport":"00065535","extra":[1]"#,
            &long[1..]
        )),
        AgentRequest::Register {
            address: long[1..].into(),
            tcpport: None,
            rpcport: None,
            udpport: Some(65535)
        }
    );
    for (code, text) in [
        (
            AgentCode::RegisterFailed,
            r#"{"code":"901","message":"register failed"}"#,
        ),
        (
            AgentCode::NoServerAlive,
            r#"{"code":"903","message":"no server alive"}"#,
        ),
        (
            AgentCode::InvalidParameters,
            r#"{"code":"905","message":"invalid parameters"}"#,
        ),
        (
            AgentCode::InvalidOperate,
            r#"{"code":"900","message":"invalid operate"}"#,
        ),
        (
            AgentCode::UnsupportedVersion,
            r#"{"code":"800","message":"unsupported protocol version"}"#,
        ),
    ] {
        assert_eq!(
            agent_reply(&AgentResponse::error(code)),
            frame(&format!(r#"{{"jsonagent":"1.0","result":{text}}}"#))
        );
    }
    assert_eq!(
        AgentResponse::server_list(vec![]),
        AgentResponse::error(AgentCode::NoServerAlive)
    );
    // The seed's own list entries have no node id.
    assert_eq!(
        decode_agent_response(
            br#"{"jsonagent":"1.0","result":{"value":[{"address":"uw.umx.io","port":15003}], "code":"0","message":"get tcp/rpc server list success"}}"#,
            DEFAULT_MAX_DEPTH
        ),
        Some(AgentResponse {
            value: AgentValue::Servers(vec![ServerEntry {
                nodeid: 0,
                address: "uw.umx.io".into(),
                port: 15003
            }]),
            code: "0".into(),
            message: "get tcp/rpc server list success".into()
        })
    );
}

// --- Round trips and fuzz bodies -----------------------------------------------------------------

fn key_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9é\"\\\\\n\u{0}-\u{1f} ]{1,20}"
}

fn id_strategy() -> impl Strategy<Value = Id> {
    prop_oneof![
        Just(Id::null()),
        any::<u64>().prop_map(Id::number),
        "[a-z\"\\\\ é]{0,8}".prop_map(|s| Id::string(&s)),
        Just(id("1.0")),
        Just(id("[1,{\"a\":null}]")),
    ]
}

/// JSON-RPC ids are strings, numbers or null.
fn rpc_id_strategy() -> impl Strategy<Value = Id> {
    prop_oneof![
        Just(Id::null()),
        any::<u64>().prop_map(Id::number),
        "[a-z\"\\\\ é]{0,8}".prop_map(|s| Id::string(&s)),
        Just(id("-1.5e3")),
    ]
}

fn item_strategy() -> impl Strategy<Value = Item> {
    let command = prop_oneof![
        (key_strategy(), ".{0,30}").prop_map(|(k, v)| Command::put(&k, &v)),
        key_strategy().prop_map(|k| Command::get(&k)),
        key_strategy().prop_map(|k| Command::delete(&k)),
    ];
    let code = prop_oneof![
        Just(Code::Malformed),
        Just(Code::UnsupportedVersion),
        Just(Code::InvalidOperate),
        Just(Code::InvalidKey),
        Just(Code::ValueTooLong),
    ];
    prop_oneof![
        4 => (command, id_strategy()).prop_map(|(command, id)| Item::Command { command, id }),
        1 => (code, id_strategy()).prop_map(|(code, id)| Item::Invalid { code, id }),
    ]
}

fn response_strategy() -> impl Strategy<Value = Response> {
    (".{0,30}", "[0-9]{1,5}", ".{0,20}", id_strategy()).prop_map(|(value, code, message, id)| {
        Response {
            value,
            code: code.into(),
            message: message.into(),
            id,
        }
    })
}

proptest! {
    #[test]
    fn requests_round_trip(items in proptest::collection::vec(item_strategy(), 1..5), single in any::<bool>()) {
        let request = if single {
            RequestPayload::Single(items[0].clone())
        } else {
            RequestPayload::Batch(items)
        };
        let client = JsonkvClientCodec::default();
        let mut out = BytesMut::new();
        client.encode_request(&request, &mut out);
        prop_assert_eq!(
            SERVER.decode_request(&out).map(|d| d.map(ServerRequest::into_payload)),
            Ok(Decoded::Frame(request.clone(), out.len()))
        );
        prop_assert_eq!(SERVER.decode_datagram(&out), Some(request));
    }

    #[test]
    fn responses_round_trip(responses in proptest::collection::vec(response_strategy(), 0..5), single in any::<bool>()) {
        let payload = match responses.first() {
            Some(first) if single => ResponsePayload::Single(first.clone()),
            _ => ResponsePayload::Batch(responses),
        };
        let bytes = encode_response(&payload);
        prop_assert_eq!(
            JsonkvClientCodec::default().decode_response(&bytes),
            Ok(Decoded::Frame(payload, bytes.len()))
        );
    }

    #[test]
    fn rpc_round_trip(items in proptest::collection::vec((item_strategy(), proptest::option::of(rpc_id_strategy())), 1..4)) {
        let calls: Vec<RpcCall> = items.into_iter().filter_map(|(item, id)| match item {
            Item::Command { command, .. } => Some(RpcCall { id, action: RpcAction::Execute(command) }),
            _ => None,
        }).collect();
        let payload = RpcPayload::Batch(calls);
        let body = encode_rpc_request(&payload, &limits());
        let expected = match &payload {
            RpcPayload::Batch(calls) if calls.is_empty() => rpc_call(Some("null"), RpcAction::Error(RpcError::InvalidRequest)),
            _ => payload.clone(),
        };
        prop_assert_eq!(decode_rpc_request(&body, &limits()), expected);
    }

    #[test]
    fn agent_round_trip(address in "[a-z0-9.é\"]{1,40}", ports in proptest::array::uniform3(proptest::option::of(1u16..)), protocol in 0..3usize) {
        let requests = [
            AgentRequest::Register { address: address.clone(), tcpport: ports[0], rpcport: ports[1], udpport: ports[2].or(Some(1)) },
            AgentRequest::Unregister,
            AgentRequest::GetServerList { protocol: [ServerProtocol::Tcp, ServerProtocol::Udp, ServerProtocol::Rpc][protocol] },
            AgentRequest::Invalid { code: AgentCode::InvalidOperate },
        ];
        for request in requests {
            let mut out = BytesMut::new();
            AgentClientCodec::default().encode_request(&request, &mut out);
            prop_assert_eq!(AgentServerCodec::default().decode_request(&out), Ok(Decoded::Frame(request, out.len())));
        }
        let response = AgentResponse::server_list(vec![ServerEntry { nodeid: 3, address, port: ports[0].unwrap_or(1) }]);
        let bytes = agent_reply(&response);
        prop_assert_eq!(AgentClientCodec::default().decode_response(&bytes), Ok(Decoded::Frame(response, bytes.len())));
    }

    #[test]
    fn fuzz_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzz_server(&data);
        fuzz_client(&data);
    }

    #[test]
    fn fuzz_bodies_on_json_like_input(data in "[\\[\\]{}\",:0-9a-z \\\\]{0,80}") {
        let wrapped = [&b"{\"jsonkv\":\"1.0\",\"operate\":\"put\",\"key\":"[..], data.as_bytes()].concat();
        for input in [data.as_bytes(), &wrapped, &frame(&data)] {
            fuzz_server(input);
            fuzz_client(input);
        }
    }
}

#[test]
fn fuzz_bodies_on_every_vector() {
    for json in [
        V1_REQ,
        V1_RESP,
        "hello",
        r#"[{"jsonkv":"1.0","operate":"delete","key":"1","id":"4"},{"jsonkv":"2.0","operate":"get","key":"1","id":"5"},7]"#,
        r#"{"jsonrpc":"2.0","method":"Put","params":["tomato","999"],"id":1}"#,
        r#"[{"jsonrpc":"2.0","method":"Get","params":[""]},{"jsonrpc":"2.0","method":"x"},{"id":{}}]"#,
        r#"{"jsonrpc":"2.0","result":{"code":0,"message":"get operation success","value":"999"},"id":2}"#,
        r#"{"jsonagent":"1.0","operate":"register","address":"10.0.0.5","tcpport":"15001","rpcport":15003,"udpport":15002}"#,
        r#"{"jsonagent":"1.0","result":{"value":[{"nodeid":1,"address":"127.0.0.1","port":"15001"}],"code":0,"message":"ok"}}"#,
        r#"{"jsonkv":"1.0","result":{"value":null,"code":1e2,"message":"m"},"id":{"a" : [1 , 2]}}"#,
    ] {
        fuzz_server(json.as_bytes());
        fuzz_client(json.as_bytes());
        fuzz_server(&frame(json));
        fuzz_client(&frame(json));
        let twice = [frame(json), frame(json)].concat();
        fuzz_server(&twice);
        fuzz_client(&twice);
    }
}

// --- The plain reader (json::plain_members) --------------------------------------------------

/// Payloads the plain reader must take, and what it must give: the parser's result.
#[test]
fn plain_reader_takes_plain_objects_as_the_parser_does() {
    for json in [
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":1}"#,
        r#" { "jsonkv" : "1.0" , "operate":"GET","key":"k","id":-0 } "#,
        r#"{"jsonkv":"1.0","operate":"put","key":"k","value":"é€😀","id":null}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"a","key":"b","id":true}"#,
        r#"{"jsonkv":"1.0","operate":"delete","key":"k","id":"x y"}"#,
        r#"{"jsonkv":"2.0","operate":"get","key":"k"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"","id":12345678901234567890123}"#,
        "{}",
    ] {
        let plain = decode_plain_request(json.as_bytes(), &limits())
            .unwrap_or_else(|| panic!("{json}: not taken by the plain reader"));
        assert_eq!(
            RequestPayload::Single(plain),
            decode_request_payload_parsed(json.as_bytes(), &limits()),
            "{json}"
        );
    }
}

/// Payloads the plain reader must leave to the parser: anything with escapes, fractions,
/// nesting or arrays, and every kind of invalid JSON (which the parser then refuses).
#[test]
fn plain_reader_leaves_everything_else_to_the_parser() {
    for json in [
        r#"{"jsonkv":"1.0","operate":"get","key":"a\"b","id":1}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":1.5}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":1e3}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":[1]}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":{"a":1}}"#,
        r#"[{"jsonkv":"1.0","operate":"get","key":"k"}]"#,
        // Invalid: leading zero, lone minus, trailing comma, missing comma, bare word,
        // control character, trailing text, two documents, unterminated.
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":01}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":-}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k",}"#,
        r#"{"jsonkv":"1.0" "operate":"get","key":"k"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":nul}"#,
        "{\"jsonkv\":\"1.0\",\"operate\":\"get\",\"key\":\"a\u{1}b\"}",
        r#"{"jsonkv":"1.0","operate":"get","key":"k"}x"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k"}{}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k""#,
        r#"{,}"#,
    ] {
        assert_eq!(
            decode_plain_request(json.as_bytes(), &limits()),
            None,
            "{json}: taken by the plain reader"
        );
    }
    // Not UTF-8 inside a string: refused as malformed through the parser.
    let bytes = b"{\"jsonkv\":\"1.0\",\"operate\":\"get\",\"key\":\"\xff\"}";
    assert_eq!(decode_plain_request(bytes, &limits()), None);
    assert_eq!(
        decode_request_payload(bytes, &limits()),
        RequestPayload::Malformed
    );
    // A depth limit of 0 refuses every object: the plain reader steps aside.
    let none_deep = Limits {
        max_depth: 0,
        ..limits()
    };
    assert_eq!(decode_plain_request(b"{}", &none_deep), None);
    assert_eq!(
        decode_request_payload(b"{}", &none_deep),
        RequestPayload::Malformed
    );
}

#[test]
fn plain_reader_takes_responses_as_the_parser_does() {
    for json in [
        V1_RESP,
        r#"{"jsonkv":"1.0","result":{"value":"v","code":"1000","message":"key does not exist."},"id":7}"#,
        r#"{"jsonkv":"1.0","result":{"value":null,"code":8193},"id":null}"#,
    ] {
        let plain = decode_plain_response(json.as_bytes(), DEFAULT_MAX_DEPTH)
            .unwrap_or_else(|| panic!("{json}: not taken by the plain reader"));
        assert_eq!(
            Some(ResponsePayload::Single(plain)),
            decode_response_payload_parsed(json.as_bytes(), DEFAULT_MAX_DEPTH),
            "{json}"
        );
    }
    for json in [
        r#"{"jsonkv":"1.0","result":{"value":"a\nb","code":"0","message":""},"id":1}"#,
        r#"{"jsonkv":"1.0","result":{"value":"","code":"0","message":""},"id":1,}"#,
        r#"{"jsonkv":"1.0","result":{"value":"","code":"0","message":"","x":{}},"id":1}"#,
    ] {
        assert_eq!(
            decode_plain_response(json.as_bytes(), DEFAULT_MAX_DEPTH),
            None,
            "{json}"
        );
    }
}

#[test]
fn escapes_counts_every_byte_of_any_length() {
    let naive = |s: &str| -> usize {
        s.bytes()
            .map(|b| match b {
                0..=0x1f => 5,
                b'"' | b'\\' => 1,
                _ => 0,
            })
            .sum()
    };
    // Every length around the 32-byte steps, with the special bytes at the start, the end and
    // a step's boundary, and a string made only of the costliest byte.
    for len in (0..100).chain([799, 800, 801, 816, 817]) {
        let plain = "a".repeat(len);
        assert_eq!(escapes(&plain), 0, "{len}");
        for at in [0, len / 2, len.saturating_sub(1), 31.min(len), 32.min(len)] {
            for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', 'é'] {
                let mut s: Vec<char> = plain.chars().collect();
                if at < s.len() {
                    s[at] = special;
                }
                let s: String = s.into_iter().collect();
                assert_eq!(escapes(&s), naive(&s), "{s:?}");
            }
        }
        let worst = "\u{1}".repeat(len);
        assert_eq!(escapes(&worst), 5 * len);
    }
}

#[test]
fn ids_of_any_length_keep_their_text() {
    // 22 bytes are held inline, 23 on the heap: both read back, compare and hash alike.
    for text in ["1", "\"1234567890123456789\"", "\"12345678901234567890\""] {
        let id = Id::from_json(text).unwrap();
        assert_eq!(id.as_json(), text);
        assert_eq!(id, id.clone());
        assert!(!id.is_null());
    }
    assert_ne!(Id::number(1), Id::number(10));
    assert!(Id::null().is_null());
    let long = format!("\"{}\"", "x".repeat(1000));
    assert_eq!(Id::from_json(&long).unwrap().as_json(), long);
}

#[test]
fn plain_reader_checks_utf8_string_by_string() {
    let truncated = b"{\"jsonkv\":\"1.0\",\"operate\":\"put\",\"key\":\"k\",\"value\":\"a\xc3\"}";
    assert_eq!(decode_plain_request(truncated, &limits()), None);
    assert_eq!(
        decode_request_payload(truncated, &limits()),
        RequestPayload::Malformed
    );
    let outside = b"{\"jsonkv\":\"1.0\",\"operate\":\"get\",\"key\":\"k\"\xff}";
    assert_eq!(decode_plain_request(outside, &limits()), None);
    let response =
        b"{\"jsonkv\":\"1.0\",\"result\":{\"value\":\"\xe2\x82\",\"code\":\"0\",\"message\":\"\"},\"id\":1}";
    assert_eq!(decode_plain_response(response, DEFAULT_MAX_DEPTH), None);
    assert_eq!(decode_response_payload(response, DEFAULT_MAX_DEPTH), None);
}

#[test]
fn needs_escape_agrees_with_the_count_at_every_length() {
    for len in 0..40 {
        let plain = "a".repeat(len);
        assert!(!needs_escape(plain.as_bytes()), "{len}");
        for at in 0..len {
            for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', 'é', '\u{7f}', ' '] {
                let mut s: Vec<char> = plain.chars().collect();
                s[at] = special;
                let s: String = s.into_iter().collect();
                assert_eq!(needs_escape(s.as_bytes()), escapes(&s) > 0, "{s:?}");
            }
        }
    }
}

#[test]
fn the_plain_string_scan_finds_the_closing_quote_and_refuses_escapes() {
    // The inside starts after the opening quote; text follows the string, as in an object.
    let scan = |inside: &str| {
        let text = format!("\"{inside}\",\"next\":\"x\"}}");
        plain_string_end(text.as_bytes(), 1)
    };
    for len in 0..30 {
        let plain = "k".repeat(len);
        assert_eq!(scan(&plain), Some((len + 1, true)), "{len}");
        for at in 0..len {
            let mut s: Vec<char> = plain.chars().collect();
            s[at] = 'é';
            let s: String = s.into_iter().collect();
            assert_eq!(scan(&s), Some((s.len() + 1, false)), "{s:?}");
            for refused in ['\\', '\n', '\u{0}', '\u{1f}'] {
                let mut s: Vec<char> = plain.chars().collect();
                s[at] = refused;
                let s: String = s.into_iter().collect();
                assert_eq!(scan(&s), None, "{s:?}");
            }
        }
    }
    // Not closed, at every distance from the end of the text.
    for len in 0..20 {
        let text = format!("\"{}", "k".repeat(len));
        assert_eq!(plain_string_end(text.as_bytes(), 1), None, "{len}");
    }
}

// --- The canonical reader (kv::decode_canonical_request) ---------------------------------------

/// What the client codec writes for plain keys and values is taken by the canonical reader,
/// with the plain reader's result; anything else is left to it.
#[test]
fn canonical_reader_takes_what_the_client_writes_as_the_plain_reader_does() {
    let client = JsonkvClientCodec::default();
    let ids = [
        Id::null(),
        Id::number(0),
        Id::number(7),
        Id::number(u64::MAX),
    ];
    for id in ids {
        for command in [
            Command::get("k"),
            Command::get("key-0000000001"),
            Command::put("k", ""),
            Command::put("k", "v".repeat(100)),
            Command::put("k", "x y"),
        ] {
            let request = RequestPayload::Single(Item::Command {
                command,
                id: id.clone(),
            });
            let mut out = BytesMut::new();
            client.encode_request(&request, &mut out);
            let payload = &out[HEADER_LEN..];
            let text = String::from_utf8_lossy(payload);
            let canonical = decode_canonical_request(payload, &limits())
                .unwrap_or_else(|| panic!("{text}: not taken by the canonical reader"));
            assert_eq!(
                Some(canonical.clone()),
                decode_plain_request(payload, &limits())
            );
            assert_eq!(RequestPayload::Single(canonical), request, "{text}");
        }
    }
    let too_long_key = format!(
        r#"{{"jsonkv":"1.0","operate":"get","key":"{}","id":1}}"#,
        "k".repeat(DEFAULT_MAX_KEY + 1)
    );
    let too_long_value = format!(
        r#"{{"jsonkv":"1.0","operate":"put","key":"k","value":"{}"}}"#,
        "v".repeat(DEFAULT_MAX_VALUE + 1)
    );
    for json in [
        r#"{"jsonkv":"1.0","operate":"get","key":"","id":1}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"é","id":1}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"a\"b","id":1}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":01}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":-}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":1.5}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":"x"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":1} "#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":1}}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","value":"v"}"#,
        r#"{"jsonkv":"1.0","operate":"put","key":"k"}"#,
        r#"{"jsonkv":"1.0","operate":"GET","key":"k"}"#,
        r#"{"jsonkv":"1.0","operate":"delete","key":"k"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k""#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k"#,
        &too_long_key,
        &too_long_value,
    ] {
        assert_eq!(
            decode_canonical_request(json.as_bytes(), &limits()),
            None,
            "{json}: taken by the canonical reader"
        );
        fuzz_server(json.as_bytes());
    }
    let none_deep = Limits {
        max_depth: 0,
        ..limits()
    };
    let get = br#"{"jsonkv":"1.0","operate":"get","key":"k"}"#;
    assert_eq!(decode_canonical_request(get, &none_deep), None);
}

#[test]
fn got_reply_is_the_general_encoders_bytes() {
    let long_id = format!("\"{}\"", "i".repeat(40));
    let values = [
        "",
        "v",
        "0123456789abcdef0123",
        "é€😀 text",
        "~\u{7f} del",
        "x".repeat(100).leak(),
    ];
    let ids = ["1", "-12", "null", "\"a b\"", "1.5e3", long_id.as_str()];
    for value in values {
        for id_json in ids {
            let plain = PlainText::new(bytes::Bytes::from(value.to_owned())).expect(value);
            let got = ServerReply::Got {
                value: plain,
                id: id(id_json),
            };
            let mut out = BytesMut::new();
            SERVER.encode_response(&got, &mut out);
            let general =
                ResponsePayload::Single(Response::success(Operate::Get, value.into(), id(id_json)));
            assert_eq!(
                out.to_vec(),
                encode_response(&general),
                "{value:?} {id_json}"
            );
            assert_eq!(got.to_payload(), general);
        }
    }
    let mut out = BytesMut::new();
    let got = ServerReply::Got {
        value: PlainText::new(bytes::Bytes::from_static(b"abc")).unwrap(),
        id: Id::number(7),
    };
    SERVER.encode_response(&got, &mut out);
    assert_eq!(
        out.to_vec(),
        frame(
            r#"{"jsonkv":"1.0","result":{"value":"abc","code":"0","message":"get operation success"},"id":7}"#
        )
    );
}

#[test]
fn plain_text_refuses_what_needs_escaping_or_is_not_utf8() {
    let bad: [&[u8]; 5] = [b"\"", b"\\", b"\n", b"\x1f", b"\xff"];
    // Every position, in inputs shorter than a word and longer than several.
    for len in [1usize, 5, 8, 9, 17, 40] {
        for at in 0..len {
            for b in bad {
                let mut value = vec![b'a'; len];
                value.splice(at..at + 1, b.iter().copied());
                let bytes = bytes::Bytes::from(value.clone());
                assert_eq!(PlainText::new(bytes.clone()), Err(bytes), "{value:?}");
            }
        }
    }
    // A UTF-8 sequence cut short, or a lone continuation byte.
    for value in [&b"ab\xc3"[..], b"\xa9abcdefghij", b"abcdefgh\xe2\x82"] {
        assert!(PlainText::new(bytes::Bytes::copy_from_slice(value)).is_err());
    }
    assert!(PlainText::new(bytes::Bytes::from("é".repeat(9))).is_ok());
}

// --- The server's fast get (request::decode_fast_get) -----------------------------------------

/// What the client codec writes for a get of a plain ASCII key is read by the fast path, as the
/// same request the general reader makes of it; a near miss is left to the general reader.
#[test]
fn fast_get_takes_the_client_s_get_and_nothing_else() {
    let client = JsonkvClientCodec::default();
    for key in [
        "k",
        "user:0000000001",
        &"x".repeat(GET_KEY_INLINE),
        "a b~\u{7f}",
    ] {
        for id in [
            Id::null(),
            Id::number(1),
            Id::number(u64::MAX),
            id("-3"),
            id("0"),
        ] {
            let request = RequestPayload::Single(cmd(Command::get(key), id.as_json()));
            let mut out = BytesMut::new();
            client.encode_request(&request, &mut out);
            let Ok(Decoded::Frame(read, _)) = SERVER.decode_request(&out) else {
                panic!("{key:?}: no frame");
            };
            assert!(
                matches!(read, ServerRequest::Get { .. }),
                "{key:?} {id:?}: not fast"
            );
            assert_eq!(read.into_payload(), request);
        }
    }
    let misses = [
        r#"{"jsonkv":"1.0","operate":"get","key":""}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"é"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"a\"b"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"a\u0062"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":01}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":1.0}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":"1"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":-}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":1} "#,
        r#" {"jsonkv":"1.0","operate":"get","key":"k"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","key":"j"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":1,"id":2}"#,
        r#"{"jsonkv":"1.0","operate":"GET","key":"k"}"#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k""#,
        r#"{"jsonkv":"1.0","operate":"get","key":"k","id":1"#,
    ];
    let long = format!(
        r#"{{"jsonkv":"1.0","operate":"get","key":"{}"}}"#,
        "x".repeat(GET_KEY_INLINE + 1)
    );
    for json in misses.iter().copied().chain([long.as_str()]) {
        let read = decode_server_request(json.as_bytes(), &limits());
        assert!(matches!(read, ServerRequest::Payload(_)), "{json}: fast");
        assert_eq!(read.into_payload(), payload(json), "{json}");
    }
    // Limits: a key over max_key, a document deeper than max_depth.
    let get = br#"{"jsonkv":"1.0","operate":"get","key":"abc"}"#;
    for limits in [
        Limits {
            max_key: 2,
            ..limits()
        },
        Limits {
            max_depth: 0,
            ..limits()
        },
    ] {
        assert_eq!(decode_fast_get(get, &limits), None);
        assert_eq!(
            decode_server_request(get, &limits).into_payload(),
            decode_request_payload_parsed(get, &limits)
        );
    }
}

/// A get as the client writes it, with a key and an id from sets that include what the fast
/// path must refuse (quotes, escapes, non-ASCII, control characters, leading zeros, fractions).
fn fast_get_candidate() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        "[a-z0-9:]{1,20}",
        "[ -~]{0,50}",
        "[a-z\"\\\\é\u{1}\u{7f}]{0,8}",
        Just("x".repeat(GET_KEY_INLINE)),
        Just("x".repeat(GET_KEY_INLINE + 1)),
    ];
    let id = prop_oneof![
        Just(String::new()),
        "-?[0-9]{1,25}".prop_map(|n| format!(",\"id\":{n}")),
        "[-0-9.eE\"a ]{0,6}".prop_map(|n| format!(",\"id\":{n}")),
    ];
    (key, id).prop_map(|(key, id)| {
        format!(r#"{{"jsonkv":"1.0","operate":"get","key":"{key}"{id}}}"#).into_bytes()
    })
}

proptest! {
    /// The server reads every payload as the general readers do, whether the fast path takes
    /// it or not: generated gets, and the same with one byte changed, inserted or removed,
    /// or cut short.
    #[test]
    fn fast_get_reads_what_the_general_reader_reads(
        mut text in fast_get_candidate(),
        edit in 0usize..4,
        at in any::<prop::sample::Index>(),
        byte in prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), Just(b'}'), Just(b' ')],
        max_key in prop_oneof![Just(DEFAULT_MAX_KEY), 1usize..20],
    ) {
        let at = at.index(text.len() + 1);
        match edit {
            1 => text.insert(at, byte),
            2 if at < text.len() => text[at] = byte,
            3 if at < text.len() => {
                text.remove(at);
            }
            _ => {}
        }
        let limits = Limits { max_key, ..limits() };
        let server = decode_server_request(&text, &limits);
        prop_assert_eq!(server.clone().into_payload(), decode_request_payload(&text, &limits));
        prop_assert_eq!(server.into_payload(), decode_request_payload_parsed(&text, &limits));
    }
}

/// The value check finds a byte to escape or a non-ASCII byte at every position of inputs
/// around the vector width, and passes plain ASCII, as the byte-wise rule says.
#[test]
fn escape_or_non_ascii_check_finds_every_stop() {
    let stops = |s: &[u8]| {
        s.iter()
            .any(|&b| !(0x20..0x80).contains(&b) || b == b'"' || b == b'\\')
    };
    for len in 0..70 {
        let plain: Vec<u8> = (0..len).map(|i| b' ' + (i % 95) as u8).collect();
        let plain: Vec<u8> = plain
            .into_iter()
            .map(|b| if b == b'"' || b == b'\\' { b'x' } else { b })
            .collect();
        assert!(!needs_escape_or_non_ascii(&plain), "{len}");
        for at in 0..len {
            for b in [0u8, 0x1f, b'"', b'\\', 0x80, 0xff, 0x7f, b' ', b'~'] {
                let mut s = plain.clone();
                s[at] = b;
                assert_eq!(needs_escape_or_non_ascii(&s), stops(&s), "{len} {at} {b}");
            }
        }
    }
}
