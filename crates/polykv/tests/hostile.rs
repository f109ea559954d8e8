//! Hostile input against the running server, for every implemented protocol: random bytes, a
//! client that sends one byte at a time, half-open connections, a thousand idle connections, and a
//! flood of maximum-size frames. Each time: the documented outcome, other clients keep being
//! served, and memory stays bounded.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use polykv_client::jsonkv::JsonkvClient;
use polykv_client::minority::MinorityClient;
use polykv_client::nmdb::{Mode, NmdbClient};
use polykv_client::opencluster::OpenClusterClient;
use polykv_client::smalld::SmalldClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

fn hostile_server() -> Server {
    Server::start_with_args(&[
        "--smalld-secret-key",
        "7",
        "--smalld-request-timeout-secs",
        "2",
        "--nmdb-partial-frame-timeout-secs",
        "2",
        "--minority-partial-frame-timeout-secs",
        "2",
        "--opencluster-partial-frame-timeout-secs",
        "2",
        "--jsonkv-idle-timeout-secs",
        "2",
        "--engine-cache-bytes",
        "33554432",
    ])
}

/// Every protocol still answers a well-formed request.
async fn everyone_is_served(server: &Server) {
    let mut n = NmdbClient::connect_tcp(&server.nmdb_addr(), T)
        .await
        .unwrap();
    n.set(b"alive", b"yes", Mode::Normal).await.unwrap();
    assert_eq!(
        n.get(b"alive", Mode::Normal)
            .await
            .unwrap()
            .unwrap()
            .0
            .as_ref(),
        b"yes"
    );
    let mut m = MinorityClient::connect(&server.minority_addr(), T)
        .await
        .unwrap();
    m.heartbeat().await.unwrap();
    assert!(SmalldClient::new(&server.smalld_addr(), 7, T)
        .set(b"alive", b"yes")
        .await
        .unwrap());
    let mut o = OpenClusterClient::connect(&server.opencluster_addr(), T)
        .await
        .unwrap();
    o.set_int(b"alive", 1, 0, false).await.unwrap();
    assert_eq!(o.get_int(b"alive").await.unwrap(), Some(1));
    let mut j = JsonkvClient::connect(&server.jsonkv_addr(), T)
        .await
        .unwrap();
    j.put("alive", "yes").await.unwrap();
    assert_eq!(j.get("alive").await.unwrap().as_deref(), Some("yes"));
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_every_port() {
    let server = hostile_server();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for addr in [
        server.nmdb_addr(),
        server.minority_addr(),
        server.smalld_addr(),
        server.opencluster_addr(),
        server.jsonkv_addr(),
        server.jsonkv_rpc_addr(),
        server.agent_addr(),
    ] {
        for _ in 0..30 {
            let len = (xorshift(&mut seed) % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut sink)).await;
        }
    }
    // Random datagrams to nmdb's and jsonkv's UDP ports.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for target in [server.nmdb_addr(), server.jsonkv_udp_addr()] {
        for _ in 0..100 {
            let len = (xorshift(&mut seed) % 100) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
            let _ = udp.send_to(&bytes, &target).await;
        }
    }
    everyone_is_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_at_a_time_and_half_open_connections() {
    let server = hostile_server();
    // A valid nmdb GET, one byte every 100 ms: answered, while others are served meanwhile.
    let frame = [0u8, 0, 0, 0x11, 0x10, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, b'k'];
    let mut slow = TcpStream::connect(server.nmdb_addr()).await.unwrap();
    for (i, byte) in frame.iter().enumerate() {
        slow.write_all(&[*byte]).await.unwrap();
        if i == 8 {
            everyone_is_served(&server).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reply = [0u8; 12];
    tokio::time::timeout(T, slow.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[8..], [0, 0, 8, 4], "NOTIN");
    // Half-sent frames that stall are closed after the partial-frame timeout, on each protocol.
    for (addr, partial) in [
        (server.nmdb_addr(), &[0u8, 0, 0, 0x20, 0x10][..]),
        (server.minority_addr(), &[0x80u8, 1, 0, 4][..]),
        (server.smalld_addr(), &[0u8, 0, 0, 7, 0, 1][..]),
        (
            server.opencluster_addr(),
            &[0x08u8, 0x34, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0][..],
        ),
    ] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(partial).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{addr}: closed");
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{addr}: not before the timeout"
        );
    }
    // Half-open: the client half-closes mid-frame; the server discards it and closes.
    let mut s = TcpStream::connect(server.nmdb_addr()).await.unwrap();
    s.write_all(&[0, 0, 0, 0x20, 0x10]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut sink = Vec::new();
    assert_eq!(
        tokio::time::timeout(T, s.read_to_end(&mut sink))
            .await
            .unwrap()
            .unwrap(),
        0
    );
    everyone_is_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections() {
    let server = hostile_server();
    let before = server.rss_mib();
    // A thousand, or what the descriptor limit allows (the server shares it).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let count = (limit.rlim_cur as usize / 3).clamp(100, 1000);
    let mut idle = Vec::new();
    for i in 0..count {
        let addr = match i % 4 {
            0 => server.nmdb_addr(),
            1 => server.minority_addr(),
            2 => server.jsonkv_addr(),
            _ => server.opencluster_addr(),
        };
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    everyone_is_served(&server).await;
    let with_idle = server.rss_mib();
    assert!(
        with_idle < before + 100,
        "{count} idle connections cost {} MiB",
        with_idle - before
    );
    drop(idle);
    everyone_is_served(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_maximum_size_frames() {
    let server = hostile_server();
    let before = server.rss_mib();
    // nmdb: 4 connections, each pipelining 40 SETs in 65 536-byte frames, never reading replies
    // until the end (the server stops reading them when its output cap is reached).
    let mut floods = Vec::new();
    for c in 0..4u8 {
        let addr = server.nmdb_addr();
        floods.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut frame = vec![
                0u8, 1, 0, 0, 0x10, 0, 0, 1, 1, 2, 0, 0, 0, 0, 0, 3, 0, 0, 0xff, 0xe9, b'k', b'0',
                c,
            ];
            frame.resize(65_536, c);
            for _ in 0..40 {
                s.write_all(&frame).await.unwrap();
            }
            let mut replies = vec![0u8; 40 * 12];
            tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut replies))
                .await
                .unwrap()
                .unwrap();
            assert!(
                replies.chunks(12).all(|r| r[8..] == [0, 0, 8, 3]),
                "every SET answered OK"
            );
        }));
    }
    // minority: bodies at the limit are served; one past it is refused without being read.
    let mut m = MinorityClient::connect(&server.minority_addr(), T)
        .await
        .unwrap();
    m.set(b"big", b"v", &vec![7u8; (1 << 20) - 4])
        .await
        .unwrap();
    assert_eq!(
        m.get(b"big", b"v").await.unwrap().unwrap().len(),
        (1 << 20) - 4
    );
    // OpenCluster: 2 connections pipelining 20 set_string each at the 1 MiB payload limit,
    // and one header over it (failinfo 3, then close, payload never read).
    for c in 0..2u8 {
        let addr = server.opencluster_addr();
        floods.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let value_len = (1u32 << 20) - 24 - 1;
            let mut frame = vec![0x07u8, 0xe4, 0, 0, 0, 0, 0, 1];
            frame.extend_from_slice(&(1u32 << 20).to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, c, 0, 0, 0, 0, 0, 0, 0, 0]);
            frame.extend_from_slice(&[0, 0, 0, 1, b'k']);
            frame.extend_from_slice(&value_len.to_be_bytes());
            frame.resize(12 + (1 << 20), c);
            for _ in 0..20 {
                s.write_all(&frame).await.unwrap();
            }
            let mut replies = vec![0u8; 20 * 12];
            tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut replies))
                .await
                .unwrap()
                .unwrap();
            assert!(
                replies.chunks(12).all(|r| r[..4] == [0, 1, 0x07, 0xe4]),
                "every set_string acked"
            );
        }));
    }
    // jsonkv: 2 connections pipelining 10 frames each of nearly the 1 MiB frame limit, every
    // frame a batch of 15 puts of 65 000-byte values.
    for c in 0..2u8 {
        let addr = server.jsonkv_addr();
        floods.push(tokio::spawn(async move {
            use polykv_protocols::jsonkv::{Command, Id, Item, JsonkvClientCodec, RequestPayload};
            use polykv_protocols::ClientCodec;
            let items = (0..15)
                .map(|i| Item::Command {
                    command: Command::Put {
                        key: format!("flood-{c}-{i}"),
                        value: "x".repeat(65_000),
                    },
                    id: Id::number(i),
                })
                .collect();
            let mut frame = bytes::BytesMut::new();
            JsonkvClientCodec::default().encode_request(&RequestPayload::Batch(items), &mut frame);
            assert!(frame.len() <= 1 << 20, "{} bytes", frame.len());
            let mut s = TcpStream::connect(addr).await.unwrap();
            for _ in 0..10 {
                s.write_all(&frame).await.unwrap();
            }
            // Read the 10 replies by their length fields.
            for _ in 0..10 {
                let mut header = [0u8; 16];
                tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut header))
                    .await
                    .unwrap()
                    .unwrap();
                let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
                let mut body = vec![0u8; len as usize - 16];
                s.read_exact(&mut body).await.unwrap();
                let text = String::from_utf8(body).unwrap();
                assert_eq!(text.matches(r#""code":"0""#).count(), 15, "{text}");
            }
        }));
    }
    let mut over = TcpStream::connect(server.opencluster_addr()).await.unwrap();
    over.write_all(&[0x07, 0xe4, 0, 0, 0, 0, 0, 9, 0, 0x10, 0, 1])
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(T, over.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..4], &[0, 3, 0x07, 0xe4], "failinfo, then close");
    assert_eq!(&reply[12..16], &[0, 0, 0, 3]);
    for flood in floods {
        flood.await.unwrap();
    }
    everyone_is_served(&server).await;
    let after = server.rss_mib();
    assert!(
        after < before + 200,
        "memory grew from {before} to {after} MiB"
    );
}
