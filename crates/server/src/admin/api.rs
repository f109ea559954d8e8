//! The JSON API over keyspaces and keys, and the change feed as Server-Sent Events.
//!
//! Keys and values are bytes. In JSON a key travels as `key` (when it is UTF-8) and always as
//! `key_hex`; a byte value as `value` (when UTF-8) and `value_hex`. Requests name a key in the
//! path (UTF-8) or, with `?encoding=hex`, as hex.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::stream::{self, Stream};
use polykv_engine::{
    Change, Command, Condition, Durability, Engine, Entry, KeyspaceId, Outcome, Value,
};
use serde::Deserialize;
use serde_json::{json, Value as Json_};

use super::{json_error, AdminState};

/// An API error: a status and a message, answered as `{"error": message}`.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError(status, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.0, self.1)
    }
}

type ApiResult = Result<Response, ApiError>;

const MAX_PAGE: usize = 1000;

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Deserialize, Default)]
pub struct KeyQuery {
    encoding: Option<String>,
}

fn decode_key(raw: &str, encoding: Option<&str>) -> Result<Bytes, ApiError> {
    match encoding {
        None | Some("utf8") => Ok(Bytes::copy_from_slice(raw.as_bytes())),
        Some("hex") => unhex(raw)
            .map(Bytes::from)
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "the key is not valid hex")),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown encoding {other:?}: use utf8 or hex"),
        )),
    }
}

fn keyspace_id(engine: &Engine, name: &str) -> Result<KeyspaceId, ApiError> {
    engine
        .keyspaces()
        .into_iter()
        .find(|(_, n)| n == name)
        .map(|(id, _)| id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no keyspace named {name:?}")))
}

/// The id of a keyspace, creating it (through the cluster in cluster mode).
async fn create_keyspace(state: &AdminState, name: &str) -> Result<KeyspaceId, ApiError> {
    if let Some(id) = state
        .engine
        .keyspaces()
        .into_iter()
        .find(|(_, n)| n == name)
        .map(|(id, _)| id)
    {
        return Ok(id);
    }
    if state.submitter.node().is_none() {
        return state.engine.keyspace(name).map_err(engine_error);
    }
    let command = Command::CreateKeyspace { name: name.into() };
    let submitted = state
        .submitter
        .submit(command, Durability::Sync)
        .await
        .map_err(engine_error)?;
    match submitted.outcome() {
        Outcome::KeyspaceCreated(id) => Ok(*id),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("keyspace not created: {other:?}"),
        )),
    }
}

fn engine_error(e: polykv_engine::Error) -> ApiError {
    let status = match e {
        polykv_engine::Error::Poisoned(_)
        | polykv_engine::Error::ShuttingDown
        | polykv_engine::Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        polykv_engine::Error::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

fn key_json(key: &[u8], out: &mut serde_json::Map<String, Json_>) {
    if let Ok(text) = std::str::from_utf8(key) {
        out.insert("key".into(), json!(text));
    }
    out.insert("key_hex".into(), json!(hex(key)));
}

/// An entry as JSON.
pub(super) fn entry_json(key: &[u8], entry: &Entry) -> Json_ {
    let mut out = serde_json::Map::new();
    key_json(key, &mut out);
    let (kind, value) = match &entry.value {
        Value::Bytes(b) => {
            out.insert("value_hex".into(), json!(hex(b)));
            ("bytes", std::str::from_utf8(b).ok().map(|s| json!(s)))
        }
        Value::Str(s) => ("string", Some(json!(s.as_ref()))),
        Value::I32(v) => ("i32", Some(json!(v))),
        Value::I64(v) => ("i64", Some(json!(v))),
    };
    out.insert("type".into(), json!(kind));
    if let Some(value) = value {
        out.insert("value".into(), value);
    }
    out.insert("size".into(), json!(entry.value.len()));
    out.insert("version".into(), json!(entry.version));
    out.insert("expires_at_ms".into(), json!(entry.expires_at));
    out.insert("owner".into(), json!(entry.owner));
    if let Some(label) = &entry.label {
        out.insert("label".into(), json!(String::from_utf8_lossy(label)));
    }
    Json_::Object(out)
}

pub async fn list_keyspaces(State(state): State<AdminState>) -> Response {
    let stats = state.engine.stats();
    let list: Vec<_> = stats
        .keyspaces
        .iter()
        .map(|k| {
            json!({
                "name": k.name, "keys": k.keys, "version": k.version, "gets": k.gets,
                "cache_hits": k.cache_hits, "store_hits": k.store_hits, "misses": k.misses,
                "writes": k.writes, "deletes": k.deletes, "expired": k.expired,
            })
        })
        .collect();
    Json(json!({ "keyspaces": list })).into_response()
}

#[derive(Deserialize)]
pub struct ListQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    encoding: Option<String>,
}

pub async fn list_keys(
    State(state): State<AdminState>,
    Path(ks): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    {
        let id = keyspace_id(&state.engine, &ks)?;
        let encoding = q.encoding.as_deref();
        let prefix = decode_key(q.prefix.as_deref().unwrap_or(""), encoding)?;
        let after = q
            .after
            .as_deref()
            .map(|a| decode_key(a, encoding))
            .transpose()?;
        let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
        // One extra tells whether there is a next page.
        let mut items = state
            .engine
            .prefix(id, &prefix, after.as_deref(), limit + 1)
            .map_err(engine_error)?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more {
            items.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        let next = next.map(|k| match std::str::from_utf8(&k) {
            Ok(text) if encoding != Some("hex") => json!({ "after": text }),
            _ => json!({ "after": hex(&k), "encoding": "hex" }),
        });
        let items: Vec<_> = items.iter().map(|(k, e)| entry_json(k, e)).collect();
        Ok(Json(json!({ "keyspace": ks, "items": items, "next": next })).into_response())
    }
}

pub async fn get_key(
    State(state): State<AdminState>,
    Path((ks, key)): Path<(String, String)>,
    Query(q): Query<KeyQuery>,
) -> ApiResult {
    let id = keyspace_id(&state.engine, &ks)?;
    let key = decode_key(&key, q.encoding.as_deref())?;
    match state.engine.get(id, &key).map_err(engine_error)? {
        Some(read) => Ok(Json(entry_json(&key, &read.entry)).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such key")),
    }
}

#[derive(Deserialize)]
pub struct PutBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<Json_>,
    value_hex: Option<String>,
    ttl_ms: Option<u64>,
    durability: Option<String>,
}

fn parse_value(body: &PutBody) -> Result<Value, String> {
    let kind = body.kind.as_deref().unwrap_or("bytes");
    match (kind, &body.value, &body.value_hex) {
        ("bytes", _, Some(h)) => unhex(h)
            .map(|v| Value::Bytes(v.into()))
            .ok_or_else(|| "value_hex is not valid hex".into()),
        ("bytes", Some(Json_::String(s)), None) => {
            Ok(Value::Bytes(Bytes::copy_from_slice(s.as_bytes())))
        }
        ("string", Some(Json_::String(s)), None) => Ok(Value::Str(s.as_str().into())),
        ("i32", Some(v), None) => v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Value::I32)
            .ok_or_else(|| "value must be an integer that fits in 32 bits".into()),
        ("i64", Some(v), None) => v
            .as_i64()
            .map(Value::I64)
            .ok_or_else(|| "value must be a 64-bit integer".into()),
        ("bytes" | "string" | "i32" | "i64", _, _) => Err(format!(
            "give \"value\" (or \"value_hex\" for bytes) for type {kind}"
        )),
        _ => Err(format!(
            "unknown type {kind:?}: use bytes, string, i32 or i64"
        )),
    }
}

fn parse_durability(name: Option<&str>) -> Result<Durability, ApiError> {
    match name.unwrap_or("sync") {
        "sync" => Ok(Durability::Sync),
        "async" => Ok(Durability::Async),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown durability {other:?}: use sync or async"),
        )),
    }
}

pub async fn put_key(
    State(state): State<AdminState>,
    Path((ks, key)): Path<(String, String)>,
    Query(q): Query<KeyQuery>,
    body: Option<Json<PutBody>>,
) -> ApiResult {
    let Some(Json(body)) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"value\": ..., \"type\": ...}",
        ));
    };
    let (id, key, value, durability, expires_at) = {
        if !polykv_engine::valid_keyspace_name(&ks) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "keyspace names are 1-64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        let id = create_keyspace(&state, &ks).await?;
        let key = decode_key(&key, q.encoding.as_deref())?;
        let value = parse_value(&body).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
        let durability = parse_durability(body.durability.as_deref())?;
        let expires_at = body
            .ttl_ms
            .map(|ttl| state.engine.now_ms().saturating_add(ttl));
        (id, key, value, durability, expires_at)
    };
    let command = Command::Put {
        ks: id,
        key: key.clone(),
        value,
        expires_at,
        owner: None,
        label: None,
        condition: Condition::Always,
    };
    let submitted = state
        .submitter
        .submit(command, durability)
        .await
        .map_err(engine_error)?;
    match submitted.durable().await.map_err(engine_error)? {
        Outcome::Written { version } => Ok(Json(json!({ "version": version })).into_response()),
        other => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("not written: {other:?}"),
        )),
    }
}

pub async fn delete_key(
    State(state): State<AdminState>,
    Path((ks, key)): Path<(String, String)>,
    Query(q): Query<KeyQuery>,
) -> ApiResult {
    let id = keyspace_id(&state.engine, &ks)?;
    let key = decode_key(&key, q.encoding.as_deref())?;
    let submitted = state
        .submitter
        .submit(Command::delete(id, key), Durability::Sync)
        .await
        .map_err(engine_error)?;
    match submitted.durable().await.map_err(engine_error)? {
        Outcome::Deleted { version } => {
            Ok(Json(json!({ "deleted": true, "version": version })).into_response())
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such key")),
    }
}

#[derive(Deserialize)]
pub struct WatchQuery {
    key: Option<String>,
    prefix: Option<String>,
    encoding: Option<String>,
}

/// `GET /api/keyspaces/{ks}/watch?prefix=P` (or `?key=K`): Server-Sent Events, one `change`
/// event per committed set or delete, in version order. The first event, `subscribed`, says the
/// subscription is in place: every change after it is delivered.
pub async fn watch(
    State(state): State<AdminState>,
    Path(ks): Path<String>,
    Query(q): Query<WatchQuery>,
) -> ApiResult {
    let subscription = {
        if !polykv_engine::valid_keyspace_name(&ks) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid keyspace name",
            ));
        }
        let id = create_keyspace(&state, &ks).await?;
        let encoding = q.encoding.as_deref();
        let subscription = match (&q.key, &q.prefix) {
            (Some(key), None) => {
                state
                    .engine
                    .watch_key(id, decode_key(key, encoding)?, None)
                    .map_err(engine_error)?
                    .0
            }
            (None, prefix) => {
                let prefix = decode_key(prefix.as_deref().unwrap_or(""), encoding)?;
                state
                    .engine
                    .watch_prefix(id, prefix, None, 0)
                    .map_err(engine_error)?
                    .0
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "give key or prefix, not both",
                ))
            }
        };
        subscription
    };
    let keyspace = ks.clone();
    let first = SseEvent::default()
        .event("subscribed")
        .data(json!({ "keyspace": ks }).to_string());
    let changes = stream::unfold(subscription, move |subscription| {
        let keyspace = keyspace.clone();
        async move {
            let event = subscription.recv().await?;
            let data = match &event.change {
                Change::Set(entry) => {
                    let mut body = entry_json(&event.key, entry);
                    if let Json_::Object(map) = &mut body {
                        map.insert("op".into(), json!("set"));
                        map.insert("keyspace".into(), json!(keyspace));
                    }
                    body
                }
                Change::Deleted => {
                    let mut map = serde_json::Map::new();
                    key_json(&event.key, &mut map);
                    map.insert("op".into(), json!("delete"));
                    map.insert("version".into(), json!(event.version));
                    map.insert("keyspace".into(), json!(keyspace));
                    Json_::Object(map)
                }
            };
            let sse = SseEvent::default()
                .event("change")
                .id(event.version.to_string())
                .data(data.to_string());
            Some((Ok::<_, Infallible>(sse), subscription))
        }
    });
    let mut shutdown = state.shutdown.clone();
    let changes = futures_util::StreamExt::take_until(changes, async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    });
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        Box::pin(futures_util::StreamExt::chain(
            stream::once(async { Ok(first) }),
            changes,
        ));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

pub async fn stats(State(state): State<AdminState>) -> Response {
    let s = state.engine.stats();
    Json(json!({
        "uptime_seconds": state.started.elapsed().as_secs(),
        "read_only": state.read_only.get(),
        "cache": { "entries": s.cache.entries, "bytes": s.cache.bytes, "budget": s.cache.budget,
                   "hits": s.cache.hits, "misses": s.cache.misses, "evictions": s.cache.evictions },
        "journal": { "applied_writes": s.applied_writes, "syncs": s.syncs, "synced_writes": s.synced_writes,
                     "sync_seconds_total": s.sync_seconds_total, "max_sync_batch": s.max_sync_batch,
                     "mirror_writes": s.mirror_writes, "mirror_synced_writes": s.mirror_synced_writes },
        "log": s.log.as_ref().map(|l| json!({
            "checkpoints": l.checkpoints, "checkpoint_seconds_total": l.checkpoint_seconds_total,
            "checkpoint_seq": l.checkpoint_seq, "backlog_bytes": l.backlog_bytes,
            "write_stalls": l.write_stalls, "writes": l.log_writes, "copies": l.log_copies,
            "bytes_written": l.log_bytes_written, "syncs": l.log_syncs, "disk_bytes": l.log_disk_bytes,
            "segments_sealed": l.log_segments_sealed, "rotations_inline": l.log_rotations_inline,
        })),
        "watch": { "subscribers": s.watch.subscribers, "queued_events": s.watch.queued_events },
        "locks": s.locks,
        "poisoned": s.poisoned,
        "keyspaces": s.keyspaces.iter().map(|k| json!({ "name": k.name, "keys": k.keys, "version": k.version })).collect::<Vec<_>>(),
    }))
    .into_response()
}
