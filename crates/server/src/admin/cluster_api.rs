//! `/api/cluster`: the cluster as this node sees it, and membership changes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use polykv_cluster::{ClusterError, Member, Node};
use serde::Deserialize;

use super::{json_error, AdminState};

fn node(state: &AdminState) -> Option<&Node> {
    state.submitter.node()
}

fn not_clustered() -> Response {
    json_error(StatusCode::NOT_FOUND, "this server is not in cluster mode")
}

fn cluster_error(e: ClusterError) -> Response {
    let status = match e {
        ClusterError::Refused(_) => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    json_error(status, e.to_string())
}

/// `GET /api/cluster`: node id, leader, term, members with role, address, applied index, lag.
pub async fn status(State(state): State<AdminState>) -> Response {
    match node(&state) {
        Some(node) => Json(node.status()).into_response(),
        None => not_clustered(),
    }
}

#[derive(Deserialize)]
pub struct AddMember {
    id: u64,
    /// The new node's cluster address (`host:port`).
    addr: String,
}

/// `POST /api/cluster/members` `{"id": 4, "addr": "127.0.0.4:26090"}`: adds the node as a
/// learner, lets it catch up, then makes it a voter. Send it to the leader.
pub async fn add(State(state): State<AdminState>, body: Option<Json<AddMember>>) -> Response {
    let Some(node) = node(&state) else {
        return not_clustered();
    };
    let Some(Json(body)) = body else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"id\": N, \"addr\": \"host:port\"}",
        );
    };
    if body.id == 0 || body.addr.rsplit_once(':').is_none() {
        return json_error(StatusCode::BAD_REQUEST, "id from 1 and addr host:port");
    }
    match node.add_member(body.id, Member { addr: body.addr }).await {
        Ok(()) => Json(serde_json::json!({ "added": body.id })).into_response(),
        Err(e) => cluster_error(e),
    }
}

/// `DELETE /api/cluster/members/{id}`: removes the node from the voters. Send it to the leader.
pub async fn remove(State(state): State<AdminState>, Path(id): Path<u64>) -> Response {
    let Some(node) = node(&state) else {
        return not_clustered();
    };
    match node.remove_member(id).await {
        Ok(()) => Json(serde_json::json!({ "removed": id })).into_response(),
        Err(e) => cluster_error(e),
    }
}
