//! Prometheus metrics: the recorder, and per-protocol handles registered once so the request
//! path does no name lookups.
//!
//! Names (all prefixed `polykv_`): `connections_active`, `connections_total`,
//! `connections_rejected_total`, `rejected_frames_total` (by `protocol`); `requests_total`,
//! `request_errors_total`, `request_duration_seconds` (by `protocol` and `op`);
//! `journal_sync_duration_seconds` and `journal_sync_batch_size` (histograms, recorded by the
//! engine's persister); engine gauges rendered at scrape time (see `admin/mod.rs`).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder (once per process) and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ];
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

struct OpMetrics {
    requests: Counter,
    errors: Counter,
    duration: Histogram,
}

/// Metric handles of one protocol listener.
pub struct ProtocolMetrics {
    pub name: &'static str,
    active: Gauge,
    opened: Counter,
    pub rejected: Counter,
    pub rejected_frames: Counter,
    ops: HashMap<&'static str, OpMetrics>,
    other: OpMetrics,
}

impl ProtocolMetrics {
    /// Registers the handles of protocol `name` with operations `ops`.
    pub fn new(name: &'static str, ops: &[&'static str]) -> Self {
        let op = |op: &'static str| OpMetrics {
            requests: counter!("polykv_requests_total", "protocol" => name, "op" => op),
            errors: counter!("polykv_request_errors_total", "protocol" => name, "op" => op),
            duration: histogram!("polykv_request_duration_seconds", "protocol" => name, "op" => op),
        };
        ProtocolMetrics {
            name,
            active: gauge!("polykv_connections_active", "protocol" => name),
            opened: counter!("polykv_connections_total", "protocol" => name),
            rejected: counter!("polykv_connections_rejected_total", "protocol" => name),
            rejected_frames: counter!("polykv_rejected_frames_total", "protocol" => name),
            ops: ops.iter().map(|o| (*o, op(o))).collect(),
            other: op("other"),
        }
    }

    pub fn record(&self, op: &'static str, error: bool, elapsed: Duration) {
        let m = self.ops.get(op).unwrap_or(&self.other);
        m.requests.increment(1);
        if error {
            m.errors.increment(1);
        }
        m.duration.record(elapsed.as_secs_f64());
    }

    pub fn connection_opened(&self) {
        self.opened.increment(1);
        self.active.increment(1.0);
    }

    pub fn connection_closed(&self) {
        self.active.decrement(1.0);
    }
}
