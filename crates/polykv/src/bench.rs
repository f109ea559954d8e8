//! `polykv bench`: the same load against one or more servers in turn, with a ratio table.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use polykv_bench::workload::{Distribution, Workload};
use polykv_bench::{median_report, protocol, ratio_table, rounds_table, run, RunConfig};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A server to load, as `PROTOCOL@HOST:PORT` or `LABEL=PROTOCOL@HOST:PORT`; repeat it to
    /// run several targets in turn under the same load. Protocols: nmdb, nmdb-cache (nmdb with
    /// the CACHE_ONLY flag), opencluster, minority, jsonkv, memcached, redis (RESP), etcd (its v3
    /// JSON gateway: durable puts).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection (pipelining).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Fraction of requests that are GETs, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.9)]
    get_ratio: f64,
    /// Key distribution: uniform, zipf or zipf:EXPONENT.
    #[arg(long, default_value = "uniform")]
    distribution: Distribution,
    /// Seconds to measure (after warm-up), unless --requests is given.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many measured requests instead of a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// SET every key once before the run.
    #[arg(long)]
    preload: bool,
    /// Most requests per second over all connections.
    #[arg(long)]
    rate: Option<u64>,
    /// Durable writes where the protocol can ask for them.
    #[arg(long)]
    sync: bool,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run every target this many times, in turn (A B C A B C ...), and report the round with
    /// the median throughput of each: on a shared machine one run can be off by tens of percent.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Print the results as JSON (with several rounds, each target's median round).
    #[arg(long)]
    json: bool,
}

fn parse_target(text: &str) -> anyhow::Result<(String, String, String)> {
    let (label, rest) = match text.split_once('=') {
        Some((label, rest)) => (Some(label.to_string()), rest),
        None => (None, text),
    };
    let Some((proto, addr)) = rest.split_once('@') else {
        bail!("target {text:?}: expected PROTOCOL@HOST:PORT, e.g. redis@127.0.0.1:6379");
    };
    Ok((
        label.unwrap_or_else(|| proto.to_string()),
        proto.to_string(),
        addr.to_string(),
    ))
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.get_ratio) {
        bail!("--get-ratio must be between 0 and 1");
    }
    // Every target is checked before the first one runs.
    let mut targets = Vec::new();
    for text in &args.targets {
        let (label, proto, addr) = parse_target(text)?;
        let Some(protocol) = protocol::by_name(&proto) else {
            bail!("unknown protocol {proto:?} in target {label}: use nmdb, nmdb-cache, opencluster, minority, jsonkv, memcached or redis");
        };
        targets.push((
            label,
            Arc::<dyn protocol::LoadProtocol>::from(protocol),
            addr,
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut rounds: Vec<Vec<polykv_bench::Report>> = vec![Vec::new(); targets.len()];
    for round in 1..=args.rounds {
        for ((label, protocol, addr), results) in targets.iter().zip(rounds.iter_mut()) {
            let config = RunConfig {
                addr: addr.clone(),
                connections: args.connections,
                depth: args.depth,
                workload: Workload {
                    keys: args.keys,
                    key_size: args.key_size,
                    value_size: args.value_size,
                    get_ratio: args.get_ratio,
                    distribution: args.distribution,
                    sync_writes: args.sync,
                },
                duration: args
                    .requests
                    .is_none()
                    .then(|| Duration::from_secs_f64(args.duration)),
                requests: args.requests,
                warmup: Duration::from_secs_f64(args.warmup),
                preload: args.preload,
                rate: args.rate,
                seed: args.seed,
                progress: !args.json,
            };
            let report = runtime
                .block_on(run(protocol.clone(), label, config))
                .with_context(|| format!("benchmark of {label} failed"))?;
            if !args.json {
                let of = if args.rounds > 1 {
                    format!(" (round {round} of {})", args.rounds)
                } else {
                    String::new()
                };
                eprintln!(
                    "{label}{of}: {:.0} ops/s, p99 {:.1} µs, {} errors",
                    report.ops_per_sec, report.latency_us.p99, report.errors
                );
            }
            results.push(report);
        }
    }
    let reports: Vec<_> = rounds.iter().filter_map(|r| median_report(r)).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", ratio_table(&reports));
        if args.rounds > 1 {
            println!();
            print!("{}", rounds_table(&rounds));
        }
    }
    Ok(())
}
