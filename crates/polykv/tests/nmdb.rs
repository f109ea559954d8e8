//! nmdb end to end: the real binary, the project's nmdb client, TCP and UDP.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{http, Options, Server};
use polykv_client::nmdb::{CasOutcome, Mode, NmdbClient, Source, STATS_NAMES};
use polykv_client::ClientError;
use polykv_protocols::nmdb::{error, NmdbClientCodec, Request, ResponseBody, Transport};
use polykv_protocols::ClientCodec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

async fn tcp(server: &Server) -> NmdbClient {
    NmdbClient::connect_tcp(&server.nmdb_addr(), T)
        .await
        .unwrap()
}

fn stat(stats: &[u64; 23], name: &str) -> u64 {
    stats[STATS_NAMES.iter().position(|n| *n == name).unwrap()]
}

fn is_server_error(result: Result<impl std::fmt::Debug, ClientError>, name: &str) -> bool {
    matches!(&result, Err(ClientError::Server(n)) if n.starts_with(name))
}

#[tokio::test]
async fn semantics_table() {
    let mut server = Server::start();
    let mut c = tcp(&server).await;
    // SET then GET: the cache answers (CACHE_HIT, kept from nmdb).
    c.set(b"k", b"v", Mode::Normal).await.unwrap();
    assert_eq!(
        c.get(b"k", Mode::Normal).await.unwrap().unwrap().1,
        Source::Cache
    );
    assert_eq!(c.get(b"missing", Mode::Normal).await.unwrap(), None);
    // CACHE_ONLY data lives only in the cache.
    c.set(b"mem", b"m", Mode::CacheOnly).await.unwrap();
    assert_eq!(
        c.get(b"mem", Mode::CacheOnly).await.unwrap(),
        Some((bytes::Bytes::from("m"), Source::Cache))
    );
    assert_eq!(
        c.get(b"nope", Mode::CacheOnly).await.unwrap(),
        None,
        "CACHE_MISS"
    );
    // DEL rows: async OK even if absent; SYNC NOTIN if absent; CACHE_ONLY NOTIN if not cached.
    assert!(c.del(b"absent", Mode::Normal).await.unwrap());
    assert!(!c.del(b"absent", Mode::Sync).await.unwrap());
    assert!(!c.del(b"absent", Mode::CacheOnly).await.unwrap());
    c.set(b"d", b"1", Mode::Sync).await.unwrap();
    assert!(c.del(b"d", Mode::Sync).await.unwrap());
    assert!(c.del(b"mem", Mode::CacheOnly).await.unwrap());
    // CAS rows.
    assert_eq!(
        c.cas(b"nokey", b"a", b"b", Mode::Normal).await.unwrap(),
        CasOutcome::NotFound
    );
    c.set(b"c", b"a", Mode::Normal).await.unwrap();
    assert_eq!(
        c.cas(b"c", b"x", b"b", Mode::Normal).await.unwrap(),
        CasOutcome::Mismatch
    );
    assert_eq!(
        c.cas(b"c", b"a", b"b", Mode::Normal).await.unwrap(),
        CasOutcome::Swapped
    );
    assert_eq!(
        c.get(b"c", Mode::Normal).await.unwrap().unwrap().0.as_ref(),
        b"b"
    );
    assert_eq!(
        c.cas(b"cc", b"a", b"b", Mode::CacheOnly).await.unwrap(),
        CasOutcome::NotFound
    );
    // INCR rows, and the exact stored format (vector 5).
    assert_eq!(c.incr(b"n", 1, Mode::Normal).await.unwrap(), None);
    c.set(b"n", b"5\0", Mode::Normal).await.unwrap();
    assert_eq!(c.incr(b"n", 10, Mode::Normal).await.unwrap(), Some(15));
    assert_eq!(c.incr(b"n", -3, Mode::CacheOnly).await.unwrap(), Some(12));
    let (value, _) = c.get(b"n", Mode::Normal).await.unwrap().unwrap();
    assert_eq!(value.as_ref(), format!("{:>23}\0", 12).as_bytes());
    c.set(b"text", b"abc", Mode::Normal).await.unwrap();
    assert!(is_server_error(
        c.incr(b"text", 1, Mode::Normal).await,
        "NOMATCH"
    ));

    // After a restart the cache is empty: the first GET comes from the store (OK), the next
    // from the cache; CACHE_ONLY data is gone.
    c.set(b"durable", b"yes", Mode::Sync).await.unwrap();
    c.set(b"gone", b"x", Mode::CacheOnly).await.unwrap();
    assert_eq!(server.terminate(), Some(0));
    let server = Server::start_with(Options {
        data_dir: Some(server.data_dir.clone()),
        ..Options::default()
    });
    let mut c = tcp(&server).await;
    assert_eq!(
        c.get(b"durable", Mode::Normal).await.unwrap().unwrap().1,
        Source::Store
    );
    assert_eq!(
        c.get(b"durable", Mode::Normal).await.unwrap().unwrap().1,
        Source::Cache
    );
    assert_eq!(c.get(b"gone", Mode::CacheOnly).await.unwrap(), None);
    assert_eq!(
        c.get(b"c", Mode::Normal).await.unwrap().unwrap().0.as_ref(),
        b"b"
    );
}

#[tokio::test]
async fn stats_count_for_real() {
    let server = Server::start();
    let mut c = tcp(&server).await;
    c.set(b"a", b"1", Mode::Normal).await.unwrap();
    c.set(b"b", b"1", Mode::CacheOnly).await.unwrap();
    c.get(b"a", Mode::Normal).await.unwrap();
    c.get(b"zz", Mode::Normal).await.unwrap();
    c.get(b"zz", Mode::CacheOnly).await.unwrap();
    c.first_key().await.unwrap();
    c.next_key(b"a").await.unwrap();
    let conn = c.tcp().unwrap();
    conn.queue_raw(&[0, 0, 0, 0x0c, 0x10, 0, 0, 9, 0x01, 0x99, 0, 0]); // unknown code
    conn.queue_raw(&[0, 0, 0, 0x09, 0x10, 0, 0, 10, 0]); // broken (F = 9)
    conn.flush().await.unwrap();
    assert_eq!(
        conn.receive().await.unwrap().body,
        ResponseBody::Error(error::UNKREQ)
    );
    assert_eq!(
        conn.receive().await.unwrap().body,
        ResponseBody::Error(error::BROKEN)
    );
    let s = c.stats().await.unwrap();
    for (name, want) in [
        ("db_set", 1),
        ("cache_set", 1),
        ("db_get", 2),
        ("cache_get", 1),
        ("cache_hits", 1),
        ("db_misses", 1),
        ("cache_misses", 1),
        ("db_firstkey", 1),
        ("db_nextkey", 1),
        ("net_unk_req", 1),
        ("net_broken_req", 1),
        ("msg_tcp", 10),
        ("msg_udp", 0),
        ("db_hits", 0),
        ("net_version_mismatch", 0),
    ] {
        assert_eq!(stat(&s, name), want, "{name}");
    }
}

#[tokio::test]
async fn read_only_mode() {
    let server = Server::start_with(Options {
        args: vec!["--nmdb-read-only".into(), "true".into()],
        ..Options::default()
    });
    let mut c = tcp(&server).await;
    assert!(is_server_error(
        c.set(b"k", b"v", Mode::Normal).await,
        "ERR_RO"
    ));
    assert!(is_server_error(
        c.set(b"k", b"v", Mode::CacheOnly).await,
        "ERR_RO"
    ));
    assert!(is_server_error(c.del(b"k", Mode::Sync).await, "ERR_RO"));
    assert!(is_server_error(
        c.cas(b"k", b"a", b"b", Mode::Normal).await,
        "ERR_RO"
    ));
    assert!(is_server_error(
        c.incr(b"k", 1, Mode::Normal).await,
        "ERR_RO"
    ));
    assert_eq!(c.get(b"k", Mode::Normal).await.unwrap(), None, "reads work");
    let (status, _) = http(server.admin_port, "POST", "/api/read-only?on=false", "").unwrap();
    assert_eq!(status, 200);
    c.set(b"k", b"v", Mode::Normal).await.unwrap();
    server.signal(libc::SIGUSR1);
    let mut refused = false;
    for _ in 0..100 {
        if is_server_error(c.set(b"k", b"w", Mode::Normal).await, "ERR_RO") {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "SIGUSR1 turns read-only on");
}

#[tokio::test]
async fn iteration_in_key_order() {
    let server = Server::start();
    let mut c = tcp(&server).await;
    let mut keys: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| format!("key{:05}", (i * 7919) % 1000).into_bytes())
        .collect();
    for key in &keys {
        c.set(key, b"v", Mode::Normal).await.unwrap();
    }
    c.set(b"only-in-cache", b"v", Mode::CacheOnly)
        .await
        .unwrap();
    keys.sort();
    let mut walked = Vec::new();
    let mut cursor = c.first_key().await.unwrap();
    while let Some(key) = cursor {
        cursor = c.next_key(&key).await.unwrap();
        walked.push(key.to_vec());
    }
    assert_eq!(walked, keys);
    assert_eq!(
        c.next_key(b"key00499x").await.unwrap().unwrap().as_ref(),
        b"key00500",
        "absent key"
    );
}

/// A pipelined batch holds back at most 256 writes' replies before it waits for them: at the
/// limit, one past it and well past it (writes, then a read that must follow them), every
/// reply comes back in order and every write is there.
#[tokio::test]
async fn pipelined_writes_at_and_past_the_held_back_limit_are_answered_in_order() {
    let server = Server::start();
    for count in [256u32, 257, 600] {
        let mut c = tcp(&server).await;
        let conn = c.tcp().unwrap();
        for i in 0..count {
            let key = bytes::Bytes::from(format!("held{count}-{i}"));
            conn.queue(&Request::Set {
                id: i + 1,
                mode: Mode::Normal,
                key: key.clone(),
                value: key,
            });
        }
        let last = bytes::Bytes::from(format!("held{count}-{}", count - 1));
        conn.queue(&Request::Get {
            id: count + 1,
            mode: Mode::Normal,
            key: last.clone(),
        });
        conn.flush().await.unwrap();
        for i in 0..count {
            let set = conn.receive().await.unwrap();
            assert_eq!(
                (set.id, set.body),
                (i + 1, ResponseBody::Ok),
                "{count} writes"
            );
        }
        let get = conn.receive().await.unwrap();
        assert_eq!(get.id, count + 1);
        assert_eq!(get.body, ResponseBody::CacheHit(last));
    }
}

#[tokio::test]
async fn hundreds_of_pipelined_frames_answered_in_order() {
    let server = Server::start();
    let mut c = tcp(&server).await;
    let conn = c.tcp().unwrap();
    for i in 0..300u32 {
        let key = bytes::Bytes::from(format!("p{i}"));
        conn.queue(&Request::Set {
            id: i * 2 + 1,
            mode: if i % 10 == 0 {
                Mode::Sync
            } else {
                Mode::Normal
            },
            key: key.clone(),
            value: key.clone(),
        });
        conn.queue(&Request::Get {
            id: i * 2 + 2,
            mode: Mode::Normal,
            key,
        });
    }
    conn.flush().await.unwrap();
    for i in 0..300u32 {
        let set = conn.receive().await.unwrap();
        assert_eq!((set.id, set.body), (i * 2 + 1, ResponseBody::Ok));
        let get = conn.receive().await.unwrap();
        assert_eq!(get.id, i * 2 + 2);
        assert_eq!(get.body, ResponseBody::CacheHit(format!("p{i}").into()));
    }
}

#[tokio::test]
async fn values_up_to_the_size_limit() {
    let server = Server::start();
    let mut c = tcp(&server).await;
    let value = vec![0x5a; 65_513];
    c.set(b"abc", &value, Mode::Sync).await.unwrap();
    assert_eq!(
        c.get(b"abc", Mode::Normal).await.unwrap().unwrap().0.len(),
        65_513
    );
    // Over UDP the same reply does not fit: ERR_SEND.
    let mut u = NmdbClient::connect_udp(&server.nmdb_addr(), Duration::from_secs(2), 2)
        .await
        .unwrap();
    assert!(is_server_error(
        u.get(b"abc", Mode::Normal).await,
        "ERR_SEND"
    ));
}

#[tokio::test]
async fn udp_requests_and_dropped_datagrams() {
    let server = Server::start();
    let mut u = NmdbClient::connect_udp(&server.nmdb_addr(), Duration::from_secs(2), 2)
        .await
        .unwrap();
    u.set(b"u", b"dp", Mode::Sync).await.unwrap();
    assert_eq!(
        u.get(b"u", Mode::Normal).await.unwrap().unwrap().0.as_ref(),
        b"dp"
    );
    assert_eq!(
        u.incr(b"u", 1, Mode::Normal).await.ok(),
        None,
        "not a number"
    );
    // A 7-byte datagram gets no reply and counts as broken.
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw.connect(server.nmdb_addr()).await.unwrap();
    raw.send(&[0x10, 0, 0, 1, 1, 6, 0]).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), raw.recv(&mut buf))
            .await
            .is_err()
    );
    let s = u.stats().await.unwrap();
    assert_eq!(stat(&s, "net_broken_req"), 1);
    assert!(stat(&s, "msg_udp") >= 4);
}

async fn raw_tcp(server: &Server, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(server.nmdb_addr()).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (got, closed)
}

#[tokio::test]
async fn malformed_tcp_input() {
    let server = Server::start();
    // N1: F = 8 and F > 65 536: closed, no reply.
    assert_eq!(
        raw_tcp(&server, &[0, 0, 0, 8, 0x10, 0, 0, 1]).await,
        (vec![], true)
    );
    assert_eq!(
        raw_tcp(&server, &[0, 1, 0, 1, 0x10, 0, 0, 1]).await,
        (vec![], true)
    );
    // N2: F = 10: ERR_BROKEN, connection kept.
    let (got, closed) = raw_tcp(&server, &[0, 0, 0, 10, 0x10, 0, 0, 7, 1, 1]).await;
    assert_eq!(got, [0, 0, 0, 0x10, 0, 0, 0, 7, 0, 0, 8, 0, 0, 0, 1, 3]);
    assert!(!closed);
    // N4: version 2: ERR_VER with the right id, then closed (vector 3).
    let (got, closed) = raw_tcp(&server, &[0, 0, 0, 0x0c, 0x20, 0, 0, 1, 1, 1, 0, 0]).await;
    assert_eq!(got, [0, 0, 0, 0x10, 0, 0, 0, 1, 0, 0, 8, 0, 0, 0, 1, 1]);
    assert!(closed);
    // Pipelined: the frames before a refused one are answered, in order, before the close.
    let broken = [0, 0, 0, 10, 0x10, 0, 0, 7, 1, 1];
    let mut pipelined = [broken, broken].concat();
    pipelined.extend_from_slice(&[0, 0, 0, 8, 0x10, 0, 0, 1]);
    let (got, closed) = raw_tcp(&server, &pipelined).await;
    let err_broken = [0, 0, 0, 0x10, 0, 0, 0, 7, 0, 0, 8, 0, 0, 0, 1, 3];
    assert_eq!(got, [err_broken, err_broken].concat());
    assert!(closed);
    // N10: EOF mid-frame is just a close; the server keeps serving others.
    assert_eq!(
        raw_tcp(&server, &[0, 0, 0, 0x20, 0x10]).await.0,
        Vec::<u8>::new()
    );
    let mut c = tcp(&server).await;
    c.set(b"still", b"ok", Mode::Normal).await.unwrap();
}

#[tokio::test]
async fn connection_limit_idle_and_partial_frame_timeouts() {
    let server = Server::start_with_args(&[
        "--max-connections",
        "2",
        "--nmdb-idle-timeout-secs",
        "1",
        "--nmdb-partial-frame-timeout-secs",
        "1",
    ]);
    let mut first = tcp(&server).await;
    let mut second = tcp(&server).await;
    first.set(b"a", b"1", Mode::Normal).await.unwrap();
    second.set(b"b", b"1", Mode::Normal).await.unwrap();
    // A third connection is closed at once.
    let mut third = NmdbClient::connect_tcp(&server.nmdb_addr(), T)
        .await
        .unwrap();
    assert!(matches!(
        third.get(b"a", Mode::Normal).await,
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    // Idle connections are closed after the idle timeout, which frees their slots.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        first.get(b"a", Mode::Normal).await.is_err(),
        "idle connection closed"
    );
    let mut fresh = tcp(&server).await;
    fresh.get(b"a", Mode::Normal).await.unwrap();
    // A half-sent frame is closed after the partial-frame timeout.
    let (_, closed) = {
        let mut stream = TcpStream::connect(server.nmdb_addr()).await.unwrap();
        stream.write_all(&[0, 0, 0, 0x20, 0x10, 0]).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        (read.is_ok(), matches!(read, Ok(Ok(0)) | Ok(Err(_))))
    };
    assert!(closed);
}

/// A client pipelining frames that keep completing, each write ending half-way through the
/// next frame, is never idle for longer than the partial-frame timeout: it is not closed,
/// however long the stream lasts (the timeout counts from the last complete frame).
#[tokio::test]
async fn frames_that_keep_completing_are_not_a_stalled_partial_frame() {
    let server = Server::start_with_args(&["--nmdb-partial-frame-timeout-secs", "2"]);
    let codec = NmdbClientCodec {
        transport: Transport::Tcp,
    };
    let mut stream_bytes = BytesMut::new();
    const FRAMES: usize = 9;
    for id in 0..FRAMES as u32 {
        codec.encode_request(
            &Request::Set {
                id,
                mode: polykv_protocols::nmdb::Mode::Normal,
                key: bytes::Bytes::from(format!("k{id}")),
                value: bytes::Bytes::from(vec![b'v'; 64]),
            },
            &mut stream_bytes,
        );
    }
    // Cut the stream in the middle of every frame: 4.5 s of writes, 0.5 s apart.
    let frame = stream_bytes.len() / FRAMES;
    let mut stream = TcpStream::connect(server.nmdb_addr()).await.unwrap();
    let mut sent = 0;
    while sent < stream_bytes.len() {
        let upto = (sent + frame).min(stream_bytes.len());
        let upto = if sent == 0 { frame / 2 } else { upto };
        stream.write_all(&stream_bytes[sent..upto]).await.unwrap();
        sent = upto;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut replies = BytesMut::new();
    let mut answered = 0;
    while answered < FRAMES {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(T, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {answered} replies");
        replies.extend_from_slice(&buf[..n]);
        while let Ok(polykv_protocols::Decoded::Frame(_, used)) = codec.decode_response(&replies) {
            let _ = replies.split_to(used);
            answered += 1;
        }
    }
}

#[tokio::test]
async fn sigterm_under_load_loses_no_acknowledged_write() {
    let mut server = Server::start();
    let addr = server.nmdb_addr();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let Ok(mut c) = NmdbClient::connect_tcp(&addr, T).await else {
                    return acked;
                };
                for i in 0.. {
                    let key = format!("w{w}-{i}");
                    let mode = if i % 2 == 0 { Mode::Sync } else { Mode::Normal };
                    match c.set(key.as_bytes(), key.as_bytes(), mode).await {
                        Ok(()) => acked.push(key),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.terminate(), Some(0), "{}", server.log_text());
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 100, "load was running: {}", acked.len());
    let server = Server::start_with(Options {
        data_dir: Some(server.data_dir.clone()),
        ..Options::default()
    });
    let mut c = tcp(&server).await;
    for key in &acked {
        let got = c.get(key.as_bytes(), Mode::Normal).await.unwrap();
        assert_eq!(
            got.map(|(v, _)| v.to_vec()),
            Some(key.as_bytes().to_vec()),
            "acknowledged {key} lost"
        );
    }
}

#[test]
fn client_codec_encodes_what_libnmdb_sends() {
    // libnmdb always uses id 1: the first word of every request is 10 00 00 01.
    let mut out = BytesMut::new();
    NmdbClientCodec {
        transport: Transport::Udp,
    }
    .encode_request(&Request::Stats { id: 1 }, &mut out);
    assert_eq!(out.as_ref(), [0x10, 0, 0, 1, 1, 6, 0, 0]);
}

#[test]
fn client_verbs_on_the_command_line() {
    let server = Server::start();
    let addr = server.nmdb_addr();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--addr", &addr]);
        common::run_cli(&all, &[])
    };
    assert_eq!(cli(&["set", "greeting", "hello", "--sync"]).1.trim(), "OK");
    assert_eq!(cli(&["get", "greeting"]).1.trim(), "hello");
    let (code, out, _) = cli(&["get", "greeting", "--json"]);
    assert_eq!(code, 0);
    let parsed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(parsed["value"], "hello");
    assert_eq!(parsed["source"], "cache");
    assert_eq!(
        cli(&["cas", "greeting", "hello", "bye"]).1.trim(),
        "swapped"
    );
    assert_eq!(cli(&["set", "n", "5", "--nul"]).0, 0);
    assert_eq!(cli(&["incr", "n", "10"]).1.trim(), "15");
    assert_eq!(cli(&["incr", "n", "-20"]).1.trim(), "-5");
    cli(&["del", "n"]);
    assert_eq!(cli(&["keys"]).1.trim(), "greeting");
    let (code, out, _) = cli(&["get", "missing"]);
    assert_eq!((code, out.trim()), (1, "(not found)"));
    let (_, out, _) = cli(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(stats["db_set"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(cli(&["del", "greeting"]).1.trim(), "deleted");

    // Clear errors.
    let (code, _, err) = cli(&["watch", "k"]);
    assert_eq!(code, 1);
    assert!(err.contains("nmdb has no watch"), "{err}");
    let (code, _, err) = common::run_cli(&["incr", "k", "1", "--proto", "jsonkv"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("jsonkv has no incr verb"), "{err}");
    let port = common::free_port();
    let (code, _, err) = common::run_cli(
        &[
            "get",
            "k",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "1",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach an nmdb server"), "{err}");
}

#[tokio::test]
async fn load_generator_drives_polykv_over_nmdb() {
    let server = Server::start();
    // Normal (SYNC writes) and CACHE_ONLY (`nmdb-cache`): every reply parsed, none an error.
    for cache_only in [false, true] {
        let config = polykv_bench::RunConfig {
            addr: server.nmdb_addr(),
            connections: 4,
            depth: 8,
            workload: polykv_bench::workload::Workload {
                keys: 200,
                key_size: 16,
                value_size: 100,
                get_ratio: 0.5,
                distribution: polykv_bench::workload::Distribution::Zipf(0.99),
                sync_writes: !cache_only,
            },
            duration: None,
            requests: Some(4000),
            warmup: Duration::ZERO,
            preload: true,
            rate: None,
            seed: 7,
            progress: false,
        };
        let report = polykv_bench::run(
            std::sync::Arc::new(polykv_bench::protocol::Nmdb { cache_only }),
            "polykv",
            config,
        )
        .await
        .unwrap();
        assert_eq!((report.requests, report.errors), (4000, 0), "{cache_only}");
    }
}

/// A small load for the bench verb: 2 connections at depth 4 over 50 keys, 400 requests, half
/// GETs, no warm-up.
const SMALL_LOAD: &str =
    "--connections 2 --depth 4 --keys 50 --requests 400 --warmup 0 --get-ratio 0.5";

/// Runs `polykv` with a command line of words separated by spaces.
fn cli_line(line: &str) -> (i32, String, String) {
    common::run_cli(&line.split_whitespace().collect::<Vec<_>>(), &[])
}

#[test]
fn bench_verb_runs_rounds_and_reports_the_median() {
    let server = Server::start();
    let addr = server.nmdb_addr();
    let normal = format!("polykv=nmdb@{addr}");
    let cache = format!("cache=nmdb-cache@{addr}");
    let (code, out, err) = cli_line(&format!(
        "bench --target {normal} --target {cache} {SMALL_LOAD} --rounds 3"
    ));
    assert_eq!(code, 0, "{err}");
    // The ratio table (one row per target) and the rounds table (three rounds and a median).
    assert!(out.contains("| polykv | 2 | 4 | 50 |"), "{out}");
    assert!(out.contains("| cache | 2 | 4 | 50 |"), "{out}");
    assert!(
        out.contains("| target | round 1 ops/s | round 2 ops/s | round 3 ops/s | median |"),
        "{out}"
    );
    assert_eq!(err.matches("(round 3 of 3)").count(), 2, "{err}");
    // Rounds: 1 to 100.
    for refused in ["0", "101"] {
        let (code, _, err) =
            common::run_cli(&["bench", "--target", &normal, "--rounds", refused], &[]);
        assert_ne!(code, 0);
        assert!(err.contains("rounds"), "{err}");
    }
    let (code, out, err) = cli_line(&format!(
        "bench --target {normal} --connections 1 --requests 1 --warmup 0 --rounds 100"
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("round 100 ops/s |"), "{out}");
    // A bad target is refused before any target runs.
    let bad = format!("nope@{addr}");
    let (code, _, err) = common::run_cli(&["bench", "--target", &normal, "--target", &bad], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("nmdb-cache"), "{err}");
    assert!(!err.contains("ops/s"), "{err}");
}

/// The load generator's other protocols against the real server: every reply parsed as a
/// success (a GET miss counts as one), with sync writes where the protocol can ask.
#[test]
fn bench_verb_drives_every_polykv_protocol() {
    let server = Server::start();
    for (proto, addr) in [
        ("opencluster", server.opencluster_addr()),
        ("minority", server.minority_addr()),
        ("jsonkv", server.jsonkv_addr()),
        ("nmdb-cache", server.nmdb_addr()),
    ] {
        let (code, out, err) = cli_line(&format!(
            "bench --target {proto}@{addr} {SMALL_LOAD} --sync --json"
        ));
        assert_eq!(code, 0, "{proto}: {err}");
        let reports: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(reports[0]["requests"], 400, "{proto}: {out}");
        assert_eq!(reports[0]["errors"], 0, "{proto}: {out}");
    }
}

/// SYNC sets are made durable by direct writes to the log's mirror; with
/// `--engine-direct-sync false`, by the log's fdatasync.
#[tokio::test]
async fn sync_sets_go_through_the_logs_mirror_unless_turned_off() {
    let journal = |server: &Server| {
        let (_, body) = http(server.admin_port, "GET", "/api/stats", "").unwrap();
        let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
        let field = |name: &str| stats["journal"][name].as_u64().unwrap();
        (
            field("mirror_writes"),
            field("mirror_synced_writes"),
            field("syncs"),
        )
    };
    let server = Server::start();
    let mut c = tcp(&server).await;
    for i in 0..20 {
        c.set(format!("k{i}").as_bytes(), b"v", Mode::Sync)
            .await
            .unwrap();
    }
    // The first SYNC set starts the mirror, whose start syncs the log: it covers the other 19.
    let (writes, covered, _) = journal(&server);
    assert!(
        writes >= 1 && covered >= 19,
        "{writes} mirror writes covered {covered}"
    );

    let server = Server::start_with_args(&["--engine-direct-sync", "false"]);
    let mut c = tcp(&server).await;
    let (_, _, syncs_before) = journal(&server);
    for i in 0..20 {
        c.set(format!("k{i}").as_bytes(), b"v", Mode::Sync)
            .await
            .unwrap();
    }
    let (writes, _, syncs) = journal(&server);
    assert_eq!(writes, 0);
    assert!(
        syncs > syncs_before,
        "fdatasyncs: {syncs_before} then {syncs}"
    );
}
