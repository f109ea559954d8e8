//! OpenCluster end to end: the real binary, raw spec vectors and the project's client.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{exchange, hex, Options, Server};
use polykv_client::opencluster::{failinfo, ItemId, OpenClusterClient, Value, ValueType};
use polykv_protocols::opencluster::{cmd, encode_request, Request, RequestBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

async fn client(server: &Server) -> OpenClusterClient {
    OpenClusterClient::connect(&server.opencluster_addr(), T)
        .await
        .unwrap()
}

async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut got = vec![0u8; len];
    tokio::time::timeout(T, stream.read_exact(&mut got))
        .await
        .expect("reply in time")
        .expect("reply");
    got
}

/// Whether the server closed the connection within `wait` (EOF, nothing else read).
async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn section_15_2_session_vectors_on_the_wire() {
    let server = Server::start();
    let mut s = TcpStream::connect(server.opencluster_addr()).await.unwrap();
    let rows: String = (0..16).map(|b| format!(" {b:08x} 00000000")).collect();
    exchange(
        &mut s,
        "000a 0000 00000001 00000000",
        &format!(
            "0001 000a 00000001 00000000 \
             0064 0000 00000000 00000004 | 00000000 \
             006e 0000 00000001 00000088 | 0000000f 00000010{rows}"
        ),
    )
    .await;
    exchange(
        &mut s,
        "07d0 0000 00000002 00000021 | 00000000 7e47596b 00000000 00000000 00000009 736f6d657468696e67 0000002d",
        "0001 07d0 00000002 00000000",
    )
    .await;
    exchange(
        &mut s,
        "0834 0000 00000003 00000008 | 00000000 7e47596b",
        "0839 0834 00000003 0000000c | 00000000 7e47596b 0000002d",
    )
    .await;
    exchange(
        &mut s,
        "07e4 0000 00000004 0000002c | 00000000 29f6a27d 00000000 00000000 0000000a 636c69656e746e616d65 0000000a 42696c6c204772616479",
        "0001 07e4 00000004 00000000",
    )
    .await;
    exchange(
        &mut s,
        "0848 0000 00000005 00000008 | 00000000 29f6a27d",
        "084d 0848 00000005 00000016 | 00000000 29f6a27d 0000000a 42696c6c204772616479",
    )
    .await;
    exchange(
        &mut s,
        "0834 0000 00000006 00000008 | 00000000 29f6a27d",
        "0003 0834 00000006 00000012 | 00000001 0000000a 77726f6e672074797065",
    )
    .await;
    exchange(
        &mut s,
        "0834 0000 00000007 00000008 | 00000000 e40c292c",
        "0002 0834 00000007 00000000",
    )
    .await;
    exchange(
        &mut s,
        "04d2 0000 00000008 00000000",
        "0009 04d2 00000008 00000002 | 04d2",
    )
    .await;
    exchange(
        &mut s,
        "000b 0000 00000009 00000002 | 0898",
        "0001 000b 00000009 00000000",
    )
    .await;
    exchange(
        &mut s,
        "00c8 0000 0000000a 00000000",
        "00d2 00c8 0000000a 0000000c | 00000010 00000000 00000000",
    )
    .await;
    exchange(
        &mut s,
        "0898 0000 0000000b 00000008 | 00000000 7e47596b",
        "089d 0898 0000000b 0000000c | 00000000 7e47596b 00000001",
    )
    .await;
    exchange(
        &mut s,
        "03e8 0000 0000000c 0000000b | 0000001e 00000003 6a6f62",
        "0001 03e8 0000000c 00000000",
    )
    .await;
    // goodbye: ack, then close; the ping behind it in the same write is discarded unanswered.
    exchange(
        &mut s,
        "0014 0000 0000000d 00000000 001e 0000 0000000e 00000000",
        "0001 0014 0000000d 00000000",
    )
    .await;
    assert!(closed_by_server(&mut s, T).await);
    // The goodbye released "job": another connection takes it at once.
    let mut other = client(&server).await;
    assert!(other.lock(b"job", 30).await.unwrap());
}

#[tokio::test]
async fn malformed_payloads_and_session_commands() {
    let server = Server::start();
    let mut s = TcpStream::connect(server.opencluster_addr()).await.unwrap();
    // O4: get_int with a short payload → failinfo 2; the connection stays.
    exchange(
        &mut s,
        "0834 0000 00000001 00000004 | 00000000",
        "0003 0834 00000001 00000019 | 00000002 00000011 6d616c666f726d6564207061796c6f6164",
    )
    .await;
    // Trailing bytes are malformed too.
    exchange(
        &mut s,
        "0834 0000 00000002 00000009 | 00000000 7e47596b ff",
        "0003 0834 00000002 00000019 | 00000002 00000011 6d616c666f726d6564207061796c6f6164",
    )
    .await;
    // O5: negative expires → failinfo 4.
    exchange(
        &mut s,
        "07d0 0000 00000003 00000019 | 00000000 00000001 ffffffff 00000000 00000001 61 00000001",
        "0003 07d0 00000003 00000018 | 00000004 00000010 696e76616c696420617267756d656e74",
    )
    .await;
    // Empty lock name → failinfo 4.
    exchange(
        &mut s,
        "03e8 0000 00000004 00000008 | 00000000 00000000",
        "0003 03e8 00000004 00000018 | 00000004 00000010 696e76616c696420617267756d656e74",
    )
    .await;
    // O3: a reply from the client is never answered; the ping after it is.
    exchange(
        &mut s,
        "0001 0064 00000000 00000000 001e 0000 00000005 00000000",
        "0001 001e 00000005 00000000",
    )
    .await;
    // Commands with unused payloads accept any payload: shuttingdown, serverhello, newserver.
    exchange(
        &mut s,
        "000f 0000 00000006 00000003 | 010203 0032 0000 00000007 00000008 | 00000004 61626364 0082 0000 00000008 00000001 | 00",
        "0001 000f 00000006 00000000 0001 0032 00000007 00000000 0001 0082 00000008 00000000",
    )
    .await;
    // capabilities of a reply id → fail.
    exchange(
        &mut s,
        "000b 0000 00000009 00000002 | 0839",
        "0002 000b 00000009 00000000",
    )
    .await;
    // O1: a payload over the limit → failinfo 3 without reading the payload, then close.
    exchange(
        &mut s,
        "07e4 0000 0000000a 7fffffff",
        "0003 07e4 0000000a 00000019 | 00000003 00000011 7061796c6f616420746f6f206c61726765",
    )
    .await;
    assert!(closed_by_server(&mut s, T).await);
    // The server keeps serving everyone else.
    let mut c = client(&server).await;
    c.ping().await.unwrap();
}

#[tokio::test]
async fn typed_values_wrong_types_and_get_type() {
    let server = Server::start();
    let mut c = client(&server).await;
    c.hello().await.unwrap();
    assert_eq!(c.mask(), Some(0x0F));
    assert_eq!(c.bucket_levels().len(), 16);
    assert!(c.bucket_levels().values().all(|level| *level == 0));
    assert!(c.servers().is_empty());
    assert_eq!(c.is_primary_for(b"anything"), Some(true));

    c.set_int(b"i", -7, 0, false).await.unwrap();
    c.set_long(b"l", i64::MIN, 0, true).await.unwrap();
    c.set_string(b"s", b"", 0, false).await.unwrap();
    assert_eq!(c.get_int(b"i").await.unwrap(), Some(-7));
    assert_eq!(c.get_long(b"l").await.unwrap(), Some(i64::MIN));
    assert_eq!(c.get_string(b"s").await.unwrap(), Some(Bytes::new()));
    assert_eq!(c.get_type(b"i").await.unwrap(), Some(ValueType::Int));
    assert_eq!(c.get_type(b"l").await.unwrap(), Some(ValueType::Long));
    assert_eq!(c.get_type(b"s").await.unwrap(), Some(ValueType::String));
    assert_eq!(c.get_type(b"missing").await.unwrap(), None);

    // Types match exactly: an int is not widened to a long.
    let err = c.get_long(b"i").await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("failinfo {}", failinfo::WRONG_TYPE)),
        "{err}"
    );
    let err = c.get_int(b"s").await.unwrap_err().to_string();
    assert!(err.contains("failinfo 1"), "{err}");

    // A set of any type replaces an item of any type.
    c.set_string(b"i", b"now a string", 0, false).await.unwrap();
    assert_eq!(c.get_type(b"i").await.unwrap(), Some(ValueType::String));

    // The same key hash under another map hash is another item.
    let in_map = ItemId::named(Some(b"map"), b"i");
    assert_eq!(c.get(in_map, ValueType::Int).await.unwrap(), None);
    c.set(in_map, b"i", Value::Int(1), 0, false).await.unwrap();
    assert_eq!(
        c.get(in_map, ValueType::Int).await.unwrap(),
        Some(Value::Int(1))
    );
    assert_eq!(c.get_type(b"i").await.unwrap(), Some(ValueType::String));

    assert!(c.capabilities(cmd::GET_TYPE).await.unwrap());
    assert!(!c.capabilities(2105).await.unwrap());
    let levels = c.loadlevel().await.unwrap();
    assert_eq!(
        (levels.primary, levels.backup, levels.transferring),
        (16, 0, false)
    );
    c.goodbye().await.unwrap();
}

#[tokio::test]
async fn expiry_is_invisible_at_once_and_full_wait_survives_a_kill() {
    let mut server = Server::start();
    let mut c = client(&server).await;
    c.set_int(b"short", 1, 1, false).await.unwrap();
    c.set_int(b"forever", 2, 0, true).await.unwrap();
    c.set_string(b"durable", b"value", 3600, true)
        .await
        .unwrap();
    assert_eq!(c.get_int(b"short").await.unwrap(), Some(1));
    let deadline = Instant::now() + T;
    while c.get_int(b"short").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "item did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.get_type(b"short").await.unwrap(), None);

    // full wait 1 is acknowledged only once on disk: a SIGKILL right after loses nothing.
    let data_dir = server.data_dir.clone();
    server.signal(libc::SIGKILL);
    server.wait_exit(T);
    drop(c);
    let server = Server::start_with(Options {
        data_dir: Some(data_dir),
        ..Options::default()
    });
    let mut c = client(&server).await;
    assert_eq!(c.get_int(b"forever").await.unwrap(), Some(2));
    assert_eq!(
        c.get_string(b"durable").await.unwrap(),
        Some(Bytes::from_static(b"value"))
    );
    assert_eq!(c.get_int(b"short").await.unwrap(), None);
}

#[tokio::test]
async fn locks_have_one_holder_and_are_released_on_unlock_close_and_timeout() {
    let server = Server::start();
    let mut a = client(&server).await;
    let mut b = client(&server).await;
    assert!(a.lock(b"job", 0).await.unwrap());
    assert!(a.lock(b"job", 0).await.unwrap(), "re-locking renews");
    assert!(!b.lock(b"job", 0).await.unwrap());
    assert!(!b.unlock(b"job").await.unwrap(), "b does not hold it");
    assert!(a.unlock(b"job").await.unwrap());
    assert!(!a.unlock(b"job").await.unwrap());
    assert!(b.lock(b"job", 0).await.unwrap());

    // Disconnect releases.
    drop(b);
    let deadline = Instant::now() + T;
    while !a.lock(b"job", 0).await.unwrap() {
        assert!(Instant::now() < deadline, "lock not released on disconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Timeout releases.
    let mut c = client(&server).await;
    assert!(c.lock(b"timed", 1).await.unwrap());
    assert!(!a.lock(b"timed", 0).await.unwrap());
    let deadline = Instant::now() + T;
    while !a.lock(b"timed", 0).await.unwrap() {
        assert!(Instant::now() < deadline, "lock did not time out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!c.unlock(b"timed").await.unwrap());
}

#[tokio::test]
async fn contention_has_exactly_one_winner_at_a_time() {
    let server = Server::start();
    let addr = server.opencluster_addr();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = OpenClusterClient::connect(&addr, T).await.unwrap();
            let won = c.lock(b"contended", 0).await.unwrap();
            // The connection is handed back so the winner keeps its lock until all have tried.
            (won, c)
        }));
    }
    let mut winners = 0;
    let mut clients = Vec::new();
    for task in tasks {
        let (won, c) = task.await.unwrap();
        winners += usize::from(won);
        clients.push(c);
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn lock_limit_per_connection() {
    let server = Server::start_with(Options {
        args: vec!["--opencluster-max-locks".into(), "2".into()],
        ..Options::default()
    });
    let mut c = client(&server).await;
    assert!(c.lock(b"a", 0).await.unwrap());
    assert!(c.lock(b"b", 0).await.unwrap());
    let err = c.lock(b"c", 0).await.unwrap_err().to_string();
    assert!(err.contains("failinfo 6"), "{err}");
    assert!(
        c.lock(b"b", 5).await.unwrap(),
        "renewing a held lock at the limit"
    );
    let mut other = client(&server).await;
    assert!(other.lock(b"c", 0).await.unwrap(), "c was given back");
}

#[tokio::test]
async fn pipelined_thousands_split_messages_and_a_1_mib_string() {
    let server = Server::start();
    let mut stream = TcpStream::connect(server.opencluster_addr()).await.unwrap();
    // 5 000 set_string in one write, then 5 000 get_string in another.
    let mut out = BytesMut::new();
    for i in 0..5000u32 {
        let name = format!("key-{i}");
        encode_request(
            &Request {
                user_id: i,
                body: RequestBody::Set {
                    item: ItemId::named(None, name.as_bytes()),
                    expires: 0,
                    full_wait: i % 2 == 0,
                    name: Bytes::from(name.clone()),
                    value: Value::String(Bytes::from(format!("value-{i}"))),
                },
            },
            &mut out,
        );
    }
    stream.write_all(&out).await.unwrap();
    let acks = read_exactly(&mut stream, 5000 * 12).await;
    for (i, ack) in acks.chunks(12).enumerate() {
        assert_eq!(&ack[..4], &hex("0001 07e4")[..], "ack {i}");
        assert_eq!(&ack[4..8], &(i as u32).to_be_bytes());
    }
    let mut c = OpenClusterClient::connect(&server.opencluster_addr(), T)
        .await
        .unwrap();
    for i in (0..5000).step_by(97) {
        assert_eq!(
            c.get_string(format!("key-{i}").as_bytes()).await.unwrap(),
            Some(Bytes::from(format!("value-{i}")))
        );
    }

    // A message split into single bytes, with pauses, is answered once whole.
    let ping = hex("001e 0000 00000063 00000000");
    for byte in &ping {
        stream.write_all(std::slice::from_ref(byte)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        read_exactly(&mut stream, 12).await,
        hex("0001 001e 00000063 00000000")
    );

    // A string as large as the limit allows: 1 MiB payload minus the set's fields.
    let big = vec![0xA5u8; (1 << 20) - 24 - 3];
    c.set_string(b"big", &big, 0, true).await.unwrap();
    assert_eq!(
        c.get_string(b"big").await.unwrap().unwrap().len(),
        big.len()
    );
    assert_eq!(&c.get_string(b"big").await.unwrap().unwrap()[..], &big[..]);
}

#[tokio::test]
async fn idle_connections_are_closed_and_their_locks_released() {
    let server = Server::start_with(Options {
        args: vec!["--opencluster-idle-timeout-secs".into(), "1".into()],
        ..Options::default()
    });
    let mut idle = TcpStream::connect(server.opencluster_addr()).await.unwrap();
    exchange(
        &mut idle,
        "03e8 0000 00000001 00000009 | 00000000 00000001 78",
        "0001 03e8 00000001 00000000",
    )
    .await;
    assert!(closed_by_server(&mut idle, T).await);
    let mut c = client(&server).await;
    assert!(c.lock(b"x", 0).await.unwrap());
}

#[tokio::test]
async fn shutdown_pushes_goodbye_and_waits_for_the_ack() {
    let mut server = Server::start();
    let mut c = client(&server).await;
    c.hello().await.unwrap();
    let mut silent = TcpStream::connect(server.opencluster_addr()).await.unwrap();
    exchange(
        &mut silent,
        "001e 0000 00000001 00000000",
        "0001 001e 00000001 00000000",
    )
    .await;
    server.signal(libc::SIGTERM);
    // The client acks the goodbye push; the server then closes it.
    // (process_pushes ends in an error once the server closes after the ack.)
    let _ = c.process_pushes(Duration::from_secs(1)).await;
    assert!(c.server_said_goodbye());
    assert!(c.connection().is_closed_by_peer(T).await);
    // A client that never acks gets the push (user id 0 on a connection without hello)
    // and is closed after the wait.
    assert_eq!(
        read_exactly(&mut silent, 12).await,
        hex("0014 0000 00000000 00000000")
    );
    // hello while shutting down: fail, since a single node has nowhere else to send it (§8).
    exchange(
        &mut silent,
        "000a 0000 00000002 00000000",
        "0002 000a 00000002 00000000",
    )
    .await;
    assert!(closed_by_server(&mut silent, T).await);
    assert_eq!(server.wait_exit(T), Some(0));
}

#[test]
fn client_verbs_speak_opencluster() {
    let server = Server::start();
    let addr = server.opencluster_addr();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--proto", "opencluster", "--addr", &addr]);
        common::run_cli(&all, &[])
    };
    assert_eq!(
        cli(&["set", "something", "45", "--type", "int"]).1.trim(),
        "OK"
    );
    assert_eq!(cli(&["get", "something"]).1.trim(), "45 (int)");
    assert_eq!(
        cli(&["set", "clientname", "Bill Grady", "--sync"]).1.trim(),
        "OK"
    );
    let (code, out, _) = cli(&["get", "clientname", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        r#"{"key":"clientname","type":"string","value":"Bill Grady"}"#
    );
    assert_eq!(cli(&["get", "missing"]).0, 1);
    let (_, stats, _) = cli(&["stats"]);
    assert!(stats.contains("primary buckets  16"), "{stats}");
    let (code, _, err) = cli(&["set", "n", "x", "--type", "long"]);
    assert_eq!(code, 1);
    assert!(err.contains("--type long needs a 64-bit integer"), "{err}");
    let (code, _, err) = cli(&["del", "something"]);
    assert_eq!(code, 1);
    assert!(err.contains("OpenCluster has no del verb"), "{err}");
    // --type belongs to OpenCluster.
    let (code, _, err) = common::run_cli(&["set", "k", "1", "--type", "int"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--type and --expires are OpenCluster's"),
        "{err}"
    );
}
