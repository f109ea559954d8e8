//! minority fan-out benchmark: N subscribers on one key; each round one client sets the key and
//! the round's latency is the time until the last subscriber has the push. Then the sustained
//! set rate with the subscribers attached.
//!
//! `minority_fanout ADDR [SUBSCRIBERS] [ROUNDS] [SECONDS]` (defaults 1000, 200, 5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use polykv_client::minority::MinorityClient;
use tokio::sync::mpsc;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8000".into());
    let subscribers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let timeout = Duration::from_secs(30);

    // Every subscriber reports (round, arrival time) for each push.
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Instant)>();
    let ready = Arc::new(tokio::sync::Barrier::new(subscribers + 1));
    for _ in 0..subscribers {
        let (addr, tx, ready) = (addr.clone(), tx.clone(), ready.clone());
        tokio::spawn(async move {
            let mut c = MinorityClient::connect(&addr, timeout)
                .await
                .expect("subscriber connects");
            c.notify(b"fanout", b"key").await.expect("notify");
            ready.wait().await;
            while let Ok(Some(push)) = c.next_push(Duration::from_secs(3600)).await {
                let round = String::from_utf8_lossy(&push.value)
                    .parse()
                    .unwrap_or(u32::MAX);
                if tx.send((round, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    ready.wait().await;
    let mut writer = MinorityClient::connect(&addr, timeout)
        .await
        .expect("writer connects");
    let mut latencies = Vec::new();
    for round in 0..rounds {
        let sent = Instant::now();
        writer
            .set(b"fanout", b"key", round.to_string().as_bytes())
            .await
            .expect("set");
        let mut last = sent;
        let mut arrived = 0;
        while arrived < subscribers {
            let (r, at) = rx.recv().await.expect("pushes");
            if r == round {
                arrived += 1;
                last = last.max(at);
            }
        }
        latencies.push(last - sent);
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "fan-out to {subscribers} subscribers, {rounds} rounds: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );

    // Sustained sets to other keys of the same dataId family while the subscribers stay attached,
    // from 8 writers.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut writers = Vec::new();
    for w in 0..8 {
        let addr = addr.clone();
        writers.push(tokio::spawn(async move {
            let mut c = MinorityClient::connect(&addr, timeout)
                .await
                .expect("writer connects");
            let mut n = 0u64;
            while Instant::now() < deadline {
                c.set(b"load", format!("k{w}-{}", n % 100).as_bytes(), b"v")
                    .await
                    .expect("set");
                n += 1;
            }
            n
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for w in writers {
        total += w.await.expect("writer");
    }
    println!(
        "sustained set rate with {subscribers} subscribers attached: {:.0} sets/s (8 writers, durability as configured)",
        total as f64 / started.elapsed().as_secs_f64()
    );
}
