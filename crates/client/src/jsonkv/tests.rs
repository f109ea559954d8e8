//! Each client against an in-test fake server that answers canned bytes.

use super::*;
use polykv_protocols::jsonkv::{encode_frame, Code, Operate};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(5);

fn frame(json: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(&mut out, json.as_bytes());
    out.to_vec()
}

/// Reads one frame (header + payload) and returns its JSON.
async fn read_frame(stream: &mut TcpStream) -> String {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).await.unwrap();
    let length = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let mut payload = vec![0u8; length - 16];
    stream.read_exact(&mut payload).await.unwrap();
    String::from_utf8(payload).unwrap()
}

/// A TCP server for one connection: for every (expected request JSON, reply bytes) it reads a
/// frame, checks it, and writes the reply. Returns the requests it saw.
async fn framed_server(script: Vec<(&'static str, Vec<u8>)>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        for (expected, reply) in script {
            let request = read_frame(&mut stream).await;
            assert_eq!(request, expected);
            seen.push(request);
            stream.write_all(&reply).await.unwrap();
        }
        seen
    });
    (addr, task)
}

#[tokio::test]
async fn tcp_put_get_delete_and_batch() {
    let (addr, server) = framed_server(vec![
        (
            r#"{"jsonkv":"1.0","operate":"put","key":"tomato","value":"999","id":1}"#,
            frame(r#"{"jsonkv":"1.0","result":{"value":"","code":"0","message":"put operation success"},"id":1}"#),
        ),
        (
            r#"{"jsonkv":"1.0","operate":"get","key":"tomato","id":2}"#,
            frame(r#"{"jsonkv":"1.0","result":{"value":"999","code":"0","message":"get operation success"},"id":2}"#),
        ),
        (
            r#"{"jsonkv":"1.0","operate":"get","key":"nope","id":3}"#,
            frame(r#"{"jsonkv":"1.0","result":{"value":"","code":"1000","message":"key does not exist."},"id":3}"#),
        ),
        (
            r#"{"jsonkv":"1.0","operate":"delete","key":"tomato","id":4}"#,
            frame(r#"{"jsonkv":"1.0","result":{"value":"","code":"0","message":"delete operation success"},"id":4}"#),
        ),
        (
            r#"{"jsonkv":"1.0","operate":"delete","key":"tomato","id":5}"#,
            // Split in two writes: the client must wait for the whole frame.
            frame(r#"{"jsonkv":"1.0","result":{"value":"","code":"1000","message":"key does not exist."},"id":5}"#),
        ),
        (
            r#"[{"jsonkv":"1.0","operate":"put","key":"a","value":"1","id":6},{"jsonkv":"1.0","operate":"get","key":"a","id":7}]"#,
            frame(r#"[{"jsonkv":"1.0","result":{"value":"","code":"0","message":"put operation success"},"id":6},{"jsonkv":"1.0","result":{"value":"1","code":"0","message":"get operation success"},"id":7}]"#),
        ),
        (
            r#"{"jsonkv":"1.0","operate":"put","key":"k","value":"v","id":8}"#,
            frame(r#"{"jsonkv":"1.0","result":{"value":"","code":"1024","message":"internal error"},"id":8}"#),
        ),
        (
            r#"{"jsonkv":"1.0","operate":"get","key":"k","id":9}"#,
            frame(r#"{"jsonkv":"1.0","result":{"value":"x","code":"0","message":"get operation success"},"id":"9"}"#),
        ),
    ])
    .await;
    let mut client = JsonkvClient::connect(&addr, T).await.unwrap();
    client.put("tomato", "999").await.unwrap();
    assert_eq!(client.get("tomato").await.unwrap(), Some("999".into()));
    assert_eq!(client.get("nope").await.unwrap(), None);
    assert!(client.delete("tomato").await.unwrap());
    assert!(!client.delete("tomato").await.unwrap());
    let responses = client
        .batch(&[
            Command::Put {
                key: "a".into(),
                value: "1".into(),
            },
            Command::Get { key: "a".into() },
        ])
        .await
        .unwrap();
    assert_eq!(
        responses,
        vec![
            Response::success(Operate::Put, String::new(), Id::number(6)),
            Response::success(Operate::Get, "1".into(), Id::number(7)),
        ]
    );
    match client.put("k", "v").await {
        Err(ClientError::Server(text)) => assert_eq!(text, "1024 internal error"),
        other => panic!("{other:?}"),
    }
    // An id that is not the one sent ("9" is a string, 9 was a number).
    assert!(matches!(
        client.get("k").await,
        Err(ClientError::Protocol(_))
    ));
    assert_eq!(server.await.unwrap().len(), 9 - 1);
}

#[tokio::test]
async fn tcp_reply_split_across_writes_and_bad_frames() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_frame(&mut stream).await;
        let reply = frame(
            r#"{"jsonkv":"1.0","result":{"value":"v","code":"0","message":"get operation success"},"id":1}"#,
        );
        for byte in reply {
            stream.write_all(&[byte]).await.unwrap();
            stream.flush().await.unwrap();
        }
        read_frame(&mut stream).await;
        // A header announcing 15 bytes: not a frame.
        stream
            .write_all(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0, 0, 0])
            .await
            .unwrap();
        stream
    });
    let mut client = JsonkvClient::connect(&addr, T).await.unwrap();
    assert_eq!(client.get("k").await.unwrap(), Some("v".into()));
    assert!(matches!(
        client.get("k").await,
        Err(ClientError::Protocol(_))
    ));
    drop(server.await.unwrap());
}

#[tokio::test]
async fn udp_resends_after_a_timeout_and_ignores_bad_datagrams() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        // First attempt: lost.
        let (n, _) = server.recv_from(&mut buf).await.unwrap();
        let first = buf[..n].to_vec();
        // Second attempt: a datagram whose header disagrees with its size, a reply to another
        // id, then the answer.
        let (n, peer) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(buf[..n], first[..], "the resend is the same datagram");
        let good = frame(
            r#"{"jsonkv":"1.0","result":{"value":"999","code":"0","message":"get operation success"},"id":1}"#,
        );
        let mut short = good.clone();
        short.pop();
        server.send_to(&short, peer).await.unwrap();
        let other = frame(
            r#"{"jsonkv":"1.0","result":{"value":"old","code":"0","message":"get operation success"},"id":77}"#,
        );
        server.send_to(&other, peer).await.unwrap();
        server.send_to(&good, peer).await.unwrap();
        first
    });
    let mut client = JsonkvUdpClient::connect(&addr, Duration::from_millis(300), 3)
        .await
        .unwrap();
    assert_eq!(client.get("tomato").await.unwrap(), Some("999".into()));
    let first = task.await.unwrap();
    assert_eq!(
        first,
        frame(r#"{"jsonkv":"1.0","operate":"get","key":"tomato","id":1}"#)
    );
}

#[tokio::test]
async fn udp_gives_up_after_the_attempts() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let counter = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let mut seen = 0;
        while tokio::time::timeout(Duration::from_millis(500), server.recv_from(&mut buf))
            .await
            .is_ok()
        {
            seen += 1;
        }
        seen
    });
    let mut client = JsonkvUdpClient::connect(&addr, Duration::from_millis(50), 3)
        .await
        .unwrap();
    assert!(matches!(
        client.put("k", "v").await,
        Err(ClientError::Timeout(_))
    ));
    assert_eq!(counter.await.unwrap(), 3);
}

/// An HTTP server for one connection: for each canned response it reads one request (head and
/// Content-Length body) and answers. Returns the request bodies.
async fn http_server(responses: Vec<Vec<u8>>) -> (String, JoinHandle<Vec<(String, String)>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        for response in responses {
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8(buf[head_end..head_end + length].to_vec()).unwrap();
            buf.drain(..head_end + length);
            seen.push((head, body));
            stream.write_all(&response).await.unwrap();
        }
        seen
    });
    (addr, task)
}

fn http_ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn json_rpc_over_one_keep_alive_connection() {
    let chunked_body = r#"{"jsonrpc":"2.0","result":{"code":0,"message":"get operation success","value":"999"},"id":2}"#;
    let (a, b) = chunked_body.split_at(30);
    let chunked = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let (addr, server) = http_server(vec![
        http_ok(r#"{"jsonrpc":"2.0","result":{"code":0,"message":"put operation success"},"id":1}"#),
        chunked.into_bytes(),
        http_ok(r#"{"jsonrpc":"2.0","result":{"code":1000,"message":"key does not exist."},"id":3}"#),
        http_ok(r#"{"jsonrpc":"2.0","result":{"code":0,"message":"delete operation success"},"id":4}"#),
        http_ok(r#"[{"jsonrpc":"2.0","result":{"code":0,"message":"get operation success","value":"b"},"id":6},{"jsonrpc":"2.0","result":{"code":0,"message":"put operation success"},"id":5}]"#),
        http_ok(r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":7}"#),
        b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    ])
    .await;
    let mut client = JsonRpcClient::new(&addr, T);
    client.put("tomato", "999").await.unwrap();
    assert_eq!(client.get("tomato").await.unwrap(), Some("999".into()));
    assert_eq!(client.get("nope").await.unwrap(), None);
    assert!(client.delete("tomato").await.unwrap());
    let batch = client
        .batch(&[
            Command::Put {
                key: "a".into(),
                value: "b".into(),
            },
            Command::Get { key: "a".into() },
        ])
        .await
        .unwrap();
    // Answered out of order; returned in request order.
    assert_eq!(
        batch,
        vec![
            RpcResponse::success(Operate::Put, None, Id::number(5)),
            RpcResponse::success(Operate::Get, Some("b".into()), Id::number(6)),
        ]
    );
    let unknown = RpcPayload::Single(RpcCall {
        id: Some(Id::number(7)),
        action: RpcAction::Error(polykv_protocols::jsonkv::RpcError::MethodNotFound),
    });
    assert_eq!(
        client.call(&unknown).await.unwrap(),
        Some(RpcResponsePayload::Single(RpcResponse::error(
            polykv_protocols::jsonkv::RpcError::MethodNotFound,
            Id::number(7)
        )))
    );
    let notification = RpcPayload::Single(RpcCall {
        id: None,
        action: RpcAction::Execute(Command::Delete { key: "x".into() }),
    });
    assert_eq!(client.call(&notification).await.unwrap(), None);
    match client.put("big", "v").await {
        Err(ClientError::Server(text)) => assert_eq!(text, "HTTP 413"),
        other => panic!("{other:?}"),
    }
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 8);
    let (head, body) = &seen[0];
    assert!(head.starts_with("POST / HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("Content-Type: application/json\r\n"));
    assert_eq!(
        body,
        r#"{"jsonrpc":"2.0","method":"Put","params":["tomato","999"],"id":1}"#
    );
    assert_eq!(
        seen[1].1,
        r#"{"jsonrpc":"2.0","method":"Get","params":["tomato"],"id":2}"#
    );
    assert_eq!(
        seen[4].1,
        r#"[{"jsonrpc":"2.0","method":"Put","params":["a","b"],"id":5},{"jsonrpc":"2.0","method":"Get","params":["a"],"id":6}]"#
    );
    assert_eq!(
        seen[6].1,
        r#"{"jsonrpc":"2.0","method":"Delete","params":["x"]}"#
    );
}

#[tokio::test]
async fn json_rpc_reconnects_after_the_server_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        for id in 1..=2 {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            // A body delimited by the close, on HTTP/1.0.
            let body = format!(
                r#"{{"jsonrpc":"2.0","result":{{"code":0,"message":"delete operation success"}},"id":{id}}}"#
            );
            stream
                .write_all(format!("HTTP/1.0 200 OK\r\n\r\n{body}").as_bytes())
                .await
                .unwrap();
        }
    });
    let mut client = JsonRpcClient::new(&addr, T);
    assert!(client.delete("a").await.unwrap());
    assert!(client.delete("b").await.unwrap());
    server.await.unwrap();
}

#[test]
fn http_heads_and_chunks() {
    let (head, used) = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
        .unwrap()
        .unwrap();
    assert_eq!(used, 38);
    assert_eq!(
        head,
        Head {
            status: 200,
            length: BodyLength::Exactly(5),
            close: false
        }
    );
    assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
    assert!(parse_head(b"SPDY 200\r\n\r\n").is_err());
    assert!(parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
    let (head, _) =
        parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
    assert!(!head.close);
    assert_eq!(
        parse_chunked(b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nnext", 100).unwrap(),
        Some((b"abc".to_vec(), 21))
    );
    assert_eq!(parse_chunked(b"3\r\nabc\r\n0\r\n", 100).unwrap(), None);
    assert!(parse_chunked(b"3\r\nabcd\r\n", 100).is_err());
    assert!(parse_chunked(b"zz\r\n", 100).is_err());
    assert!(parse_chunked(b"ffffffffffffffff\r\n", 100).is_err());
}

#[tokio::test]
async fn agent_register_list_unregister() {
    let (addr, server) = framed_server(vec![
        (
            r#"{"jsonagent":"1.0","operate":"register","address":"10.0.0.5","tcpport":15001,"rpcport":15003,"udpport":15002}"#,
            frame(r#"{"jsonagent":"1.0","result":{"value":"2","code":"0","message":"register success"}}"#),
        ),
        (
            r#"{"jsonagent":"1.0","operate":"register","address":"10.0.0.5","tcpport":15001}"#,
            frame(r#"{"jsonagent":"1.0","result":{"code":"901","message":"register failed"}}"#),
        ),
        (
            r#"{"jsonagent":"1.0","operate":"getserverlist","protocol":"tcp"}"#,
            frame(r#"{"jsonagent":"1.0","result":{"value":[{"nodeid":1,"address":"127.0.0.1","port":15001},{"nodeid":2,"address":"10.0.0.5","port":15001}],"code":"0","message":"get server list success"}}"#),
        ),
        (
            r#"{"jsonagent":"1.0","operate":"getserverlist","protocol":"rpc"}"#,
            frame(r#"{"jsonagent":"1.0","result":{"code":"903","message":"no server alive"}}"#),
        ),
        (
            r#"{"jsonagent":"1.0","operate":"unregister"}"#,
            frame(r#"{"jsonagent":"1.0","result":{"code":"0","message":"unregister success"}}"#),
        ),
        (
            r#"{"jsonagent":"1.0","operate":"unregister"}"#,
            frame(r#"{"jsonagent":"1.0","result":{"code":"902","message":"server already removed"}}"#),
        ),
    ])
    .await;
    let mut client = AgentClient::connect(&addr, T).await.unwrap();
    assert_eq!(
        client
            .register("10.0.0.5", Some(15001), Some(15003), Some(15002))
            .await
            .unwrap(),
        2
    );
    match client.register("10.0.0.5", Some(15001), None, None).await {
        Err(ClientError::Server(text)) => assert_eq!(text, "901 register failed"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.get_server_list(ServerProtocol::Tcp).await.unwrap(),
        vec![
            ServerEntry {
                nodeid: 1,
                address: "127.0.0.1".into(),
                port: 15001
            },
            ServerEntry {
                nodeid: 2,
                address: "10.0.0.5".into(),
                port: 15001
            },
        ]
    );
    assert_eq!(
        client.get_server_list(ServerProtocol::Rpc).await.unwrap(),
        vec![]
    );
    assert!(client.unregister().await.unwrap());
    assert!(!client.unregister().await.unwrap());
    assert_eq!(server.await.unwrap().len(), 6);
}

#[test]
fn outcomes_map_codes() {
    let get = Command::Get { key: "k".into() };
    let error = Response::error(Code::InvalidKey, Id::null());
    assert!(matches!(
        outcome(&get, &error),
        Err(ClientError::Server(text)) if text == "1002 invalid key"
    ));
    let original = Response {
        value: "0".into(),
        code: "8193".into(),
        message: "Key does not exist.".into(),
        id: Id::null(),
    };
    assert!(outcome(&get, &original).is_err());
}
