//! The admin HTTP listener: `/health`, Prometheus `/metrics`, the JSON API (`api`) and the
//! web console.
//!
//! When the listener is not on a loopback address, every call but `/health` needs
//! `Authorization: Bearer TOKEN` (the token is `admin.token`, or generated at first start and
//! kept in `DATA_DIR/admin.token`, mode 0600).

mod api;
mod cluster_api;

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{formatting, PrometheusHandle};
use polykv_engine::Engine;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ReadOnly;

#[derive(Clone)]
pub struct AdminState {
    pub engine: Engine,
    /// Where writes go: the engine, or the cluster.
    pub submitter: crate::submit::Submitter,
    pub prometheus: Option<PrometheusHandle>,
    pub read_only: Arc<ReadOnly>,
    pub started: std::time::Instant,
    /// The bearer token every call (but `/health`) must carry; `None` = no token needed.
    pub token: Option<Arc<str>>,
    /// Set at shutdown (and at a hot upgrade's stop): endless responses (the watch feed) end,
    /// so the listener's graceful shutdown does not wait for them.
    pub shutdown: watch::Receiver<bool>,
}

pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/read-only", get(read_only_get).post(read_only_set))
        .route("/api/stats", get(api::stats))
        .route("/api/keyspaces", get(api::list_keyspaces))
        .route("/api/keyspaces/{ks}/keys", get(api::list_keys))
        .route(
            "/api/keyspaces/{ks}/keys/{*key}",
            get(api::get_key).put(api::put_key).delete(api::delete_key),
        )
        .route("/api/keyspaces/{ks}/watch", get(api::watch))
        .route("/api/cluster", get(cluster_api::status))
        .route(
            "/api/cluster/members",
            axum::routing::post(cluster_api::add),
        )
        .route(
            "/api/cluster/members/{id}",
            axum::routing::delete(cluster_api::remove),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(console))
        .route("/health", get(health))
        .merge(api)
        .with_state(state)
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok =
            given.is_some_and(|g| crate::secret::constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({ "error": "this admin listener needs Authorization: Bearer TOKEN (see admin.token)" })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let app = router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin listener failed");
    }
}

pub(crate) fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// The web console: one self-contained page, compiled into the binary. It holds no data; its
/// calls to the API carry the token.
async fn console() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("console.html"),
    )
        .into_response()
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn health(State(state): State<AdminState>) -> Response {
    let stats = state.engine.stats();
    match stats.poisoned {
        None => Json(serde_json::json!({
            "status": "ok",
            "uptime_seconds": state.started.elapsed().as_secs(),
            "read_only": state.read_only.get(),
        }))
        .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "poisoned", "reason": reason })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut text = state
        .prometheus
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    crate::metrics::render_requests(&mut text);
    render_engine(&state.engine, &mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Engine figures, read at scrape time, written with the exporter's own formatting.
fn render_engine(engine: &Engine, out: &mut String) {
    let s = engine.stats();
    let figures: [(&str, &str, &str, f64); 17] = [
        (
            "polykv_cache_entries",
            "gauge",
            "Entries in the cache",
            s.cache.entries as f64,
        ),
        (
            "polykv_cache_bytes",
            "gauge",
            "Bytes held by the cache",
            s.cache.bytes as f64,
        ),
        (
            "polykv_cache_budget_bytes",
            "gauge",
            "Byte budget of the cache",
            s.cache.budget as f64,
        ),
        (
            "polykv_cache_hits_total",
            "counter",
            "Cache lookups that hit",
            s.cache.hits as f64,
        ),
        (
            "polykv_cache_misses_total",
            "counter",
            "Cache lookups that missed",
            s.cache.misses as f64,
        ),
        (
            "polykv_cache_evictions_total",
            "counter",
            "Entries evicted from the cache",
            s.cache.evictions as f64,
        ),
        (
            "polykv_engine_applied_writes_total",
            "counter",
            "Store-writing commands applied",
            s.applied_writes as f64,
        ),
        (
            "polykv_journal_syncs_total",
            "counter",
            "Group-commit fdatasyncs",
            s.syncs as f64,
        ),
        (
            "polykv_journal_synced_writes_total",
            "counter",
            "Writes covered by group commits",
            s.synced_writes as f64,
        ),
        (
            "polykv_journal_sync_seconds_total",
            "counter",
            "Time spent in fdatasync",
            s.sync_seconds_total,
        ),
        (
            "polykv_journal_mirror_writes_total",
            "counter",
            "Direct writes to the log's mirror (one per group of Sync writes)",
            s.mirror_writes as f64,
        ),
        (
            "polykv_journal_mirror_synced_writes_total",
            "counter",
            "Sync writes made durable by the log's mirror",
            s.mirror_synced_writes as f64,
        ),
        (
            "polykv_journal_sync_batch_max",
            "gauge",
            "Largest group-commit batch",
            s.max_sync_batch as f64,
        ),
        (
            "polykv_watch_subscribers",
            "gauge",
            "Watch subscriptions",
            s.watch.subscribers as f64,
        ),
        (
            "polykv_watch_queued_events",
            "gauge",
            "Events queued for watchers",
            s.watch.queued_events as f64,
        ),
        (
            "polykv_locks_held",
            "gauge",
            "Named locks held",
            s.locks as f64,
        ),
        (
            "polykv_store_poisoned",
            "gauge",
            "1 after a failed write or sync",
            f64::from(u8::from(s.poisoned.is_some())),
        ),
    ];
    // The log-first store's log, where the engine has one.
    let log = s.log.as_ref().map(|l| {
        [
            (
                "polykv_log_segments_sealed_total",
                "counter",
                "Log segments sealed",
                l.log_segments_sealed as f64,
            ),
            (
                "polykv_log_rotations_inline_total",
                "counter",
                "Log segment changes done on the request path (no segment made ahead)",
                l.log_rotations_inline as f64,
            ),
        ]
    });
    for (name, kind, help, value) in figures.into_iter().chain(log.into_iter().flatten()) {
        formatting::write_help_line(out, name, help);
        formatting::write_type_line(out, name, kind);
        formatting::write_metric_line::<&str, f64>(out, name, None, &[], None, value, None);
    }
    let name = "polykv_keyspace_keys";
    formatting::write_help_line(out, name, "Approximate keys per keyspace");
    formatting::write_type_line(out, name, "gauge");
    for ks in &s.keyspaces {
        let label = format!(
            "keyspace=\"{}\"",
            formatting::sanitize_label_value(&ks.name)
        );
        formatting::write_metric_line::<&str, u64>(out, name, None, &[label], None, ks.keys, None);
    }
}

#[derive(Deserialize)]
struct ReadOnlyQuery {
    on: Option<bool>,
}

async fn read_only_get(State(state): State<AdminState>) -> Response {
    Json(serde_json::json!({ "read_only": state.read_only.get() })).into_response()
}

async fn read_only_set(
    State(state): State<AdminState>,
    Query(query): Query<ReadOnlyQuery>,
) -> Response {
    let Some(on) = query.on else {
        return json_error(StatusCode::BAD_REQUEST, "give ?on=true or ?on=false");
    };
    state.read_only.set(on);
    tracing::info!(
        read_only = on,
        "read-only mode changed through the admin API"
    );
    Json(serde_json::json!({ "read_only": on })).into_response()
}
