//! The server's own HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use noetl_bus::Client;
use noetl_contract::ShardId;
use serde_json::json;
use sqlx::PgPool;

#[derive(Debug)]
pub struct Health {
    pub client: Client,
    pub shards: Vec<(ShardId, PgPool)>,
    pub metrics: PrometheusHandle,
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move { h.metrics.render() }),
        )
        .with_state(health)
}

/// Ready when NATS is connected and every served shard's database answers.
async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, Json<serde_json::Value>) {
    let nats = noetl_bus::is_connected(&health.client);
    let pings = health.shards.iter().map(|(shard, pool)| async move {
        (
            shard.to_string(),
            json!(crate::persistence::ping(pool).await),
        )
    });
    let shards: serde_json::Map<_, _> =
        futures::future::join_all(pings).await.into_iter().collect();
    let ready = nats && shards.values().all(|ok| ok == &json!(true));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "nats": nats, "shards": shards})),
    )
}
