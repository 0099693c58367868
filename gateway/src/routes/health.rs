//! `/healthz` (the process is up) and `/readyz` (NATS connected, a fresh topology, a node-id
//! lease, and every shard that holds or receives executions answering with a working database).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use noetl_contract::ShardState;
use serde::Serialize;
use utoipa::ToSchema;

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

/// What `/readyz` checked. Before the gateway has read the topology, only `ready`, `nats`,
/// `topology` and `node_id` are present.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Whether every check passed.
    ready: bool,
    /// Whether the NATS connection is up.
    nats: bool,
    /// Whether the gateway has read the topology.
    topology: bool,
    /// Whether the topology view is fresh enough to mint ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    topology_fresh: Option<bool>,
    /// The node id this gateway leases; `null` while it holds none.
    #[schema(required = true, maximum = 1023)]
    node_id: Option<u16>,
    /// For every shard of the topology (by number): whether its server answered with a
    /// working database.
    #[serde(skip_serializing_if = "Option::is_none")]
    shards: Option<BTreeMap<String, bool>>,
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
        (status = 200, description = "Ready to serve.", body = Readiness),
        (status = 503, description = "Not ready; the report says what is missing.", body = Readiness),
    ),
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Readiness>) {
    let nats = state.dispatcher.is_connected();
    let node_id = state.lease.current().map(|node| node.get());
    let Some(topology) = state.topology.current() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                ready: false,
                nats,
                topology: false,
                topology_fresh: None,
                node_id,
                shards: None,
            }),
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
    let ready = nats && fresh && node_id.is_some() && shards_ok;
    let per_shard = shards
        .iter()
        .zip(answers)
        .map(|((shard, _), ok)| (shard.to_string(), ok))
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            nats,
            topology: true,
            topology_fresh: Some(fresh),
            node_id,
            shards: Some(per_shard),
        }),
    )
}
