//! polykv's load generator: many connections, pipelining, key distributions, get/set mix,
//! warm-up, preload, rate limit; throughput and HDR-histogram latency percentiles. Speaks
//! polykv's protocols plus memcached text and RESP, so the same load drives memcached and Redis.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod protocol;
pub mod server_cpu;
pub mod workload;

pub use protocol::LoadProtocol;
use workload::{key_bytes, KeyPicker, Workload};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to {addr} failed: {message}")]
    Connection { addr: String, message: String },
    #[error("invalid settings: {0}")]
    Invalid(String),
}

/// One run against one server.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub addr: String,
    pub connections: usize,
    pub depth: usize,
    pub workload: Workload,
    /// Stop after this long (after warm-up)...
    pub duration: Option<Duration>,
    /// ...or after this many measured requests.
    pub requests: Option<u64>,
    pub warmup: Duration,
    /// SET every key once before measuring.
    pub preload: bool,
    /// Most requests per second over all connections.
    pub rate: Option<u64>,
    pub seed: u64,
    pub progress: bool,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Summarises a histogram of nanoseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub protocol: String,
    pub addr: String,
    pub connections: usize,
    pub depth: usize,
    pub get_ratio: f64,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub latency_us: Latency,
    /// CPU time (user + system, every thread) the server spent per request over the measured
    /// interval; `None` when the server is not a process on this machine that can be read.
    pub server_cpu_us_per_op: Option<f64>,
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Requests left when a request count is the limit.
    budget: Option<AtomicU64>,
    done: AtomicU64,
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 100 s at 3 significant digits: constant arguments that are always valid.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

struct ConnResult {
    histogram: Histogram<u64>,
    requests: u64,
    errors: u64,
}

/// Runs the load against one server and reports.
pub async fn run(
    protocol: Arc<dyn LoadProtocol>,
    target: &str,
    config: RunConfig,
) -> Result<Report, BenchError> {
    if config.connections == 0 || config.depth == 0 {
        return Err(BenchError::Invalid(
            "connections and depth must be at least 1".into(),
        ));
    }
    if config.duration.is_none() && config.requests.is_none() {
        return Err(BenchError::Invalid(
            "give a duration or a request count".into(),
        ));
    }
    if config.preload {
        preload(protocol.clone(), &config).await?;
    }
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(config.warmup.is_zero()),
        stop: AtomicBool::new(false),
        budget: config.requests.map(AtomicU64::new),
        done: AtomicU64::new(0),
    });
    let picker = Arc::new(KeyPicker::new(
        config.workload.keys,
        config.workload.distribution,
    ));
    let config = Arc::new(config);
    let mut tasks = Vec::new();
    for id in 0..config.connections {
        let stream =
            TcpStream::connect(&config.addr)
                .await
                .map_err(|source| BenchError::Connect {
                    addr: config.addr.clone(),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        tasks.push(tokio::spawn(connection(
            id,
            stream,
            protocol.clone(),
            config.clone(),
            picker.clone(),
            shared.clone(),
        )));
    }
    if !config.warmup.is_zero() {
        tokio::time::sleep(config.warmup).await;
        shared.measuring.store(true, Ordering::SeqCst);
    }
    let server = server_cpu::ServerCpu::find(&config.addr);
    let cpu_at_start = server.as_ref().and_then(server_cpu::ServerCpu::seconds);
    let started = Instant::now();
    let progress = config.progress && std::io::stderr().is_terminal();
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(
            config
                .duration
                .map_or_else(|| config.requests.unwrap_or(0), |d| d.as_secs()),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = shared.done.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        if let Some(bar) = &bar {
            bar.set_message(format!(
                "{target}: {:.0} ops/s",
                done as f64 / elapsed.as_secs_f64().max(0.001)
            ));
            bar.set_position(if config.duration.is_some() {
                elapsed.as_secs()
            } else {
                done
            });
        }
        let time_up = config.duration.is_some_and(|d| elapsed >= d);
        let budget_spent = config.requests.is_some_and(|r| done >= r);
        let all_finished = tasks.iter().all(|t| t.is_finished());
        if time_up || budget_spent || all_finished {
            break;
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_at_end = server.as_ref().and_then(server_cpu::ServerCpu::seconds);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut histogram = new_histogram();
    let (mut requests, mut errors) = (0, 0);
    for task in tasks {
        let result = task.await.map_err(|e| BenchError::Connection {
            addr: config.addr.clone(),
            message: e.to_string(),
        })??;
        let _ = histogram.add(&result.histogram);
        requests += result.requests;
        errors += result.errors;
    }
    Ok(Report {
        target: target.to_string(),
        protocol: protocol.name().to_string(),
        addr: config.addr.clone(),
        connections: config.connections,
        depth: config.depth,
        get_ratio: config.workload.get_ratio,
        requests,
        errors,
        seconds,
        ops_per_sec: requests as f64 / seconds.max(1e-9),
        latency_us: Latency::from_histogram(&histogram),
        server_cpu_us_per_op: match (cpu_at_start, cpu_at_end) {
            (Some(start), Some(end)) if requests > 0 => {
                Some((end - start).max(0.0) * 1e6 / requests as f64)
            }
            _ => None,
        },
    })
}

async fn connection(
    id: usize,
    mut stream: TcpStream,
    protocol: Arc<dyn LoadProtocol>,
    config: Arc<RunConfig>,
    picker: Arc<KeyPicker>,
    shared: Arc<Shared>,
) -> Result<ConnResult, BenchError> {
    let fail = |message: String| BenchError::Connection {
        addr: config.addr.clone(),
        message,
    };
    let mut rng = workload::rng(config.seed.wrapping_add(id as u64 * 7919));
    let value = vec![b'v'; config.workload.value_size];
    let mut key = Vec::new();
    let mut out = Vec::with_capacity(config.depth * (64 + config.workload.value_size));
    let mut input: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut histogram = new_histogram();
    let (mut requests, mut errors) = (0u64, 0u64);
    // Each connection's share of the rate, as a pause between batches.
    let batch_interval = config.rate.map(|rate| {
        Duration::from_secs_f64(
            config.depth as f64 * config.connections as f64 / rate.max(1) as f64,
        )
    });
    let mut next_batch = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let mut batch = config.depth as u64;
        if let (Some(budget), true) = (&shared.budget, shared.measuring.load(Ordering::Relaxed)) {
            // Take up to a batch from the shared budget, never below zero.
            let want = batch;
            let before = budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    Some(left - left.min(want))
                })
                .unwrap_or(0);
            batch = want.min(before);
            if batch == 0 {
                break;
            }
        }
        if let Some(interval) = batch_interval {
            tokio::time::sleep_until(next_batch.into()).await;
            next_batch += interval;
        }
        out.clear();
        for _ in 0..batch {
            key_bytes(picker.pick(&mut rng), config.workload.key_size, &mut key);
            if rng.random::<f64>() < config.workload.get_ratio {
                protocol.encode_get(&key, &mut out);
            } else {
                protocol.encode_set(&key, &value, config.workload.sync_writes, &mut out);
            }
        }
        let measuring = shared.measuring.load(Ordering::Relaxed);
        let sent = Instant::now();
        stream
            .write_all(&out)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut replies = 0;
        let mut parsed = 0;
        while replies < batch {
            match protocol.decode_reply(&input[parsed..]).map_err(&fail)? {
                Some((used, ok)) => {
                    parsed += used;
                    replies += 1;
                    if measuring {
                        let _ = histogram.record(sent.elapsed().as_nanos().max(1) as u64);
                        requests += 1;
                        errors += u64::from(!ok);
                    }
                }
                None => {
                    input.drain(..parsed);
                    parsed = 0;
                    if input.capacity() - input.len() < 16 * 1024 {
                        input.reserve(64 * 1024);
                    }
                    let read = stream
                        .read_buf(&mut input)
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    if read == 0 {
                        return Err(fail("the server closed the connection".into()));
                    }
                }
            }
        }
        input.drain(..parsed);
        if measuring {
            shared.done.fetch_add(batch, Ordering::Relaxed);
        }
    }
    Ok(ConnResult {
        histogram,
        requests,
        errors,
    })
}

/// SETs every key once, over up to 8 connections with depth 32.
async fn preload(protocol: Arc<dyn LoadProtocol>, config: &RunConfig) -> Result<(), BenchError> {
    let connections = config.connections.clamp(1, 8) as u64;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let protocol = protocol.clone();
        let addr = config.addr.clone();
        let workload = config.workload.clone();
        tasks.push(tokio::spawn(async move {
            let fail = |message: String| BenchError::Connection {
                addr: addr.clone(),
                message,
            };
            let mut stream =
                TcpStream::connect(&addr)
                    .await
                    .map_err(|source| BenchError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
            let value = vec![b'v'; workload.value_size];
            let (mut key, mut out, mut input) = (Vec::new(), Vec::new(), Vec::new());
            let mut index = c;
            while index < workload.keys {
                out.clear();
                let mut batch = 0;
                while batch < 32 && index < workload.keys {
                    key_bytes(index, workload.key_size, &mut key);
                    protocol.encode_set(&key, &value, false, &mut out);
                    index += connections;
                    batch += 1;
                }
                stream
                    .write_all(&out)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let mut replies = 0;
                while replies < batch {
                    match protocol.decode_reply(&input).map_err(&fail)? {
                        Some((used, _)) => {
                            input.drain(..used);
                            replies += 1;
                        }
                        None => {
                            let mut chunk = [0u8; 16 * 1024];
                            let read = stream
                                .read(&mut chunk)
                                .await
                                .map_err(|e| fail(e.to_string()))?;
                            if read == 0 {
                                return Err(fail("closed during preload".into()));
                            }
                            input.extend_from_slice(&chunk[..read]);
                        }
                    }
                }
            }
            Ok::<_, BenchError>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| BenchError::Connection {
            addr: config.addr.clone(),
            message: e.to_string(),
        })??;
    }
    Ok(())
}

/// A table of reports with each one's throughput relative to the first.
pub fn ratio_table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| target | conns | depth | get% | ops/s | ratio | p50 µs | p99 µs | p999 µs | max µs | errors | server CPU µs/op |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let base = reports.first().map_or(1.0, |r| r.ops_per_sec.max(1e-9));
    for r in reports {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
            r.target,
            r.connections,
            r.depth,
            r.get_ratio * 100.0,
            r.ops_per_sec,
            r.ops_per_sec / base,
            r.latency_us.p50,
            r.latency_us.p99,
            r.latency_us.p999,
            r.latency_us.max,
            r.errors,
            r.server_cpu_us_per_op
                .map_or_else(|| "—".to_string(), |cpu| format!("{cpu:.2}")),
        ));
    }
    out
}

/// The report of the round with the median throughput (the lower middle one for an even count).
pub fn median_report(rounds: &[Report]) -> Option<Report> {
    let mut sorted: Vec<&Report> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    sorted
        .get((sorted.len().max(1) - 1) / 2)
        .map(|r| (*r).clone())
}

/// Throughput of every round of every target, as a markdown table (`rounds[target][round]`).
pub fn rounds_table(rounds: &[Vec<Report>]) -> String {
    let count = rounds.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = String::from("| target |");
    for round in 1..=count {
        out.push_str(&format!(" round {round} ops/s |"));
    }
    out.push_str(" median |\n|---|");
    out.push_str(&"---|".repeat(count + 1));
    out.push('\n');
    for target in rounds {
        let Some(median) = median_report(target) else {
            continue;
        };
        out.push_str(&format!("| {} |", median.target));
        for report in target {
            out.push_str(&format!(" {:.0} |", report.ops_per_sec));
        }
        out.push_str(&" |".repeat(count - target.len()));
        out.push_str(&format!(" {:.0} |\n", median.ops_per_sec));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(target: &str, ops_per_sec: f64) -> Report {
        Report {
            target: target.into(),
            protocol: "nmdb".into(),
            addr: "127.0.0.1:1".into(),
            connections: 1,
            depth: 1,
            get_ratio: 1.0,
            requests: 1,
            errors: 0,
            seconds: 1.0,
            ops_per_sec,
            latency_us: Latency::default(),
            server_cpu_us_per_op: None,
        }
    }

    #[test]
    fn median_of_rounds() {
        let rounds = vec![report("a", 30.0), report("a", 10.0), report("a", 20.0)];
        assert_eq!(median_report(&rounds).map(|r| r.ops_per_sec), Some(20.0));
        let even = vec![report("a", 40.0), report("a", 10.0)];
        assert_eq!(median_report(&even).map(|r| r.ops_per_sec), Some(10.0));
        assert!(median_report(&[]).is_none());
        let table = rounds_table(&[rounds, vec![report("b", 5.0)]]);
        assert_eq!(
            table,
            "| target | round 1 ops/s | round 2 ops/s | round 3 ops/s | median |\n\
             |---|---|---|---|---|\n\
             | a | 30 | 10 | 20 | 20 |\n\
             | b | 5 | | | 5 |\n"
        );
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        // 1..=1000 µs, once each.
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::from_histogram(&h);
        let close = |a: f64, b: f64| (a - b).abs() / b < 0.01;
        assert!(close(l.p50, 500.0), "{l:?}");
        assert!(close(l.p90, 900.0), "{l:?}");
        assert!(close(l.p99, 990.0), "{l:?}");
        assert!(close(l.p999, 999.0), "{l:?}");
        assert!(close(l.max, 1000.0), "{l:?}");
        assert!(close(l.mean, 500.5), "{l:?}");
    }

    #[test]
    fn ratio_table_is_relative_to_the_first() {
        let report = |target: &str, ops: f64, cpu: Option<f64>| Report {
            target: target.into(),
            protocol: "x".into(),
            addr: "a".into(),
            connections: 50,
            depth: 1,
            get_ratio: 0.9,
            requests: 1,
            errors: 0,
            seconds: 1.0,
            ops_per_sec: ops,
            latency_us: Latency::default(),
            server_cpu_us_per_op: cpu,
        };
        let table = ratio_table(&[
            report("polykv", 200.0, Some(4.25)),
            report("memcached", 100.0, None),
        ]);
        assert!(
            table.contains("| 0 | 4.25 |\n"),
            "server CPU per request: {table}"
        );
        assert!(
            table.contains("| 0 | — |\n"),
            "no server CPU figure: {table}"
        );
        assert!(
            table.contains("| polykv | 50 | 1 | 90 | 200 | 1.00 |"),
            "{table}"
        );
        assert!(
            table.contains("| memcached | 50 | 1 | 90 | 100 | 0.50 |"),
            "{table}"
        );
    }
}
