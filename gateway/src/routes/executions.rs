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

use crate::extract::{ApiBody, IdParam};
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
    pub events: String,
    pub stream: String,
    pub cancel: String,
    pub route: String,
}

impl Links {
    fn for_execution(id: ExecutionId) -> Self {
        let this = format!("/api/v1/executions/{id}");
        Self {
            events: format!("{this}/events"),
            stream: format!("{this}/stream"),
            cancel: format!("{this}/cancel"),
            route: format!("/api/v1/route/{id}"),
            this,
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
    ApiBody(request): ApiBody<SubmitRequest>,
) -> Result<Response, Problem> {
    request
        .playbook
        .validate()
        .map_err(|e| Problem::new(Code::InvalidPlaybook, format!("playbook.{e}")))?;
    validate_labels(&request.labels)
        .map_err(|e| Problem::new(Code::InvalidRequest, e.to_string()))?;
    let input = serde_json::Value::Object(request.input.unwrap_or_default());
    // The gateway mints a fresh id for every submit, so a shard that already holds the id means
    // two minters shared a node id (or a restart rewound the clock): mint another, never hand
    // the caller someone else's execution.
    for _ in 0..MINT_ATTEMPTS {
        let (execution_id, route) = state.mint()?;
        let command = SubmitCommand {
            execution_id,
            playbook: request.playbook.clone(),
            input: input.clone(),
            labels: request.labels.clone(),
        };
        let receipt = state.dispatcher.submit(route, &command).await?;
        if !receipt.created {
            metrics::counter!("noetl_gateway_id_collisions_total").increment(1);
            tracing::error!(%execution_id, node = %execution_id.node(), "minted an id that already exists; is another gateway using this node id?");
            continue;
        }
        let links = Links::for_execution(execution_id);
        let location = HeaderValue::from_str(&links.this)
            .map_err(|_| Problem::new(Code::Internal, "could not build the Location header"))?;
        let body = Submitted {
            execution_id,
            shard: receipt.shard,
            status: receipt.status,
            created_at: receipt.created_at,
            links,
        };
        return Ok((
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            Json(body),
        )
            .into_response());
    }
    Err(Problem::new(
        Code::IdCollision,
        "every id this gateway minted already existed; its node id is probably shared with another gateway",
    ))
}

/// Fresh ids tried before giving up on a submit whose ids keep colliding.
const MINT_ATTEMPTS: usize = 3;

#[derive(Debug, Serialize)]
pub struct ExecutionResponse {
    #[serde(flatten)]
    pub execution: ExecutionView,
    pub links: Links,
}

impl ExecutionResponse {
    fn new(execution: ExecutionView) -> Json<Self> {
        let links = Links::for_execution(execution.execution_id);
        Json(Self { execution, links })
    }
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    IdParam(id): IdParam,
) -> Result<Json<ExecutionResponse>, Problem> {
    let route = state.route(id)?;
    Ok(ExecutionResponse::new(
        state.dispatcher.get(route, id).await?,
    ))
}

/// `POST /api/v1/executions/{id}/cancel`: idempotent; answers with the execution as it is now.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    IdParam(id): IdParam,
) -> Result<Json<ExecutionResponse>, Problem> {
    let route = state.route(id)?;
    Ok(ExecutionResponse::new(
        state.dispatcher.cancel(route, id).await?,
    ))
}
