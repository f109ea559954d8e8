//! Prometheus metrics: the recorder, and per-protocol handles registered once so the request
//! path does no name lookups.
//!
//! Names (all prefixed `polykv_`): `connections_active`, `connections_total`,
//! `connections_rejected_total`, `rejected_frames_total` (by `protocol`); `requests_total`,
//! `request_errors_total`, `request_duration_seconds` (by `protocol` and `op`);
//! `journal_sync_duration_seconds` and `journal_sync_batch_size` (histograms, recorded by the
//! engine's persister); engine gauges rendered at scrape time (see `admin/mod.rs`).
//!
//! Request durations and counts are recorded on every request, so they do not go through the
//! exporter (whose histograms keep every sample until the next scrape, behind two atomic
//! operations and a shared list): each (protocol, op) has fixed buckets of its own, bumped in
//! the recording thread's own stripe, rendered at scrape time ([`render_requests`]).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use polykv_engine::counters::Counters;

use metrics::{counter, gauge, Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder (once per process) and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = DURATION_BUCKETS_SECONDS;
            let batch_buckets = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("polykv_journal_sync_batch_size".into()),
                    &batch_buckets,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// Upper bounds of the duration histograms' buckets, in seconds.
const DURATION_BUCKETS_SECONDS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The same bounds in nanoseconds.
const DURATION_BUCKETS_NANOS: [u64; 16] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Duration buckets: the last one is above every bound.
const BUCKETS: usize = DURATION_BUCKETS_NANOS.len() + 1;
/// Where the total time and the failures are counted, after the buckets.
const NANOS: usize = BUCKETS;
const ERRORS: usize = BUCKETS + 1;

/// Requests of one (protocol, op): how many took how long (not cumulative), their total time,
/// and how many failed. Bumped without a locked instruction ([`Counters`]).
#[derive(Default)]
struct OpMetrics(Counters<{ BUCKETS + 2 }>);

impl OpMetrics {
    fn record(&self, error: bool, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // Counted rather than searched: no branch to mispredict on a latency that varies.
        let bucket = DURATION_BUCKETS_NANOS
            .iter()
            .map(|&bound| usize::from(bound < nanos))
            .sum::<usize>();
        self.0.add(bucket, 1);
        self.0.add(NANOS, nanos);
        if error {
            self.0.add(ERRORS, 1);
        }
    }

    /// A bucket's count, or [`NANOS`] or [`ERRORS`].
    fn get(&self, which: usize) -> u64 {
        self.0.get(which)
    }
}

/// Every (protocol, op) with its figures, shared by listeners of the same protocol (as the
/// exporter's handles with the same labels are).
type Registry = Vec<(&'static str, &'static str, Arc<OpMetrics>)>;

static REQUESTS: Mutex<Registry> = Mutex::new(Vec::new());

fn op_metrics(protocol: &'static str, op: &'static str) -> Arc<OpMetrics> {
    let mut registry = REQUESTS.lock();
    if let Some((_, _, m)) = registry.iter().find(|(p, o, _)| *p == protocol && *o == op) {
        return m.clone();
    }
    let m = Arc::new(OpMetrics::default());
    registry.push((protocol, op, m.clone()));
    m
}

/// Writes `requests_total`, `request_errors_total` and `request_duration_seconds` of every
/// protocol and op in the Prometheus text format.
pub fn render_requests(out: &mut String) {
    let registry = REQUESTS.lock();
    let labels = |p: &str, o: &str| format!("protocol=\"{p}\",op=\"{o}\"");
    let _ = writeln!(out, "# TYPE polykv_requests_total counter");
    for (p, o, m) in registry.iter() {
        let count: u64 = (0..BUCKETS).map(|b| m.get(b)).sum();
        let _ = writeln!(out, "polykv_requests_total{{{}}} {count}", labels(p, o));
    }
    let _ = writeln!(out, "# TYPE polykv_request_errors_total counter");
    for (p, o, m) in registry.iter() {
        let errors = m.get(ERRORS);
        let _ = writeln!(
            out,
            "polykv_request_errors_total{{{}}} {errors}",
            labels(p, o)
        );
    }
    let _ = writeln!(out, "# TYPE polykv_request_duration_seconds histogram");
    for (p, o, m) in registry.iter() {
        let labels = labels(p, o);
        let mut cumulative = 0;
        for (bucket, bound) in DURATION_BUCKETS_SECONDS.iter().enumerate() {
            cumulative += m.get(bucket);
            let _ = writeln!(
                out,
                "polykv_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += m.get(DURATION_BUCKETS_SECONDS.len());
        let _ = writeln!(
            out,
            "polykv_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
        );
        let seconds = m.get(NANOS) as f64 / 1e9;
        let _ = writeln!(
            out,
            "polykv_request_duration_seconds_sum{{{labels}}} {seconds}"
        );
        let _ = writeln!(
            out,
            "polykv_request_duration_seconds_count{{{labels}}} {cumulative}"
        );
    }
}

/// Metric handles of one protocol listener.
pub struct ProtocolMetrics {
    pub name: &'static str,
    active: Gauge,
    opened: Counter,
    pub rejected: Counter,
    pub rejected_frames: Counter,
    /// A handful per protocol: a scan beats hashing the name.
    ops: Vec<(&'static str, Arc<OpMetrics>)>,
    other: Arc<OpMetrics>,
}

impl ProtocolMetrics {
    /// Registers the handles of protocol `name` with operations `ops`.
    pub fn new(name: &'static str, ops: &[&'static str]) -> Self {
        ProtocolMetrics {
            name,
            active: gauge!("polykv_connections_active", "protocol" => name),
            opened: counter!("polykv_connections_total", "protocol" => name),
            rejected: counter!("polykv_connections_rejected_total", "protocol" => name),
            rejected_frames: counter!("polykv_rejected_frames_total", "protocol" => name),
            ops: ops.iter().map(|&op| (op, op_metrics(name, op))).collect(),
            other: op_metrics(name, "other"),
        }
    }

    pub fn record(&self, op: &'static str, error: bool, elapsed: Duration) {
        // Names are the services' own constants: the same pointer, compared before the bytes.
        let m = self
            .ops
            .iter()
            .find(|(name, _)| std::ptr::eq(*name, op))
            .or_else(|| self.ops.iter().find(|(name, _)| *name == op))
            .map_or(&self.other, |(_, m)| m);
        m.record(error, elapsed);
    }

    pub fn connection_opened(&self) {
        self.opened.increment(1);
        self.active.increment(1.0);
    }

    pub fn connection_closed(&self) {
        self.active.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_figures_render_as_prometheus_text() {
        let metrics = ProtocolMetrics::new("metrics-test", &["get"]);
        metrics.record("get", false, Duration::from_micros(5));
        metrics.record("get", true, Duration::from_millis(3));
        metrics.record("get", false, Duration::from_secs(2));
        metrics.record("unlisted", false, Duration::from_micros(30));
        // A second listener of the same protocol adds to the same figures.
        ProtocolMetrics::new("metrics-test", &["get"]).record("get", false, Duration::ZERO);
        let mut text = String::new();
        render_requests(&mut text);
        let get = "protocol=\"metrics-test\",op=\"get\"";
        for line in [
            format!("polykv_requests_total{{{get}}} 4"),
            format!("polykv_request_errors_total{{{get}}} 1"),
            format!("polykv_request_duration_seconds_bucket{{{get},le=\"0.00001\"}} 2"),
            format!("polykv_request_duration_seconds_bucket{{{get},le=\"0.0025\"}} 2"),
            format!("polykv_request_duration_seconds_bucket{{{get},le=\"0.005\"}} 3"),
            format!("polykv_request_duration_seconds_bucket{{{get},le=\"1\"}} 3"),
            format!("polykv_request_duration_seconds_bucket{{{get},le=\"+Inf\"}} 4"),
            format!("polykv_request_duration_seconds_sum{{{get}}} 2.003005"),
            format!("polykv_request_duration_seconds_count{{{get}}} 4"),
            "polykv_requests_total{protocol=\"metrics-test\",op=\"other\"} 1".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert_eq!(
            text.matches("# TYPE polykv_requests_total counter").count(),
            1
        );
    }
}
