//! `/healthz` (the process is up) and `/readyz` (NATS connected, a fresh topology, a node-id
//! lease, and every shard that holds or receives executions answering with a working database).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use noetl_contract::ShardState;
use serde_json::json;

use crate::state::AppState;

const SHARD_PING_TIMEOUT: Duration = Duration::from_secs(1);

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "Liveness",
    description = "The process is up and serving HTTP; nothing else is checked.",
    responses((status = 200, description = "Always `ok`.", body = String, content_type = "text/plain", example = json!("ok"))),
)]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    summary = "Readiness",
    description = "Ready when NATS is connected, the topology view is fresh, the gateway holds a \
        node-id lease, and every shard that holds or receives executions answers with a working \
        database (retired shards are shown, not required). Both answers carry the same report.",
    responses(
        (status = 200, description = "Ready to serve.", body = crate::openapi::Readiness),
        (status = 503, description = "Not ready; the report says what is missing.", body = crate::openapi::Readiness),
    ),
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    let nats = state.dispatcher.is_connected();
    let node = state.lease.current();
    let Some(topology) = state.topology.current() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "nats": nats, "topology": false, "node_id": node})),
        );
    };
    let now_ms = noetl_bus::unix_now_ms();
    let fresh = state.fresh_for(&topology, now_ms);
    // Retired shards whose data was kept may have a server for reads; they are shown, not
    // required.
    let shards = topology.shard_states(now_ms);
    let answers = futures::future::join_all(
        shards
            .iter()
            .map(|&(shard, _)| state.dispatcher.ping(shard, SHARD_PING_TIMEOUT)),
    )
    .await;
    let shards_ok = shards
        .iter()
        .zip(&answers)
        .all(|((_, shard_state), ok)| *ok || *shard_state == ShardState::Retired);
    let ready = nats && fresh && node.is_some() && shards_ok;
    let per_shard: serde_json::Map<_, _> = shards
        .iter()
        .zip(answers)
        .map(|((shard, _), ok)| (shard.to_string(), json!(ok)))
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": ready,
            "nats": nats,
            "topology": true,
            "topology_fresh": fresh,
            "node_id": node,
            "shards": per_shard,
        })),
    )
}
