//! `/healthz` (the process is up) and `/readyz` (NATS connected, topology read, every shard
//! answering with a working database).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use crate::state::AppState;

const SHARD_PING_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    let nats = state.dispatcher.is_connected();
    let shards = state
        .topology
        .borrow()
        .as_ref()
        .map(|t| t.latest().shard_count.shards().collect::<Vec<_>>());
    let Some(shards) = shards else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "nats": nats, "topology": false})),
        );
    };
    let answers = futures::future::join_all(
        shards
            .iter()
            .map(|&shard| state.dispatcher.ping(shard, SHARD_PING_TIMEOUT)),
    )
    .await;
    let ready = nats && answers.iter().all(|ok| *ok);
    let per_shard: serde_json::Map<_, _> = shards
        .iter()
        .zip(answers)
        .map(|(shard, ok)| (shard.to_string(), json!(ok)))
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "nats": nats, "topology": true, "shards": per_shard})),
    )
}
