//! `GET /api/v1/topology`: the topology document as this gateway sees it, every shard's state,
//! and whether the view is fresh enough to mint.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use noetl_contract::topology::{Epoch, Retirement};
use noetl_contract::{ShardId, ShardState};
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::{Code, Problem};
use crate::state::AppState;

/// The topology as this gateway sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopologyResponse {
    /// How far in the future a new epoch activates, and how long the gateway may mint after
    /// its last confirmed read of the topology.
    pub grace_ms: i64,
    /// The append-only history: each epoch routes ids minted from its `activate_at_ms` on.
    pub epochs: Vec<Epoch>,
    /// Shards taken out of service.
    pub retired: Vec<Retirement>,
    /// The epoch new executions get now.
    pub epoch_in_force: u64,
    pub shards: Vec<ShardView>,
    /// Unix milliseconds of the gateway's last confirmed read of the topology.
    pub confirmed_at_ms: i64,
    /// Whether the gateway may mint now (its view is younger than the grace).
    pub fresh: bool,
}

/// A shard and its state now.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardView {
    pub shard: ShardId,
    pub state: ShardState,
}

#[utoipa::path(
    get,
    path = "/api/v1/topology",
    tag = "cluster",
    operation_id = "get_topology",
    summary = "The cluster topology",
    description = "The topology epochs and retired shards as this gateway last read them, every \
        shard's state now, and whether the view is fresh enough to mint ids.",
    responses((status = 200, description = "The topology.", body = TopologyResponse)),
)]
pub async fn show(State(state): State<Arc<AppState>>) -> Result<Json<TopologyResponse>, Problem> {
    let topology = state.topology.current().ok_or_else(|| {
        Problem::new(
            Code::TopologyUnavailable,
            "the gateway has not read the cluster topology yet",
        )
    })?;
    let now_ms = noetl_bus::unix_now_ms();
    Ok(Json(TopologyResponse {
        grace_ms: topology.grace_ms(),
        epochs: topology.epochs().to_vec(),
        retired: topology.retired().to_vec(),
        epoch_in_force: topology.epoch_at(now_ms).epoch,
        shards: topology
            .shard_states(now_ms)
            .into_iter()
            .map(|(shard, state)| ShardView { shard, state })
            .collect(),
        confirmed_at_ms: state.topology.confirmed_at_ms(),
        fresh: state.fresh_for(&topology, now_ms),
    }))
}
