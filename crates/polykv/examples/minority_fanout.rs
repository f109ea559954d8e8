//! minority fan-out benchmark: N subscribers on one key; each round one client sets the key and
//! the round's latency is the time until the last subscriber has the push. Then the sustained
//! set rate with the subscribers attached.
//!
//! `minority_fanout ADDR [SUBSCRIBERS] [ROUNDS] [SECONDS]` (defaults 1000, 200, 5).
//!
//! `minority_fanout redis ADDR [SUBSCRIBERS] [ROUNDS]`: the same fan-out measured with Redis
//! PUBLISH to SUBSCRIBERS connections SUBSCRIBEd to one channel, as a baseline for what the
//! machine's loopback allows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use polykv_client::minority::MinorityClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn report(what: &str, subscribers: usize, mut latencies: Vec<Duration>) {
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{what}: fan-out to {subscribers} subscribers, {} rounds: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

/// Subscribers connecting and subscribing at once. 10 000 connects in one burst overflowed
/// the server's accept queue (somaxconn 4096): some connections were then reset, and the run
/// waited for ever at its barrier. Both targets join the same way.
fn joining() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(1000))
}

fn resp(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Redis pub/sub baseline: each subscriber reads messages `*3 $7 message $6 fanout $N ROUND`.
async fn redis(addr: String, subscribers: usize, rounds: u32) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Instant)>();
    let ready = Arc::new(tokio::sync::Barrier::new(subscribers + 1));
    let joining = joining();
    for _ in 0..subscribers {
        let (addr, tx, ready) = (addr.clone(), tx.clone(), ready.clone());
        let joining = joining.clone();
        tokio::spawn(async move {
            let permit = joining.acquire_owned().await.expect("never closed");
            let mut s = TcpStream::connect(&addr)
                .await
                .expect("subscriber connects");
            s.set_nodelay(true).expect("nodelay");
            s.write_all(&resp(&[b"SUBSCRIBE", b"fanout"]))
                .await
                .expect("subscribe");
            let mut reader = BufReader::new(s);
            // The subscribe confirmation: *3 $9 subscribe $6 fanout :1 = 6 lines.
            let mut line = Vec::new();
            for _ in 0..6 {
                read_line(&mut reader, &mut line).await;
            }
            drop(permit);
            ready.wait().await;
            loop {
                // *3, $7, message, $6, fanout, $N, payload
                for _ in 0..6 {
                    read_line(&mut reader, &mut line).await;
                }
                read_line(&mut reader, &mut line).await;
                let round = String::from_utf8_lossy(&line)
                    .trim()
                    .parse()
                    .unwrap_or(u32::MAX);
                if tx.send((round, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    ready.wait().await;
    let mut publisher = TcpStream::connect(&addr).await.expect("publisher connects");
    publisher.set_nodelay(true).expect("nodelay");
    let mut latencies = Vec::new();
    let mut trace = Trace::default();
    let mut reply = [0u8; 64];
    for round in 0..WARMUP_ROUNDS + rounds {
        let sent = Instant::now();
        publisher
            .write_all(&resp(&[
                b"PUBLISH",
                b"fanout",
                round.to_string().as_bytes(),
            ]))
            .await
            .expect("publish");
        let _ = publisher.read(&mut reply).await.expect("publish reply");
        let acked = Instant::now();
        let (first, last) = arrivals(&mut rx, round, subscribers, sent).await;
        if round >= WARMUP_ROUNDS {
            trace.round(sent, acked, first, last);
            latencies.push(last - sent);
        }
    }
    report("redis PUBLISH", subscribers, latencies);
    trace.write("redis");
}

/// Rounds run before the measured ones, for both servers alike: the first fan-out of a run pays
/// one-off costs (polykv's first round took 16 ms where the next ones take 3, which alone made
/// the p99 of 200 rounds).
const WARMUP_ROUNDS: u32 = 5;

/// Waits for every subscriber's copy of `round`: the first and the last arrival.
async fn arrivals(
    rx: &mut mpsc::UnboundedReceiver<(u32, Instant)>,
    round: u32,
    subscribers: usize,
    sent: Instant,
) -> (Instant, Instant) {
    let (mut first, mut last) = (None::<Instant>, sent);
    let mut arrived = 0;
    while arrived < subscribers {
        let (r, at) = rx.recv().await.expect("pushes");
        if r == round {
            arrived += 1;
            first = Some(first.map_or(at, |f| f.min(at)));
            last = last.max(at);
        }
    }
    (first.unwrap_or(sent), last)
}

/// Per-round timings, written to `$FANOUT_TRACE.TARGET` (one line a round, µs after the send:
/// the set's or PUBLISH's reply, the first and the last subscriber's copy) when that variable
/// is set: to tell where a slow round lost its time.
#[derive(Default)]
struct Trace(Vec<(u128, u128, u128)>);

impl Trace {
    fn round(&mut self, sent: Instant, acked: Instant, first: Instant, last: Instant) {
        let us = |at: Instant| at.saturating_duration_since(sent).as_micros();
        self.0.push((us(acked), us(first), us(last)));
    }

    fn write(&self, target: &str) {
        let Ok(path) = std::env::var("FANOUT_TRACE") else {
            return;
        };
        let lines: String = self
            .0
            .iter()
            .map(|(acked, first, last)| format!("{acked} {first} {last}\n"))
            .collect();
        if let Err(e) = std::fs::write(format!("{path}.{target}"), lines) {
            eprintln!("cannot write the trace: {e}");
        }
    }
}

async fn read_line(reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>) {
    use tokio::io::AsyncBufReadExt;
    line.clear();
    let n = reader.read_until(b'\n', line).await.expect("read");
    assert!(n > 0, "redis closed the connection");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("redis") {
        args.next();
        let addr = args.next().unwrap_or_else(|| "127.0.0.1:6379".into());
        let subscribers = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
        let rounds = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
        redis(addr, subscribers, rounds).await;
        return;
    }
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8000".into());
    let subscribers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    // Thousands of subscribers connect and subscribe at once: on a shared machine that can take
    // longer than a client's usual 30 s.
    let timeout = Duration::from_secs(120);

    // Every subscriber reports (round, arrival time) for each push.
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Instant)>();
    let ready = Arc::new(tokio::sync::Barrier::new(subscribers + 1));
    let joining = joining();
    for _ in 0..subscribers {
        let (addr, tx, ready) = (addr.clone(), tx.clone(), ready.clone());
        let joining = joining.clone();
        tokio::spawn(async move {
            let permit = joining.acquire_owned().await.expect("never closed");
            let mut c = MinorityClient::connect(&addr, timeout)
                .await
                .expect("subscriber connects");
            c.notify(b"fanout", b"key").await.expect("notify");
            drop(permit);
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
    let mut trace = Trace::default();
    for round in 0..WARMUP_ROUNDS + rounds {
        let sent = Instant::now();
        writer
            .set(b"fanout", b"key", round.to_string().as_bytes())
            .await
            .expect("set");
        let acked = Instant::now();
        let (first, last) = arrivals(&mut rx, round, subscribers, sent).await;
        if round >= WARMUP_ROUNDS {
            trace.round(sent, acked, first, last);
            latencies.push(last - sent);
        }
    }
    report("polykv minority set", subscribers, latencies);
    trace.write("polykv");

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
