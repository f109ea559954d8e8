//! Where a replicated write's time goes: the total time and the count of each hop on its path,
//! kept in process-wide counters (two relaxed atomic adds per hop and write batch; no lock).
//!
//! With `POLYKV_CLUSTER_TIMING=SECONDS` in the environment, a node logs the mean of each hop
//! over the last interval (at `warn`, so that the benchmarks' `--log-level warn` shows it).
//! `docs/performance.md` ("Cluster throughput, fifth session") reads these.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A hop on a write's path.
#[derive(Debug, Clone, Copy)]
pub enum Hop {
    /// Leader: a proposal handed to the batcher until its batch is proposed (queue and slot).
    Queue,
    /// Leader: `client_write` of a batch until openraft answers it (commit and apply).
    Commit,
    /// Leader: a proposal handed to the batcher until its proposer has the answer.
    Propose,
    /// Any node: an append handed to the log store until its flush is reported.
    LogAppend,
    /// Any node: the flusher's write (and fdatasync, when asked) of one group.
    LogFlush,
    /// Leader: an AppendEntries call to a follower, sent until answered.
    AppendRpc,
    /// Follower: an AppendEntries request read until its answer is sent.
    FollowerAppend,
    /// Any node: the state machine's apply of one batch of entries.
    Apply,
}

const HOPS: [(Hop, &str); 8] = [
    (Hop::Queue, "queue"),
    (Hop::Commit, "commit"),
    (Hop::Propose, "propose"),
    (Hop::LogAppend, "log_append"),
    (Hop::LogFlush, "log_flush"),
    (Hop::AppendRpc, "append_rpc"),
    (Hop::FollowerAppend, "follower_append"),
    (Hop::Apply, "apply"),
];

struct Counter {
    nanos: AtomicU64,
    count: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Counter = Counter {
    nanos: AtomicU64::new(0),
    count: AtomicU64::new(0),
};

static COUNTERS: [Counter; HOPS.len()] = [ZERO; HOPS.len()];

/// Counts one pass through `hop` that started at `since`.
pub fn record(hop: Hop, since: Instant) {
    let counter = &COUNTERS[hop as usize];
    let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counter.nanos.fetch_add(nanos, Ordering::Relaxed);
    counter.count.fetch_add(1, Ordering::Relaxed);
}

/// Each hop's name, total time (ns) and count so far.
pub fn snapshot() -> Vec<(&'static str, u64, u64)> {
    HOPS.iter()
        .map(|(hop, name)| {
            let counter = &COUNTERS[*hop as usize];
            (
                *name,
                counter.nanos.load(Ordering::Relaxed),
                counter.count.load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// Starts the periodic log if `POLYKV_CLUSTER_TIMING` asks for it (once per process).
pub fn start_log_from_env() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    let Some(every) = std::env::var("POLYKV_CLUSTER_TIMING")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
    else {
        return;
    };
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("polykv-cluster-timing".into())
            .spawn(move || {
                let mut last = snapshot();
                loop {
                    std::thread::sleep(Duration::from_secs(every));
                    let now = snapshot();
                    let line: Vec<String> = now
                        .iter()
                        .zip(&last)
                        .filter(|((_, _, count), (_, _, before))| count > before)
                        .map(|((name, nanos, count), (_, nanos0, count0))| {
                            let n = count - count0;
                            format!(
                                "{name} {}x {:.0}us",
                                n,
                                (nanos - nanos0) as f64 / n as f64 / 1e3
                            )
                        })
                        .collect();
                    if !line.is_empty() {
                        tracing::warn!(hops = %line.join(", "), "cluster timing");
                    }
                    last = now;
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cluster timing log not started");
        }
    });
}
