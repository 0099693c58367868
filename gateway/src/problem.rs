//! HTTP errors as RFC 9457 problem documents (`application/problem+json`) with a stable `code`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use noetl_contract::ExecutionId;
use serde::Serialize;
use utoipa::ToSchema;

/// Stable machine-readable error codes of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The body is not JSON.
    InvalidJson,
    /// The JSON does not have the expected fields or types.
    InvalidRequest,
    /// The playbook is malformed: duplicate names, unknown actions, cycles, …
    InvalidPlaybook,
    /// A path parameter is not a valid execution id.
    InvalidExecutionId,
    /// The body is over the size limit.
    PayloadTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// No such route.
    RouteNotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// No valid bearer token.
    Unauthorized,
    /// The token lacks the scope the route needs.
    Forbidden,
    /// No execution with that id.
    ExecutionNotFound,
    /// The catalog has no such playbook, or no such version of it.
    PlaybookNotFound,
    /// The Idempotency-Key was used before with a different request body.
    IdempotencyKeyReused,
    /// NATS (the catalog, the idempotency keys) did not answer.
    BusUnavailable,
    /// The owning shard did not answer in time, or its database is down.
    ShardUnavailable,
    /// The owning shard has as much work in flight as it may take.
    ShardOverloaded,
    /// The tenant is over its request rate.
    RateLimited,
    /// The request did not complete within the gateway's deadline.
    RequestTimeout,
    /// The gateway has not yet read the cluster topology.
    TopologyUnavailable,
    /// The gateway's view of the topology is older than the grace: minting now could misroute.
    TopologyStale,
    /// The gateway holds no node-id lease (another gateway has its id, or NATS is unreachable).
    NodeLeaseUnavailable,
    /// The execution lived on a shard that was retired with its data discarded.
    ExecutionRetired,
    /// The gateway's clock stepped back further than it may mint through.
    ClockBehind,
    /// Freshly minted ids already existed: two gateways share a node id.
    IdCollision,
    /// A bug on our side; details are in the logs, not here.
    Internal,
}

impl Code {
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidJson
            | Code::InvalidRequest
            | Code::InvalidPlaybook
            | Code::InvalidExecutionId => StatusCode::BAD_REQUEST,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::RouteNotFound | Code::ExecutionNotFound | Code::PlaybookNotFound => {
                StatusCode::NOT_FOUND
            }
            Code::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::ExecutionRetired => StatusCode::GONE,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::ShardUnavailable
            | Code::ShardOverloaded
            | Code::TopologyUnavailable
            | Code::TopologyStale
            | Code::NodeLeaseUnavailable
            | Code::BusUnavailable
            | Code::ClockBehind
            | Code::IdCollision => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Code::InvalidJson => "Body is not valid JSON",
            Code::InvalidRequest => "Request does not match the API",
            Code::InvalidPlaybook => "Playbook is invalid",
            Code::InvalidExecutionId => "Invalid execution id",
            Code::PayloadTooLarge => "Body too large",
            Code::UnsupportedMediaType => "Unsupported media type",
            Code::RouteNotFound => "No such route",
            Code::MethodNotAllowed => "Method not allowed",
            Code::ExecutionNotFound => "Execution not found",
            Code::PlaybookNotFound => "Playbook not found",
            Code::IdempotencyKeyReused => "Idempotency key reused",
            Code::Unauthorized => "Unauthorized",
            Code::Forbidden => "Forbidden",
            Code::BusUnavailable => "Bus unavailable",
            Code::ShardUnavailable => "Shard unavailable",
            Code::ShardOverloaded => "Shard overloaded",
            Code::RateLimited => "Too many requests",
            Code::RequestTimeout => "Request timed out",
            Code::TopologyUnavailable => "Topology unavailable",
            Code::TopologyStale => "Topology view stale",
            Code::NodeLeaseUnavailable => "No node-id lease",
            Code::ExecutionRetired => "Execution retired",
            Code::ClockBehind => "Clock behind",
            Code::IdCollision => "Execution id collision",
            Code::Internal => "Internal error",
        }
    }
}

/// An API error: rendered as a problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:noetl:problem:` followed by the code.
    #[serde(rename = "type")]
    #[schema(example = "urn:noetl:problem:execution_not_found")]
    kind: String,
    /// A short summary of the code, the same for every problem with it.
    #[schema(value_type = String)]
    title: &'static str,
    /// The HTTP status code of the response.
    status: u16,
    code: Code,
    /// What went wrong with this request, for people; never internals.
    detail: String,
    /// Set when the request minted an id whose fate is unknown (e.g. the shard timed out):
    /// the client can look the execution up before retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_id: Option<ExecutionId>,
    #[serde(skip)]
    retry_after_secs: Option<u32>,
}

impl Problem {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        let retry_after_secs = (code.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(1);
        Self {
            kind: format!("urn:noetl:problem:{}", code_name(code)),
            title: code.title(),
            status: code.status().as_u16(),
            code,
            detail: detail.into(),
            execution_id: None,
            retry_after_secs,
        }
    }

    pub fn with_execution_id(mut self, id: ExecutionId) -> Self {
        self.execution_id = Some(id);
        self
    }

    /// Tells the client how many seconds to wait before retrying (`Retry-After`).
    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn code(&self) -> Code {
        self.code
    }
}

fn code_name(code: Code) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let retry_after = self.retry_after_secs;
        let mut response = (status, axum::Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
