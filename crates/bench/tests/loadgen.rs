//! The load generator's own correctness: request counts, error accounting, and the memcached
//! and RESP encoders against a real memcached and Redis when they are installed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use polykv_bench::protocol::{self, Memcached};
use polykv_bench::workload::{Distribution, Workload};
use polykv_bench::{run, RunConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn config(addr: String, requests: u64, get_ratio: f64) -> RunConfig {
    RunConfig {
        addr,
        connections: 4,
        depth: 8,
        workload: Workload {
            keys: 100,
            key_size: 16,
            value_size: 10,
            get_ratio,
            distribution: Distribution::Uniform,
            sync_writes: false,
        },
        duration: None,
        requests: Some(requests),
        warmup: Duration::ZERO,
        preload: false,
        rate: None,
        seed: 1,
        progress: false,
    }
}

/// A fake memcached that answers every request line, failing every third one, and counts them.
async fn fake_memcached(seen: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let mut out = Vec::new();
                    // Requests are "get KEY\r\n" (get_ratio 1.0 in these tests).
                    while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                        buf.drain(..end + 2);
                        let count = seen.fetch_add(1, Ordering::SeqCst) + 1;
                        out.extend_from_slice(if count.is_multiple_of(3) {
                            b"SERVER_ERROR busy\r\n" as &[u8]
                        } else {
                            b"END\r\n"
                        });
                    }
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn counts_requests_and_errors_exactly() {
    let seen = Arc::new(AtomicU64::new(0));
    let addr = fake_memcached(seen.clone()).await;
    let report = run(Arc::new(Memcached), "fake", config(addr, 3000, 1.0))
        .await
        .unwrap();
    assert_eq!(report.requests, 3000);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3000,
        "no request sent beyond the budget"
    );
    assert_eq!(report.errors, 1000, "every third reply was an error");
    assert!(report.latency_us.p50 > 0.0 && report.latency_us.max >= report.latency_us.p99);
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = run(
        Arc::new(Memcached),
        "x",
        config(format!("127.0.0.1:{port}"), 10, 1.0),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

/// Starts `program args` with a free port substituted for `{port}`, if the program exists.
async fn start_real(program: &str, args: &[&str]) -> Option<(tokio::process::Child, String)> {
    if std::process::Command::new("which")
        .arg(program)
        .output()
        .ok()?
        .stdout
        .is_empty()
    {
        eprintln!("{program} is not installed: skipping its encoder test");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port()
        .to_string();
    let args: Vec<String> = args.iter().map(|a| a.replace("{port}", &port)).collect();
    let child = tokio::process::Command::new(program)
        .args(&args)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Some((child, addr));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn encoders_work_against_real_memcached_and_redis() {
    let servers = [
        (
            "memcached",
            vec![
                "-p",
                "{port}",
                "-U",
                "0",
                "-l",
                "127.0.0.1",
                "-u",
                "root",
                "-t",
                "1",
            ],
        ),
        (
            "redis-server",
            vec![
                "--port",
                "{port}",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        ),
    ];
    for (program, args) in servers {
        let Some((_child, addr)) = start_real(program, &args).await else {
            continue;
        };
        let proto = if program == "memcached" {
            "memcached"
        } else {
            "redis"
        };
        let mut cfg = config(addr, 2000, 0.5);
        cfg.preload = true;
        let report = run(Arc::from(protocol::by_name(proto).unwrap()), proto, cfg)
            .await
            .unwrap();
        assert_eq!((report.requests, report.errors), (2000, 0), "{program}");
    }
}
