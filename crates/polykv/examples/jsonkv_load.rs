//! jsonkv TCP load: N connections, each sending one request at a time (depth 1). First every
//! connection puts for SECONDS, then every connection gets keys that were put, for SECONDS.
//! Prints the rate and latency percentiles of each phase.
//!
//! `jsonkv_load ADDR [CONNECTIONS] [SECONDS] [KEYS] [VALUE_SIZE]` (defaults 50, 3, 100000, 100).

use std::time::{Duration, Instant};

use polykv_client::jsonkv::JsonkvClient;

const T: Duration = Duration::from_secs(30);

/// Runs `connections` clients for `seconds`, each putting (or getting) keys in turn. Returns
/// every latency, in microseconds.
async fn phase(
    addr: &str,
    connections: u64,
    seconds: u64,
    keys: u64,
    value: &str,
    put: bool,
) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (addr, value) = (addr.to_string(), value.to_string());
        tasks.push(tokio::spawn(async move {
            let mut client = JsonkvClient::connect(&addr, T).await.expect("connect");
            let mut latencies = Vec::new();
            let mut n = c;
            while Instant::now() < deadline {
                let key = format!("key{:012}", n % keys);
                let started = Instant::now();
                if put {
                    client.put(&key, &value).await.expect("put");
                } else {
                    client.get(&key).await.expect("get");
                }
                latencies.push(started.elapsed().as_micros() as u64);
                n += connections;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}

fn report(name: &str, seconds: u64, mut latencies: Vec<u64>) {
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{name}: {:.0} ops/s, p50 {} µs, p99 {} µs, p999 {} µs, max {} µs ({} ops)",
        latencies.len() as f64 / seconds as f64,
        pick(0.50),
        pick(0.99),
        pick(0.999),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:15001".into());
    let connections: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let keys: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000)
        .max(1);
    let value_size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let value = "v".repeat(value_size);
    let puts = phase(&addr, connections, seconds, keys, &value, true).await;
    report(&format!("put ({connections} connections)"), seconds, puts);
    let gets = phase(&addr, connections, seconds, keys, &value, false).await;
    report(&format!("get ({connections} connections)"), seconds, gets);
}
