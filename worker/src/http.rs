//! The worker's own HTTP endpoint: `/healthz`, `/readyz` (NATS connected), `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use noetl_bus::Client;
use serde_json::json;

#[derive(Debug)]
pub struct Health {
    pub client: Client,
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

/// Ready while connected to NATS: a worker needs nothing else to take commands.
async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, Json<serde_json::Value>) {
    let nats = noetl_bus::is_connected(&health.client);
    let status = if nats {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": nats, "nats": nats})))
}
