//! jsonkv end to end: the real binary over TCP, UDP, JSON-RPC and the jsonagent, with the
//! project's clients, and raw sockets where the exact bytes are the point (the spec's vectors,
//! malformed input, HTTP errors).

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{Options, Server};
use polykv_client::jsonkv::{AgentClient, JsonRpcClient, JsonkvClient, JsonkvUdpClient};
use polykv_client::nmdb::{Mode, NmdbClient};
use polykv_client::ClientError;
use polykv_protocols::jsonkv::{
    encode_frame, Command, Id, Item, RequestPayload, ResponsePayload, RpcOutcome, ServerEntry,
    ServerProtocol,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const T: Duration = Duration::from_secs(10);

fn args(list: &[&str]) -> Options {
    Options {
        args: list.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

fn frame(json: &str) -> Vec<u8> {
    frame_bytes(json.as_bytes())
}

fn frame_bytes(payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(&mut out, payload);
    out.to_vec()
}

/// A header announcing `length` (version, type and reserve as some clients fill them).
fn header(length: u32) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 100, 0, 0, 0, 7];
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 9]);
    out
}

/// Reads one reply frame and returns its JSON text.
async fn reply(stream: &mut TcpStream) -> String {
    let mut head = [0u8; 16];
    tokio::time::timeout(T, stream.read_exact(&mut head))
        .await
        .expect("a reply in time")
        .expect("a reply header");
    assert_eq!(&head[..8], &[0; 8], "version and type are written as 0");
    assert_eq!(&head[12..], &[0; 4], "reserve is written as 0");
    let length = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize;
    let mut body = vec![0u8; length - 16];
    tokio::time::timeout(T, stream.read_exact(&mut body))
        .await
        .expect("a reply in time")
        .expect("a reply body");
    String::from_utf8(body).expect("UTF-8 reply")
}

async fn raw_call(stream: &mut TcpStream, json: &str) -> String {
    stream.write_all(&frame(json)).await.unwrap();
    reply(stream).await
}

/// Whether the server closes `stream` (EOF, or a reset) within the test timeout.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(T, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn server_code(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Server(message)) => message.split(' ').next().unwrap_or("").to_string(),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// jsonkv.md §11, vectors 1–6: exact request and reply JSON.
const VECTORS: &[(&str, &str)] = &[
    (
        r#"{"jsonkv":"1.0","operate":"put","key":"1","value":"999","id":"1"}"#,
        r#"{"jsonkv":"1.0","result":{"value":"","code":"0","message":"put operation success"},"id":"1"}"#,
    ),
    (
        r#"{"jsonkv":"1.0","operate":"get","key":"1","value":"","id":"2"}"#,
        r#"{"jsonkv":"1.0","result":{"value":"999","code":"0","message":"get operation success"},"id":"2"}"#,
    ),
    (
        r#"{"jsonkv":"1.0","operate":"GET","key":"2","id":3}"#,
        r#"{"jsonkv":"1.0","result":{"value":"","code":"1000","message":"key does not exist."},"id":3}"#,
    ),
    (
        r#"[{"jsonkv":"1.0","operate":"delete","key":"1","id":"4"},{"jsonkv":"2.0","operate":"get","key":"1","id":"5"}]"#,
        r#"[{"jsonkv":"1.0","result":{"value":"","code":"0","message":"delete operation success"},"id":"4"},{"jsonkv":"1.0","result":{"value":"","code":"800","message":"unsupported protocol version"},"id":"5"}]"#,
    ),
    (
        r#"{"jsonkv":"1.0","operate":"fetch","key":"1"}"#,
        r#"{"jsonkv":"1.0","result":{"value":"","code":"900","message":"invalid operate"},"id":null}"#,
    ),
    (
        "hello",
        r#"{"jsonkv":"1.0","result":{"value":"","code":"1025","message":"malformed request"},"id":null}"#,
    ),
];

#[tokio::test]
async fn tcp_spec_vectors_pipelining_and_framing() {
    let server = Server::start();
    let mut s = TcpStream::connect(server.jsonkv_addr()).await.unwrap();
    // The seed's verified frame, byte for byte, and the reply length of vector 1 (108 = 0x6c).
    let seed = frame(VECTORS[0].0);
    assert_eq!(
        &seed[..16],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x51, 0, 0, 0, 0]
    );
    for (request, expected) in VECTORS {
        assert_eq!(raw_call(&mut s, request).await, *expected, "{request}");
    }
    // All six frames in one write: six replies, in order (R7).
    let all: Vec<u8> = VECTORS.iter().flat_map(|(r, _)| frame(r)).collect();
    s.write_all(&all).await.unwrap();
    for (request, expected) in VECTORS {
        assert_eq!(reply(&mut s).await, *expected, "pipelined {request}");
    }
    // The seed's put sent a byte at a time, under a header whose other fields are not 0.
    let mut bytes = header(16 + VECTORS[0].0.len() as u32);
    bytes.extend_from_slice(VECTORS[0].0.as_bytes());
    for b in bytes {
        s.write_all(&[b]).await.unwrap();
    }
    assert_eq!(reply(&mut s).await, VECTORS[0].1);
    // Ids of any type are echoed, compacted.
    assert_eq!(
        raw_call(
            &mut s,
            r#"{"jsonkv":"1.0","operate":"get","key":"1","id":[1, 2]}"#
        )
        .await,
        r#"{"jsonkv":"1.0","result":{"value":"999","code":"0","message":"get operation success"},"id":[1,2]}"#
    );
    // Vector 7: a length under 16 closes the connection.
    s.write_all(&header(15)).await.unwrap();
    assert!(closed_by_server(&mut s).await);
}

#[tokio::test]
async fn tcp_operations_and_every_error_code() {
    // nmdb shares the keyspace so that a value jsonkv cannot return can be stored.
    let server = Server::start_with(args(&["--nmdb-keyspace", "jsonkv"]));
    let mut c = JsonkvClient::connect(&server.jsonkv_addr(), T)
        .await
        .unwrap();
    c.put("k", "v").await.unwrap();
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some("v"));
    c.put("k", "replaced").await.unwrap();
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some("replaced"));
    assert!(c.delete("k").await.unwrap());
    assert!(!c.delete("k").await.unwrap(), "1000 for a missing key");
    assert_eq!(c.get("k").await.unwrap(), None);
    // Non-ASCII and characters JSON must escape survive the round trip.
    let value = "значение ✓ \"quoted\" \\ \n\t\u{1}";
    c.put("ключ", value).await.unwrap();
    assert_eq!(c.get("ключ").await.unwrap().as_deref(), Some(value));
    c.put("empty", "").await.unwrap();
    assert_eq!(c.get("empty").await.unwrap().as_deref(), Some(""));

    // Limits: 1 024-byte keys and 65 536-byte values are the largest accepted.
    let long_key = "k".repeat(1024);
    c.put(&long_key, &"v".repeat(65_536)).await.unwrap();
    assert_eq!(
        c.get(&long_key).await.unwrap().map(|v| v.len()),
        Some(65_536)
    );
    assert_eq!(server_code(c.put(&"k".repeat(1025), "v").await), "1002");
    assert_eq!(server_code(c.get("").await), "1002");
    assert_eq!(server_code(c.put("k", &"v".repeat(65_537)).await), "1001");

    // Each row of §3.3 and the validation order of §3.4, over the raw socket.
    let mut s = TcpStream::connect(server.jsonkv_addr()).await.unwrap();
    let code_of = |text: &str| -> (String, String) {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        (
            v["result"]["code"].as_str().unwrap().to_string(),
            v["id"].to_string(),
        )
    };
    for (request, code, id) in [
        (
            r#"{"jsonkv":"2.0","operate":"get","key":"k","id":1}"#,
            "800",
            "1",
        ),
        (
            r#"{"jsonkv":1.0,"operate":"get","key":"k","id":1}"#,
            "800",
            "1",
        ),
        (r#"{"operate":"get","key":"k","id":2}"#, "1025", "2"),
        (r#"{"jsonkv":"1.0","operate":"fetch","id":3}"#, "900", "3"),
        (
            r#"{"jsonkv":"1.0","operate":7,"key":"k","id":4}"#,
            "1025",
            "4",
        ),
        (
            r#"{"jsonkv":"1.0","operate":"get","key":5,"id":5}"#,
            "1002",
            "5",
        ),
        (r#"{"jsonkv":"1.0","operate":"Delete","id":6}"#, "1002", "6"),
        (
            r#"{"jsonkv":"1.0","operate":"put","key":"k","id":7}"#,
            "1025",
            "7",
        ),
        (
            r#"{"jsonkv":"1.0","operate":"put","key":"k","value":1,"id":8}"#,
            "1025",
            "8",
        ),
        (
            r#"{"jsonkv":"1.0","operate":"get","key":"nope","id":{"a": [1, 2]}}"#,
            "1000",
            r#"{"a":[1,2]}"#,
        ),
        ("[]", "1025", "null"),
        ("42", "1025", "null"),
        (r#"{"jsonkv":"1.0","#, "1025", "null"),
    ] {
        assert_eq!(
            code_of(&raw_call(&mut s, request).await),
            (code.to_string(), id.to_string()),
            "{request}"
        );
    }
    // Ids keep their textual form.
    let text = raw_call(
        &mut s,
        r#"{"jsonkv":"1.0","operate":"get","key":"nope","id":1.0}"#,
    )
    .await;
    assert!(text.ends_with(r#""id":1.0}"#), "{text}");
    // Not UTF-8, and nesting deeper than 64: 1025 with id null; the connection stays.
    s.write_all(&frame_bytes(b"{\"jsonkv\":\"1.0\",\"key\":\"\xff\"}"))
        .await
        .unwrap();
    assert_eq!(code_of(&reply(&mut s).await).0, "1025");
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    assert_eq!(code_of(&raw_call(&mut s, &deep).await).0, "1025");
    // A batch answers each element on its own, in order; a non-object element is 1025.
    let text = raw_call(&mut s, r#"[1,{"jsonkv":"1.0","operate":"put","key":"b","value":"x","id":"p"},{"jsonkv":"1.0","operate":"get","key":"b","id":"g"}]"#).await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let codes: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["result"]["code"].as_str().unwrap(), r["id"].clone()))
        .collect();
    assert_eq!(
        codes,
        [
            ("1025", serde_json::Value::Null),
            ("0", "p".into()),
            ("0", "g".into())
        ]
    );
    assert_eq!(v[2]["result"]["value"], "x");

    // A stored value that is not UTF-8 (written over nmdb) is 1024.
    let mut n = NmdbClient::connect_tcp(&server.nmdb_addr(), T)
        .await
        .unwrap();
    n.set(b"bin", &[0xff, 0xfe], Mode::Sync).await.unwrap();
    let text = raw_call(
        &mut s,
        r#"{"jsonkv":"1.0","operate":"get","key":"bin","id":1}"#,
    )
    .await;
    assert_eq!(
        text,
        r#"{"jsonkv":"1.0","result":{"value":"","code":"1024","message":"value is not valid UTF-8"},"id":1}"#
    );
    // And jsonkv writes are visible to nmdb, as the same bytes.
    c.put("shared", "from jsonkv").await.unwrap();
    assert_eq!(
        n.get(b"shared", Mode::Normal)
            .await
            .unwrap()
            .unwrap()
            .0
            .as_ref(),
        b"from jsonkv"
    );
}

#[tokio::test]
async fn udp_operations_drops_and_oversized_replies() {
    let server = Server::start();
    let mut c = JsonkvUdpClient::connect(&server.jsonkv_udp_addr(), Duration::from_millis(500), 20)
        .await
        .unwrap();
    c.put("u", "dp").await.unwrap();
    assert_eq!(c.get("u").await.unwrap().as_deref(), Some("dp"));
    assert!(c.delete("u").await.unwrap());
    assert!(!c.delete("u").await.unwrap());
    assert_eq!(c.get("u").await.unwrap(), None);
    assert_eq!(server_code(c.get("").await), "1002");

    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server.jsonkv_udp_addr()).await.unwrap();
    let mut buf = vec![0u8; 70_000];
    let mut receive = async |socket: &UdpSocket| -> String {
        let n = tokio::time::timeout(T, socket.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize,
            n,
            "the header's length is the datagram size"
        );
        String::from_utf8(buf[16..n].to_vec()).unwrap()
    };
    // Vector 8: a datagram of 81 bytes whose header says 80 is dropped, as is one under 16
    // bytes; the next good datagram is the first to be answered.
    let mut bad = frame(VECTORS[0].0);
    bad[11] = 80;
    socket.send(&bad).await.unwrap();
    socket
        .send(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10])
        .await
        .unwrap();
    socket.send(&frame(VECTORS[1].0)).await.unwrap();
    assert_eq!(
        receive(&socket).await,
        r#"{"jsonkv":"1.0","result":{"value":"","code":"1000","message":"key does not exist."},"id":"2"}"#
    );
    // Malformed JSON is answered (1025), not dropped.
    socket.send(&frame("hello")).await.unwrap();
    assert_eq!(receive(&socket).await, VECTORS[5].1);
    // A reply over 65 507 bytes is replaced by the single 1024 object of §2.2.
    c.put("big", &"x".repeat(60_000)).await.unwrap();
    socket
        .send(&frame(r#"[{"jsonkv":"1.0","operate":"get","key":"big"},{"jsonkv":"1.0","operate":"get","key":"big"}]"#))
        .await
        .unwrap();
    assert_eq!(
        receive(&socket).await,
        r#"{"jsonkv":"1.0","result":{"value":"","code":"1024","message":"response too large for UDP"},"id":null}"#
    );
    assert_eq!(c.get("big").await.unwrap().map(|v| v.len()), Some(60_000));
}

async fn post_raw(client: &mut JsonRpcClient, body: &str) -> (u16, String) {
    let response = client.post(body.as_bytes()).await.unwrap();
    (response.status, String::from_utf8(response.body).unwrap())
}

#[tokio::test]
async fn json_rpc_operations_vectors_and_errors() {
    let server = Server::start();
    let mut c = JsonRpcClient::new(&server.jsonkv_rpc_addr(), T);
    // Vectors 9–12.
    for (request, expected) in [
        (
            r#"{"jsonrpc":"2.0","method":"Put","params":["tomato","999"],"id":1}"#,
            r#"{"jsonrpc":"2.0","result":{"code":0,"message":"put operation success"},"id":1}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"Get","params":["tomato"],"id":2}"#,
            r#"{"jsonrpc":"2.0","result":{"code":0,"message":"get operation success","value":"999"},"id":2}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"Get","params":["nope"],"id":3}"#,
            r#"{"jsonrpc":"2.0","result":{"code":1000,"message":"key does not exist."},"id":3}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"get","params":["tomato"],"id":4}"#,
            r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":4}"#,
        ),
    ] {
        assert_eq!(post_raw(&mut c, request).await, (200, expected.to_string()));
    }
    c.put("r", "pc").await.unwrap();
    assert_eq!(c.get("r").await.unwrap().as_deref(), Some("pc"));
    assert!(c.delete("r").await.unwrap());
    assert!(!c.delete("r").await.unwrap());
    assert_eq!(c.get("r").await.unwrap(), None);
    // Key-value errors are results with numeric codes.
    assert_eq!(server_code(c.get("").await), "1002");
    assert_eq!(server_code(c.put("k", &"v".repeat(65_537)).await), "1001");
    // Protocol errors are JSON-RPC errors.
    let error_code = |text: &str| -> (i64, String) {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        (v["error"]["code"].as_i64().unwrap(), v["id"].to_string())
    };
    for (body, code, id) in [
        ("{", -32700, "null"),
        ("[]", -32600, "null"),
        (
            r#"{"jsonrpc":"1.0","method":"Get","params":["k"],"id":5}"#,
            -32600,
            "5",
        ),
        (
            r#"{"jsonrpc":"2.0","method":7,"params":["k"],"id":6}"#,
            -32600,
            "6",
        ),
        (
            r#"{"jsonrpc":"2.0","method":"Get","params":{"key":"k"},"id":7}"#,
            -32602,
            "7",
        ),
        (
            r#"{"jsonrpc":"2.0","method":"Get","params":["a","b"],"id":8}"#,
            -32602,
            "8",
        ),
        (
            r#"{"jsonrpc":"2.0","method":"Put","params":["a"],"id":"nine"}"#,
            -32602,
            r#""nine""#,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"Put","params":["a",1],"id":10}"#,
            -32602,
            "10",
        ),
    ] {
        let (status, text) = post_raw(&mut c, body).await;
        assert_eq!(
            (status, error_code(&text)),
            (200, (code, id.to_string())),
            "{body}"
        );
    }
    // Notifications are executed but not answered: 204 when nothing needs an answer.
    assert_eq!(
        post_raw(
            &mut c,
            r#"{"jsonrpc":"2.0","method":"Put","params":["n","1"]}"#
        )
        .await,
        (204, String::new())
    );
    assert_eq!(c.get("n").await.unwrap().as_deref(), Some("1"));
    let (status, text) = post_raw(
        &mut c,
        r#"[{"jsonrpc":"2.0","method":"Put","params":["n","2"]},{"jsonrpc":"2.0","method":"Get","params":["n"],"id":"g"},{"jsonrpc":"2.0","method":"Nope","params":[]}]"#,
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (
            200,
            r#"[{"jsonrpc":"2.0","result":{"code":0,"message":"get operation success","value":"2"},"id":"g"}]"#
        )
    );
}

/// Sends raw bytes to `addr` and reads until the server closes the connection.
async fn http_until_close(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn json_rpc_http_rules_and_limits() {
    let server = Server::start_with(args(&[
        "--jsonkv-max-frame",
        "4096",
        "--jsonkv-max-batch-response",
        "1000",
    ]));
    let addr = server.jsonkv_rpc_addr();
    let body = r#"{"jsonrpc":"2.0","method":"Get","params":["k"],"id":1}"#;
    // Other methods: 405 with Allow.
    let text = http_until_close(
        &addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.to_ascii_lowercase().contains("allow: post"), "{text}");
    // Any path; HTTP/1.0; JSON content type.
    let text = http_until_close(
        &addr,
        format!(
            "POST /any/path HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{text}"
    );
    assert!(text.ends_with(r#""id":1}"#), "{text}");
    // A chunked body.
    let text = http_until_close(
        &addr,
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            &body[..16],
            body.len() - 16,
            &body[16..]
        )
        .as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("key does not exist."), "{text}");
    // A body over the max frame: 413, then close (announced, or found while reading chunks).
    let text = http_until_close(
        &addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4097\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let chunk = "x".repeat(3000);
    let text = http_until_close(
        &addr,
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nbb8\r\n{chunk}\r\nbb8\r\n{chunk}\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // Unparseable HTTP: 400, then close.
    let text = http_until_close(&addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // Keep-alive: many calls on one connection, and the server still serves everyone.
    let mut c = JsonRpcClient::new(&addr, T);
    for i in 0..20 {
        c.put(&format!("k{i}"), "v").await.unwrap();
    }
    assert_eq!(c.get("k19").await.unwrap().as_deref(), Some("v"));
    // One request returns at most max_batch_response value bytes; the get that would pass the
    // bound answers 1024 and the rest of the batch still runs.
    c.put("600", &"x".repeat(600)).await.unwrap();
    let codes: Vec<_> = c
        .batch(&[
            Command::get("600"),
            Command::get("600"),
            Command::put("after", "ok"),
        ])
        .await
        .unwrap()
        .into_iter()
        .map(|r| match r.outcome {
            RpcOutcome::Result { code, message, .. } => (code, message),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            (0, "get operation success".to_string()),
            (1024, "batch response too large".to_string()),
            (0, "put operation success".to_string())
        ]
    );
    let mut tcp = JsonkvClient::connect(&server.jsonkv_addr(), T)
        .await
        .unwrap();
    let codes: Vec<_> = tcp
        .batch(&[Command::get("600"), Command::get("600")])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, ["0", "1024"]);
    assert_eq!(tcp.get("after").await.unwrap().as_deref(), Some("ok"));
}

#[tokio::test]
async fn batches_of_a_thousand() {
    let server = Server::start();
    let mut tcp = JsonkvClient::connect(&server.jsonkv_addr(), T)
        .await
        .unwrap();
    let puts: Vec<Command> = (0..1000)
        .map(|i| Command::put(format!("t{i}"), format!("v{i}")))
        .collect();
    let responses = tcp.batch(&puts).await.unwrap();
    assert_eq!(responses.len(), 1000);
    assert!(responses.iter().all(|r| r.is_success()));
    let gets: Vec<Command> = (0..1000).map(|i| Command::get(format!("t{i}"))).collect();
    let responses = tcp.batch(&gets).await.unwrap();
    for (i, r) in responses.iter().enumerate() {
        assert_eq!(r.value, format!("v{i}"), "in request order");
    }
    // Elements run in order: a get after a delete in the same batch misses.
    let mixed = [
        Command::delete("t0"),
        Command::get("t0"),
        Command::put("t0", "again"),
        Command::get("t0"),
    ];
    let codes: Vec<_> = tcp
        .batch(&mixed)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.code, r.value))
        .collect();
    assert_eq!(
        codes,
        [
            ("0".into(), String::new()),
            ("1000".into(), String::new()),
            ("0".into(), String::new()),
            ("0".into(), "again".into())
        ]
    );

    let mut rpc = JsonRpcClient::new(&server.jsonkv_rpc_addr(), T);
    let puts: Vec<Command> = (0..1000)
        .map(|i| Command::put(format!("r{i}"), format!("w{i}")))
        .collect();
    let responses = rpc.batch(&puts).await.unwrap();
    assert_eq!(responses.len(), 1000);
    let gets: Vec<Command> = (0..1000).map(|i| Command::get(format!("r{i}"))).collect();
    for (i, r) in rpc.batch(&gets).await.unwrap().into_iter().enumerate() {
        match r.outcome {
            RpcOutcome::Result { code: 0, value, .. } => assert_eq!(value, Some(format!("w{i}"))),
            other => panic!("{other:?}"),
        }
    }
    // Over UDP a batch must fit one datagram both ways: 200 gets of the TCP batch's keys.
    let mut udp =
        JsonkvUdpClient::connect(&server.jsonkv_udp_addr(), Duration::from_millis(500), 20)
            .await
            .unwrap();
    let gets: Vec<Command> = (1..201).map(|i| Command::get(format!("t{i}"))).collect();
    for (i, r) in udp.batch(&gets).await.unwrap().into_iter().enumerate() {
        assert_eq!(r.value, format!("v{}", i + 1));
    }
}

#[tokio::test]
async fn malformed_input_does_not_disturb_other_clients() {
    let server = Server::start_with(args(&["--jsonkv-max-frame", "4096"]));
    let mut good = JsonkvClient::connect(&server.jsonkv_addr(), T)
        .await
        .unwrap();
    good.put("alive", "yes").await.unwrap();
    let mut check = async || {
        assert_eq!(good.get("alive").await.unwrap().as_deref(), Some("yes"));
    };
    // Garbage JSON is answered, and the connection goes on.
    let mut s = TcpStream::connect(server.jsonkv_addr()).await.unwrap();
    for garbage in ["{{{", "\"unterminated", "nul", "{\"jsonkv\":\"1.0\"}}"] {
        let text = raw_call(&mut s, garbage).await;
        assert!(text.contains("\"code\":\"1025\""), "{garbage}: {text}");
    }
    let text = raw_call(&mut s, VECTORS[1].0).await;
    assert!(text.contains("\"code\":\"1000\""), "{text}");
    check().await;
    // J1: a length over the max frame closes, before the payload is sent (nothing is allocated).
    s.write_all(&header(4097)).await.unwrap();
    assert!(closed_by_server(&mut s).await);
    // The largest frame allowed is served.
    let mut s = TcpStream::connect(server.jsonkv_addr()).await.unwrap();
    let filler =
        "x".repeat(4096 - 16 - r#"{"jsonkv":"1.0","operate":"put","key":"f","value":""}"#.len());
    let json = format!(r#"{{"jsonkv":"1.0","operate":"put","key":"f","value":"{filler}"}}"#);
    assert_eq!(frame(&json).len(), 4096);
    assert!(raw_call(&mut s, &json).await.contains("\"code\":\"0\""));
    // J5: EOF in the middle of a frame.
    s.write_all(&frame(VECTORS[0].0)[..30]).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(closed_by_server(&mut s).await);
    check().await;
    // Random bytes: whatever the server makes of them, it keeps serving.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.jsonkv_addr()).await.unwrap();
        let bytes: Vec<u8> = (0..300)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = s.write_all(&bytes).await;
        drop(s);
    }
    check().await;
    // The agent answers garbage with 905 and keeps the connection.
    let mut a = TcpStream::connect(server.agent_addr()).await.unwrap();
    assert_eq!(
        raw_call(&mut a, "not json").await,
        r#"{"jsonagent":"1.0","result":{"code":"905","message":"invalid parameters"}}"#
    );
    assert_eq!(
        raw_call(&mut a, r#"{"jsonagent":"1.0","operate":"dance"}"#).await,
        r#"{"jsonagent":"1.0","result":{"code":"900","message":"invalid operate"}}"#
    );
    assert_eq!(
        raw_call(&mut a, r#"{"jsonagent":"2.0","operate":"unregister"}"#).await,
        r#"{"jsonagent":"1.0","result":{"code":"800","message":"unsupported protocol version"}}"#
    );
    for bad in [
        r#"{"jsonagent":"1.0","operate":"register","address":"h"}"#,
        r#"{"jsonagent":"1.0","operate":"register","address":"","tcpport":1}"#,
        r#"{"jsonagent":"1.0","operate":"register","address":"h","tcpport":0}"#,
        r#"{"jsonagent":"1.0","operate":"register","address":"h","tcpport":"65536"}"#,
        r#"{"jsonagent":"1.0","operate":"getserverlist","protocol":"sctp"}"#,
        r#"[{"jsonagent":"1.0","operate":"unregister"}]"#,
    ] {
        assert!(
            raw_call(&mut a, bad).await.contains("\"code\":\"905\""),
            "{bad}"
        );
    }
    a.write_all(&header(15)).await.unwrap();
    assert!(closed_by_server(&mut a).await);
    check().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let server = Server::start_with(args(&[
        "--jsonkv-idle-timeout-secs",
        "1",
        "--jsonkv-async-acks",
        "true",
    ]));
    // A silent connection, and one that leaves a frame half-sent, are closed.
    let mut silent = TcpStream::connect(server.jsonkv_addr()).await.unwrap();
    let mut partial = TcpStream::connect(server.jsonkv_addr()).await.unwrap();
    partial.write_all(&frame(VECTORS[0].0)[..20]).await.unwrap();
    assert!(closed_by_server(&mut silent).await);
    assert!(closed_by_server(&mut partial).await);
    // So is an idle keep-alive HTTP connection.
    let mut http = TcpStream::connect(server.jsonkv_rpc_addr()).await.unwrap();
    let body = r#"{"jsonrpc":"2.0","method":"Put","params":["k","v"],"id":1}"#;
    http.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(closed_by_server(&mut http).await);
    // Async acknowledgements still write.
    let mut c = JsonkvClient::connect(&server.jsonkv_addr(), T)
        .await
        .unwrap();
    assert_eq!(c.get("k").await.unwrap().as_deref(), Some("v"));
}

fn entry(nodeid: u64, address: &str, port: u16) -> ServerEntry {
    ServerEntry {
        nodeid,
        address: address.into(),
        port,
    }
}

#[tokio::test]
async fn agent_vectors_and_registration_lifecycle() {
    let server = Server::start();
    let mut a = TcpStream::connect(server.agent_addr()).await.unwrap();
    // Vectors 13–16; this node is node 1, at its jsonkv TCP port.
    for (request, expected) in [
        (
            r#"{"jsonagent":"1.0","operate":"register","address":"10.0.0.5","tcpport":"15001","rpcport":15003,"udpport":15002}"#.to_string(),
            r#"{"jsonagent":"1.0","result":{"value":"2","code":"0","message":"register success"}}"#.to_string(),
        ),
        (
            r#"{"jsonagent":"1.0","operate":"getserverlist","protocol":"tcp"}"#.to_string(),
            format!(
                r#"{{"jsonagent":"1.0","result":{{"value":[{{"nodeid":1,"address":"127.0.0.1","port":{}}},{{"nodeid":2,"address":"10.0.0.5","port":15001}}],"code":"0","message":"get server list success"}}}}"#,
                server.jsonkv_port
            ),
        ),
        (
            r#"{"jsonagent":"1.0","operate":"unregister"}"#.to_string(),
            r#"{"jsonagent":"1.0","result":{"code":"0","message":"unregister success"}}"#.to_string(),
        ),
        (
            r#"{"jsonagent":"1.0","operate":"unregister"}"#.to_string(),
            r#"{"jsonagent":"1.0","result":{"code":"902","message":"server already removed"}}"#.to_string(),
        ),
    ] {
        assert_eq!(raw_call(&mut a, &request).await, expected, "{request}");
    }

    // The local node is listed for each of its endpoints.
    let mut b = AgentClient::connect(&server.agent_addr(), T).await.unwrap();
    let local = |port| vec![entry(1, "127.0.0.1", port)];
    assert_eq!(
        b.get_server_list(ServerProtocol::Tcp).await.unwrap(),
        local(server.jsonkv_port)
    );
    assert_eq!(
        b.get_server_list(ServerProtocol::Udp).await.unwrap(),
        local(server.jsonkv_udp_port)
    );
    assert_eq!(
        b.get_server_list(ServerProtocol::Rpc).await.unwrap(),
        local(server.jsonkv_rpc_port)
    );
    // Ids are never reused; a second register on one connection is 901 and changes nothing.
    assert_eq!(
        b.register("10.0.0.7", None, Some(9003), None)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        server_code(b.register("10.0.0.8", Some(1), None, None).await),
        "901"
    );
    // The same (address, port) as the local node is listed once, under node 1.
    let mut c = AgentClient::connect(&server.agent_addr(), T).await.unwrap();
    assert_eq!(
        c.register("127.0.0.1", Some(server.jsonkv_port), None, Some(7002))
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        c.get_server_list(ServerProtocol::Tcp).await.unwrap(),
        local(server.jsonkv_port)
    );
    assert_eq!(
        c.get_server_list(ServerProtocol::Udp).await.unwrap(),
        [
            entry(1, "127.0.0.1", server.jsonkv_udp_port),
            entry(4, "127.0.0.1", 7002)
        ]
    );
    assert_eq!(
        c.get_server_list(ServerProtocol::Rpc).await.unwrap(),
        [
            entry(1, "127.0.0.1", server.jsonkv_rpc_port),
            entry(3, "10.0.0.7", 9003)
        ]
    );
    // Closing a connection drops its registration.
    drop(b);
    let mut gone = false;
    for _ in 0..200 {
        if c.get_server_list(ServerProtocol::Rpc).await.unwrap().len() == 1 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "the closed connection's registration is removed");
    assert!(c.unregister().await.unwrap());
    assert!(!c.unregister().await.unwrap());
}

#[tokio::test]
async fn agent_idle_timeout_and_lone_protocols() {
    let server = Server::start_with(args(&[
        "--jsonkv-agent-idle-timeout-secs",
        "2",
        "--jsonkv-udp-enabled",
        "false",
    ]));
    let mut watcher = AgentClient::connect(&server.agent_addr(), T).await.unwrap();
    // Without the UDP endpoint, nobody offers UDP: 903.
    let response = watcher
        .call(&polykv_protocols::jsonkv::AgentRequest::GetServerList {
            protocol: ServerProtocol::Udp,
        })
        .await
        .unwrap();
    assert_eq!(
        (response.code.as_str(), response.message.as_str()),
        ("903", "no server alive")
    );
    // One server registers and falls silent; another keeps its connection alive.
    let mut silent = AgentClient::connect(&server.agent_addr(), T).await.unwrap();
    let silent_id = silent
        .register("10.0.0.1", None, None, Some(1))
        .await
        .unwrap();
    let mut lively = AgentClient::connect(&server.agent_addr(), T).await.unwrap();
    let lively_id = lively
        .register("10.0.0.2", None, None, Some(2))
        .await
        .unwrap();
    let mut listed = Vec::new();
    for _ in 0..200 {
        lively.get_server_list(ServerProtocol::Tcp).await.unwrap();
        listed = watcher.get_server_list(ServerProtocol::Udp).await.unwrap();
        if listed.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        listed,
        [entry(lively_id, "10.0.0.2", 2)],
        "{silent_id} timed out"
    );
    assert!(
        silent.connection().is_closed_by_peer(T).await,
        "the silent connection is closed"
    );
}

#[tokio::test]
async fn writes_cross_transports_and_survive_a_kill() {
    let server = Server::start();
    let mut tcp = JsonkvClient::connect(&server.jsonkv_addr(), T)
        .await
        .unwrap();
    let mut udp =
        JsonkvUdpClient::connect(&server.jsonkv_udp_addr(), Duration::from_millis(500), 20)
            .await
            .unwrap();
    let mut rpc = JsonRpcClient::new(&server.jsonkv_rpc_addr(), T);
    tcp.put("from-tcp", "1").await.unwrap();
    udp.put("from-udp", "2").await.unwrap();
    rpc.put("from-rpc", "3").await.unwrap();
    tcp.batch(&[Command::put("batch-a", "4"), Command::put("batch-b", "5")])
        .await
        .unwrap();
    tcp.put("deleted", "x").await.unwrap();
    assert!(rpc.delete("deleted").await.unwrap());
    // Pipelined puts on one connection (acknowledged together after one group commit).
    let conn = tcp.connection();
    for i in 0..50 {
        conn.queue(&RequestPayload::Single(Item::Command {
            command: Command::put(format!("p{i}"), i.to_string()),
            id: Id::number(i),
        }));
    }
    conn.flush().await.unwrap();
    for i in 0..50 {
        match conn.receive().await.unwrap() {
            ResponsePayload::Single(r) => assert_eq!((&*r.code, r.id), ("0", Id::number(i))),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(udp.get("from-tcp").await.unwrap().as_deref(), Some("1"));
    assert_eq!(rpc.get("from-tcp").await.unwrap().as_deref(), Some("1"));
    assert_eq!(tcp.get("from-udp").await.unwrap().as_deref(), Some("2"));
    assert_eq!(udp.get("from-rpc").await.unwrap().as_deref(), Some("3"));

    // Every acknowledged write was on disk (Sync): a SIGKILL loses none of them.
    let mut server = server;
    server.signal(libc::SIGKILL);
    server.wait_exit(T);
    let server = Server::start_with(Options {
        data_dir: Some(server.data_dir.clone()),
        ..Options::default()
    });
    let mut tcp = JsonkvClient::connect(&server.jsonkv_addr(), T)
        .await
        .unwrap();
    let mut rpc = JsonRpcClient::new(&server.jsonkv_rpc_addr(), T);
    for (key, value) in [
        ("from-tcp", "1"),
        ("from-udp", "2"),
        ("from-rpc", "3"),
        ("batch-a", "4"),
        ("batch-b", "5"),
        ("p49", "49"),
    ] {
        assert_eq!(tcp.get(key).await.unwrap().as_deref(), Some(value), "{key}");
        assert_eq!(rpc.get(key).await.unwrap().as_deref(), Some(value), "{key}");
    }
    assert_eq!(tcp.get("deleted").await.unwrap(), None);
}

#[test]
fn client_verbs_speak_jsonkv() {
    let server = Server::start();
    let addr = server.jsonkv_addr();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--proto", "jsonkv", "--addr", &addr]);
        common::run_cli(&all, &[])
    };
    assert_eq!(cli(&["set", "tomato", "999"]).1.trim(), "OK");
    assert_eq!(cli(&["get", "tomato"]).1.trim(), "999");
    assert_eq!(
        cli(&["get", "tomato", "--json"]).1.trim(),
        r#"{"key":"tomato","value":"999"}"#
    );
    assert_eq!(cli(&["del", "tomato"]).1.trim(), "deleted");
    assert_eq!(cli(&["del", "tomato"]).1.trim(), "(not found)");
    let (code, out, _) = cli(&["get", "tomato"]);
    assert_eq!((code, out.trim()), (1, "(not found)"));
    let (code, _, err) = cli(&["keys"]);
    assert_eq!(code, 1);
    assert!(err.contains("jsonkv has no keys verb"), "{err}");
}
