//! `POST /api/v1/executions`, `GET /api/v1/executions/{id}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use noetl_contract::message::{ExecutionView, Labels, SubmitCommand};
use noetl_contract::playbook::{validate_labels, Playbook};
use noetl_contract::ExecutionId;
use serde::{Deserialize, Serialize};

use crate::extract::{ApiJson, IdParam};
use crate::problem::{Code, Problem};
use crate::state::AppState;

/// Body of `POST /api/v1/executions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub playbook: Playbook,
    #[serde(default)]
    pub input: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Serialize)]
pub struct Links {
    #[serde(rename = "self")]
    pub this: String,
    pub route: String,
}

impl Links {
    fn for_execution(id: ExecutionId) -> Self {
        Self {
            this: format!("/api/v1/executions/{id}"),
            route: format!("/api/v1/route/{id}"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Submitted {
    pub execution_id: ExecutionId,
    pub shard: noetl_contract::ShardId,
    pub status: noetl_contract::message::ExecutionStatus,
    pub created_at: String,
    pub links: Links,
}

pub async fn submit(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<SubmitRequest>,
) -> Result<Response, Problem> {
    request
        .playbook
        .validate()
        .map_err(|e| Problem::new(Code::InvalidPlaybook, format!("playbook.{e}")))?;
    validate_labels(&request.labels)
        .map_err(|e| Problem::new(Code::InvalidRequest, e.to_string()))?;
    let (execution_id, route) = state.mint()?;
    let command = SubmitCommand {
        execution_id,
        playbook: request.playbook,
        input: serde_json::Value::Object(request.input.unwrap_or_default()),
        labels: request.labels,
    };
    let receipt = state.dispatcher.submit(route, &command).await?;
    let links = Links::for_execution(execution_id);
    let location = HeaderValue::from_str(&links.this)
        .map_err(|_| Problem::new(Code::Internal, "could not build the Location header"))?;
    let status = if receipt.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = Submitted {
        execution_id,
        shard: receipt.shard,
        status: receipt.status,
        created_at: receipt.created_at,
        links,
    };
    Ok((status, [(header::LOCATION, location)], Json(body)).into_response())
}

#[derive(Debug, Serialize)]
pub struct ExecutionResponse {
    #[serde(flatten)]
    pub execution: ExecutionView,
    pub links: Links,
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    IdParam(id): IdParam,
) -> Result<Json<ExecutionResponse>, Problem> {
    let route = state.route(id)?;
    let execution = state.dispatcher.get(route, id).await?;
    Ok(Json(ExecutionResponse {
        execution,
        links: Links::for_execution(id),
    }))
}
