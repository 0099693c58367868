//! `GET /api/v1/route/{id}`: which shard and epoch an id belongs to, and what it encodes.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use noetl_contract::{ExecutionId, ShardCount, ShardId};
use serde::Serialize;
use utoipa::ToSchema;

use crate::extract::{IdParam, IdPath};
use crate::problem::Problem;
use crate::state::AppState;

/// Where an execution id lives, and what it encodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteResponse {
    pub execution_id: ExecutionId,
    pub shard: ShardId,
    pub shard_count: ShardCount,
    /// The topology epoch in force at the id's timestamp.
    pub epoch: u64,
    /// Decoded from the id: Unix milliseconds, gateway node, sequence.
    pub minted_at_ms: i64,
    pub node: u16,
    pub sequence: u16,
}

#[utoipa::path(
    get,
    path = "/api/v1/route/{id}",
    tag = "cluster",
    operation_id = "route_execution",
    summary = "Which shard an execution id belongs to",
    description = "Computed from the id and the topology alone (the shard is not asked), so it \
        answers for any well-formed id, whether or not such an execution exists.",
    params(IdPath),
    responses((status = 200, description = "The shard and epoch.", body = RouteResponse)),
)]
pub async fn route(
    State(state): State<Arc<AppState>>,
    IdParam(id): IdParam,
) -> Result<Json<RouteResponse>, Problem> {
    let route = state.route(id)?;
    Ok(Json(RouteResponse {
        execution_id: id,
        shard: route.shard,
        shard_count: route.shard_count,
        epoch: route.epoch,
        minted_at_ms: id.unix_ms(),
        node: id.node().get(),
        sequence: id.sequence(),
    }))
}
