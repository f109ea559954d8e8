//! minority end to end: the real binary, the project's minority client, pushes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{exchange, hex, http, Options, Server};
use polykv_client::minority::MinorityClient;
use polykv_client::nmdb::{Mode, NmdbClient};
use polykv_protocols::minority::status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

async fn client(server: &Server) -> MinorityClient {
    MinorityClient::connect(&server.minority_addr(), T)
        .await
        .unwrap()
}

#[tokio::test]
async fn section_13_vectors_on_the_wire() {
    let server = Server::start();
    let mut s = TcpStream::connect(server.minority_addr()).await.unwrap();
    exchange(
        &mut s,
        "80 01 0004 0004 0000 0000000d 00000001 | 74657374 74657374 68656c6c6f",
        "81 01 0004 0004 0000 00000008 00000001 | 74657374 74657374",
    )
    .await;
    exchange(
        &mut s,
        "80 00 0004 0004 0000 00000008 00000002 | 74657374 74657374",
        "81 00 0004 0004 0000 0000000d 00000002 | 74657374 74657374 68656c6c6f",
    )
    .await;
    exchange(
        &mut s,
        "80 00 0004 0004 0000 00000008 00000003 | 74657374 6e6f7065",
        "81 00 0004 0004 0002 00000008 00000003 | 74657374 6e6f7065",
    )
    .await;
    exchange(
        &mut s,
        "80 03 0000 0000 0000 00000000 00000004",
        "81 03 0000 0000 0000 00000000 00000004",
    )
    .await;
    exchange(
        &mut s,
        "80 02 0004 0000 0000 00000004 00000005 | 74657374",
        "81 02 0004 0000 0000 00000004 00000005 | 74657374  81 02 0004 0004 0000 0000000d 00000005 | 74657374 74657374 68656c6c6f",
    )
    .await;
    // Another connection deletes (test,test): a delete push arrives.
    let mut other = client(&server).await;
    assert!(other.delete(b"test", b"test").await.unwrap());
    let mut push = vec![0u8; 24];
    tokio::time::timeout(T, s.read_exact(&mut push))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        push,
        hex("81 02 0004 0004 0002 00000008 00000005 | 74657374 74657374")
    );
    exchange(
        &mut s,
        "80 05 0004 0004 0000 00000008 00000006 | 74657374 74657374",
        "81 05 0004 0004 0002 00000008 00000006 | 74657374 74657374",
    )
    .await;
    let version = format!("polykv {}", env!("CARGO_PKG_VERSION"));
    let want = format!(
        "81 04 0000 0000 0000 {:08x} 00000007 | {}",
        version.len(),
        version
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    exchange(&mut s, "80 04 0000 0000 0000 00000000 00000007", &want).await;
    exchange(
        &mut s,
        "80 00 0004 0004 0000 00000005 00000008 | 68656c6c6f",
        "81 00 0000 0000 0003 00000000 00000008",
    )
    .await;
    // M5/M6: empty dataId, dataId with 00: invalid, ids echoed, connection kept.
    exchange(
        &mut s,
        "80 00 0000 0001 0000 00000001 0000000a | 78",
        "81 00 0000 0001 0003 00000001 0000000a | 78",
    )
    .await;
    exchange(
        &mut s,
        "80 01 0002 0000 0000 00000003 0000000b | 6100 76",
        "81 01 0002 0000 0003 00000002 0000000b | 6100",
    )
    .await;
    // 11: a body over 1 MiB: error, then close, the body never read.
    exchange(
        &mut s,
        "80 00 0004 0004 0000 00100001 00000009",
        "81 00 0000 0000 0003 00000000 00000009",
    )
    .await;
    let mut rest = Vec::new();
    assert_eq!(
        tokio::time::timeout(T, s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap(),
        0
    );
    // 10: bad magic closes without a byte.
    let mut bad = TcpStream::connect(server.minority_addr()).await.unwrap();
    bad.write_all(&[0x00; 16]).await.unwrap();
    assert_eq!(
        tokio::time::timeout(T, bad.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn subscriptions_to_a_pair_and_to_a_whole_data_id() {
    let server = Server::start();
    let mut writer = client(&server).await;
    writer.set(b"app", b"", b"root").await.unwrap();
    writer.set(b"app", b"db", b"pg").await.unwrap();
    writer.set(b"apple", b"x", b"other data id").await.unwrap();
    let mut pair = client(&server).await;
    assert_eq!(pair.notify(b"app", b"db").await.unwrap().0.as_ref(), b"pg");
    let mut whole = client(&server).await;
    let (current, opaque) = whole.notify(b"app", b"").await.unwrap();
    assert_eq!(current.as_ref(), b"root");
    let snapshot = whole.next_push(T).await.unwrap().unwrap();
    assert_eq!(
        (
            snapshot.datanum_id.as_ref(),
            snapshot.value.as_ref(),
            snapshot.opaque
        ),
        (&b"db"[..], &b"pg"[..], opaque)
    );
    writer.set(b"app", b"db", b"mysql").await.unwrap();
    writer.set(b"app", b"cache", b"redis").await.unwrap();
    writer.set(b"apple", b"x", b"not mine").await.unwrap();
    writer.set(b"app", b"", b"root2").await.unwrap();
    let push = pair.next_push(T).await.unwrap().unwrap();
    assert_eq!(
        (push.datanum_id.as_ref(), push.value.as_ref(), push.status),
        (&b"db"[..], &b"mysql"[..], status::OK)
    );
    assert!(
        pair.next_push(Duration::from_millis(200))
            .await
            .unwrap()
            .is_none(),
        "other keys are not pushed to a pair"
    );
    // Three pushes are expected (each waited for as long as a loaded machine needs), then none.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let p = whole.next_push(T).await.unwrap().unwrap();
        seen.push((
            String::from_utf8_lossy(&p.datanum_id).into_owned(),
            String::from_utf8_lossy(&p.value).into_owned(),
        ));
    }
    assert!(
        whole
            .next_push(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none(),
        "only matching keys are pushed"
    );
    assert_eq!(
        seen,
        vec![
            ("db".into(), "mysql".into()),
            ("cache".into(), "redis".into()),
            ("".into(), "root2".into())
        ]
    );
    // Re-subscribing replaces: one push per change, with the new opaque.
    let (_, second_opaque) = pair.notify(b"app", b"db").await.unwrap();
    writer.set(b"app", b"db", b"sqlite").await.unwrap();
    let push = pair.next_push(T).await.unwrap().unwrap();
    assert_eq!(push.opaque, second_opaque);
    assert!(pair
        .next_push(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        pair.version().await.unwrap(),
        format!("polykv {}", env!("CARGO_PKG_VERSION"))
    );
    pair.heartbeat().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_in_commit_order_under_concurrent_writers() {
    let server = Server::start_with(Options {
        args: vec!["--minority-async-acks".into(), "true".into()],
        ..Options::default()
    });
    let mut watcher = client(&server).await;
    watcher.notify(b"cfg", b"").await.unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let addr = server.minority_addr();
            tokio::spawn(async move {
                let mut c = MinorityClient::connect(&addr, T).await.unwrap();
                for i in 0..200u32 {
                    c.set(b"cfg", format!("k{w}").as_bytes(), i.to_string().as_bytes())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut last: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut count = 0;
    while let Some(p) = watcher.next_push(Duration::from_millis(500)).await.unwrap() {
        let value: u32 = String::from_utf8_lossy(&p.value).parse().unwrap();
        if let Some(previous) = last.insert(p.datanum_id.to_vec(), value) {
            assert!(value > previous, "per-key commit order");
        }
        count += 1;
    }
    assert_eq!(
        count, 800,
        "every change pushed (the queue never overflowed)"
    );
    assert!(last.values().all(|v| *v == 199));
}

/// A server whose sets are acknowledged without waiting for the disk and whose subscribers'
/// push queues hold 64 changes, so that a subscriber falls behind quickly.
fn start_with_short_push_queues() -> Server {
    Server::start_with_args(&[
        "--minority-async-acks",
        "true",
        "--minority-push-queue",
        "64",
    ])
}

/// Subscribers of one key are written by its fan-out writer while they wait and by their own
/// sessions while they are busy: every subscriber that keeps reading sees every change once, in
/// order, and its replies intact, whichever wrote; one that stops reading still gets the final
/// value, and never holds the others back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_one_key_get_every_change_once_in_order_between_their_replies() {
    const SUBSCRIBERS: usize = 8;
    const CHANGES: u32 = 2000;
    let server = start_with_short_push_queues();
    let mut stalled = client(&server).await;
    stalled.notify(b"grp", b"k").await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut c = client(&server).await;
        let (_, opaque) = c.notify(b"grp", b"k").await.unwrap();
        readers.push(tokio::spawn(async move {
            // Requests between pushes: the session answers while the writer also pushes.
            let mut seen = Vec::new();
            while seen.last() != Some(&(CHANGES - 1)) {
                assert_eq!(
                    c.get(b"grp", b"other").await.unwrap(),
                    None,
                    "a reply, intact"
                );
                while let Some(p) = c.next_push(Duration::from_millis(1)).await.unwrap() {
                    assert_eq!((p.opaque, p.datanum_id.as_ref()), (opaque, &b"k"[..]));
                    seen.push(String::from_utf8_lossy(&p.value).parse::<u32>().unwrap());
                }
            }
            seen
        }));
    }
    let mut writer = client(&server).await;
    for i in 0..CHANGES {
        writer
            .set(b"grp", b"k", i.to_string().as_bytes())
            .await
            .unwrap();
    }
    for reader in readers {
        let seen = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("every change arrives")
            .unwrap();
        assert_eq!(
            seen,
            (0..CHANGES).collect::<Vec<_>>(),
            "each change once, in order"
        );
    }
    let mut last = None;
    while let Some(p) = stalled.next_push(Duration::from_millis(500)).await.unwrap() {
        let value: u32 = String::from_utf8_lossy(&p.value).parse().unwrap();
        assert!(last < Some(value), "in order");
        last = Some(value);
    }
    assert_eq!(last, Some(CHANGES - 1), "the final value arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_gets_the_latest_values_and_never_slows_writers() {
    let server = start_with_short_push_queues();
    let mut slow = client(&server).await;
    slow.notify(b"hot", b"").await.unwrap();
    // The slow client now reads nothing while 100 000 changes to 1 000 keys are written.
    let started = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let addr = server.minority_addr();
            tokio::spawn(async move {
                let mut c = MinorityClient::connect(&addr, T).await.unwrap();
                for i in 0..25_000u32 {
                    let key = format!("k{}", (i * 4 + w) % 1000);
                    c.set(b"hot", key.as_bytes(), format!("{w}:{i}").as_bytes())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let writing = started.elapsed();
    // Every key's final value, as a reader sees it.
    let mut reader = client(&server).await;
    let mut expected = HashMap::new();
    for k in 0..1000 {
        let key = format!("k{k}");
        expected.insert(
            key.clone(),
            reader.get(b"hot", key.as_bytes()).await.unwrap().unwrap(),
        );
    }
    let mut received = HashMap::new();
    while let Some(p) = slow.next_push(Duration::from_millis(1500)).await.unwrap() {
        received.insert(String::from_utf8_lossy(&p.datanum_id).into_owned(), p.value);
    }
    assert_eq!(received.len(), 1000);
    for (key, value) in &expected {
        assert_eq!(received.get(key), Some(value), "latest value of {key}");
    }
    let (_, stats) = http(server.admin_port, "GET", "/api/stats", "").unwrap();
    assert!(stats.contains("\"subscribers\":2"), "{stats}");
    eprintln!("100 000 sets by 4 writers with a stalled subscriber: {writing:?}");
}

#[tokio::test]
async fn idle_connections_are_closed_and_their_subscriptions_dropped() {
    let server = Server::start_with(Options {
        args: vec!["--minority-idle-timeout-secs".into(), "1".into()],
        ..Options::default()
    });
    let mut c = client(&server).await;
    c.notify(b"idle", b"x").await.unwrap();
    let (_, stats) = http(server.admin_port, "GET", "/api/stats", "").unwrap();
    // The subscription's watch and its key's fan-out writer's.
    assert!(stats.contains("\"subscribers\":2"), "{stats}");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        c.get(b"idle", b"x").await.is_err(),
        "closed after the idle timeout"
    );
    let (_, stats) = http(server.admin_port, "GET", "/api/stats", "").unwrap();
    assert!(stats.contains("\"subscribers\":0"), "{stats}");
    // A heartbeat keeps a connection alive.
    let mut alive = client(&server).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        alive.heartbeat().await.unwrap();
    }
}

#[tokio::test]
async fn changes_through_another_protocol_reach_subscribers_in_a_shared_keyspace() {
    let server =
        Server::start_with_args(&["--minority-keyspace", "shared", "--nmdb-keyspace", "shared"]);
    let mut watcher = client(&server).await;
    watcher.notify(b"app", b"").await.unwrap();
    let mut nmdb = NmdbClient::connect_tcp(&server.nmdb_addr(), T)
        .await
        .unwrap();
    nmdb.set(b"app\0db", b"via nmdb", Mode::Sync).await.unwrap();
    nmdb.set(b"app\0mem", b"cache only", Mode::CacheOnly)
        .await
        .unwrap();
    let push = watcher.next_push(T).await.unwrap().unwrap();
    assert_eq!(
        (push.datanum_id.as_ref(), push.value.as_ref()),
        (&b"db"[..], &b"via nmdb"[..])
    );
    assert!(
        watcher
            .next_push(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none(),
        "CACHE_ONLY writes are not changes"
    );
    // And the admin API.
    let (status, _) = http(
        server.admin_port,
        "PUT",
        "/api/keyspaces/shared/keys/app",
        r#"{"value":"via admin"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    let push = watcher.next_push(T).await.unwrap().unwrap();
    assert_eq!(
        (push.datanum_id.as_ref(), push.value.as_ref()),
        (&b""[..], &b"via admin"[..])
    );
    assert_eq!(
        watcher.get(b"app", b"db").await.unwrap().unwrap().as_ref(),
        b"via nmdb"
    );
}

#[test]
fn client_verbs_speak_minority() {
    let server = Server::start();
    let addr = server.minority_addr();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--proto", "minority", "--addr", &addr]);
        common::run_cli(&all, &[])
    };
    assert_eq!(cli(&["set", "app/db", "pg"]).1.trim(), "OK");
    assert_eq!(cli(&["get", "app/db"]).1.trim(), "pg");
    assert_eq!(cli(&["del", "app/db"]).1.trim(), "deleted");
    assert_eq!(cli(&["get", "app/db"]).0, 1);
    // watch prints the current value, then each change.
    let mut watch = std::process::Command::new(common::BIN)
        .args(["watch", "app", "--proto", "minority", "--addr", &addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "app = ");
    assert_eq!(cli(&["set", "app/db", "mysql"]).1.trim(), "OK");
    assert_eq!(lines.next().unwrap().unwrap(), "app/db = mysql");
    let _ = watch.kill();
    let _ = watch.wait();
    let (code, _, err) = cli(&["incr", "k", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("minority has no incr verb"), "{err}");
}
