//! Fuzz bodies.

use super::*;

/// Fuzz body for everything a server decodes: jsonkv frames, datagrams and payloads, JSON-RPC
/// bodies and agent payloads. Every decoded request is re-encoded by the client side and must
/// decode to the same request.
pub fn fuzz_server(data: &[u8]) {
    let server = JsonkvServerCodec::default();
    let client = JsonkvClientCodec::default();
    let limits = server.limits;
    same_request_both_ways(data, &limits);
    let mut rest = data;
    while let Ok(Decoded::Frame(request, used)) = server.decode_request(rest) {
        if let Ok(Decoded::Frame(payload, _)) = split_frame(rest, limits.max_frame) {
            same_request_both_ways(payload, &limits);
        }
        assert!(used >= HEADER_LEN && used <= rest.len());
        let request = request.into_payload();
        let mut out = BytesMut::new();
        client.encode_request(&request, &mut out);
        // The canonical encoding can be longer than the input (`1` becomes `{}`).
        if out.len() <= limits.max_frame {
            assert_eq!(
                server
                    .decode_request(&out)
                    .map(|decoded| decoded.map(ServerRequest::into_payload)),
                Ok(Decoded::Frame(request, out.len()))
            );
        }
        rest = &rest[used..];
    }
    if let Some(request) = server.decode_datagram(data) {
        let mut out = BytesMut::new();
        client.encode_request(&request, &mut out);
        assert_eq!(server.decode_datagram(&out), Some(request));
    }
    let request = decode_request_payload(data, &limits);
    let mut out = BytesMut::new();
    encode_request_payload(&mut out, &request, &limits);
    assert_eq!(decode_request_payload(&out, &limits), request);

    let call = decode_rpc_request(data, &limits);
    let body = encode_rpc_request(&call, &limits);
    assert_eq!(decode_rpc_request(&body, &limits), call);

    let agent = decode_agent_request(data, DEFAULT_MAX_DEPTH);
    let mut out = BytesMut::new();
    encode_agent_request(&mut out, &agent);
    assert_eq!(decode_agent_request(&out, DEFAULT_MAX_DEPTH), agent);
}

/// Fuzz body for everything a client decodes: jsonkv frames and datagrams, JSON-RPC bodies
/// and agent payloads, each checked to round-trip through the server-side encoder.
pub fn fuzz_client(data: &[u8]) {
    let server = JsonkvServerCodec::default();
    let client = JsonkvClientCodec::default();
    same_response_both_ways(data);
    let mut rest = data;
    while let Ok(Decoded::Frame(response, used)) = client.decode_response(rest) {
        if let Ok(Decoded::Frame(payload, _)) = split_frame(rest, client.limits.max_frame) {
            same_response_both_ways(payload);
        }
        assert!(used >= HEADER_LEN && used <= rest.len());
        let mut out = BytesMut::new();
        server.encode_response(&response.clone().into(), &mut out);
        same_bytes_as_got(&response, &out);
        assert_eq!(
            client.decode_response(&out),
            Ok(Decoded::Frame(response, out.len()))
        );
        rest = &rest[used..];
    }
    if let Some(response) = client.decode_datagram(data) {
        let mut out = BytesMut::new();
        server.encode_response(&response.clone().into(), &mut out);
        assert_eq!(client.decode_datagram(&out), Some(response));
    }
    if let Some(response) = decode_rpc_response(data, DEFAULT_MAX_DEPTH) {
        let body = encode_rpc_response(&response);
        assert_eq!(
            decode_rpc_response(&body, DEFAULT_MAX_DEPTH),
            Some(response)
        );
    }
    if let Some(response) = decode_agent_response(data, DEFAULT_MAX_DEPTH) {
        let mut out = BytesMut::new();
        encode_agent_response(&mut out, &response);
        assert_eq!(
            decode_agent_response(&out, DEFAULT_MAX_DEPTH),
            Some(response)
        );
    }
}

/// A request the plain reader takes decodes the same through the JSON parser, one the
/// canonical reader takes the same through the plain reader, and one the fast get takes the
/// same through the JSON parser; the server's reading is always the general reader's.
fn same_request_both_ways(payload: &[u8], limits: &Limits) {
    assert_eq!(
        decode_server_request(payload, limits).into_payload(),
        decode_request_payload(payload, limits)
    );
    if let Some((key, id)) = decode_fast_get(payload, limits) {
        let get = ServerRequest::Get { key, id }.into_payload();
        assert_eq!(get, decode_request_payload_parsed(payload, limits));
    }
    if let Some(item) = decode_canonical_request(payload, limits) {
        assert_eq!(Some(item), decode_plain_request(payload, limits));
    }
    if let Some(item) = decode_plain_request(payload, limits) {
        assert_eq!(
            RequestPayload::Single(item),
            decode_request_payload_parsed(payload, limits)
        );
    }
}

/// A get's success whose value is plain text is written by [`ServerReply::Got`] to exactly the
/// bytes `framed` holds, which the general encoder wrote for it.
fn same_bytes_as_got(response: &ResponsePayload, framed: &[u8]) {
    let ResponsePayload::Single(r) = response else {
        return;
    };
    let success = Response::success(Operate::Get, r.value.clone(), r.id.clone());
    if *r != success {
        return;
    }
    let Ok(value) = PlainText::new(bytes::Bytes::from(r.value.clone().into_bytes())) else {
        return;
    };
    let got = ServerReply::Got {
        value,
        id: r.id.clone(),
    };
    let mut out = BytesMut::new();
    JsonkvServerCodec::default().encode_response(&got, &mut out);
    assert_eq!(&out[..], framed);
    assert_eq!(got.to_payload(), *response);
}

/// A response the plain reader takes decodes the same through the JSON parser.
fn same_response_both_ways(payload: &[u8]) {
    if let Some(response) = decode_plain_response(payload, DEFAULT_MAX_DEPTH) {
        assert_eq!(
            Some(ResponsePayload::Single(response)),
            decode_response_payload_parsed(payload, DEFAULT_MAX_DEPTH)
        );
    }
}
