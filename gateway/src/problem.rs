//! HTTP errors as RFC 9457 problem documents (`application/problem+json`) with a stable `code`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use noetl_contract::ExecutionId;
use serde::Serialize;
use utoipa::ToSchema;

/// Stable machine-readable error codes of the HTTP API. Each is described once, here: the HTTP
/// status it comes with ([`Code::status`]), the title of its problems ([`Code::title`]) and
/// what it means ([`Code::meaning`]). The OpenAPI document and wiki/errors.md are generated
/// from these (tests keep the committed copies in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    InvalidJson,
    InvalidRequest,
    InvalidPlaybook,
    NestingTooDeep,
    YamlExpansionLimit,
    TemplateBudgetExceeded,
    UnstorableValue,
    LoopTooLarge,
    InvalidExecutionId,
    PayloadTooLarge,
    UnsupportedMediaType,
    RouteNotFound,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    PoolForbidden,
    ExecutionNotFound,
    PlaybookNotFound,
    ExecutionNotTerminal,
    CatalogQuotaExceeded,
    TenantQuotaExceeded,
    IdempotencyKeyReused,
    BusUnavailable,
    ShardUnavailable,
    ShardOverloaded,
    RateLimited,
    StreamQuotaExceeded,
    TooManyStreams,
    RequestTimeout,
    TopologyUnavailable,
    TopologyStale,
    NodeLeaseUnavailable,
    ExecutionRetired,
    ClockBehind,
    IdCollision,
    Internal,
}

impl Code {
    /// Every code, in the order the `Code` schema lists them (a test checks that it names every
    /// variant, in order).
    pub const ALL: [Code; 36] = [
        Code::InvalidJson,
        Code::InvalidRequest,
        Code::InvalidPlaybook,
        Code::NestingTooDeep,
        Code::YamlExpansionLimit,
        Code::TemplateBudgetExceeded,
        Code::UnstorableValue,
        Code::LoopTooLarge,
        Code::InvalidExecutionId,
        Code::PayloadTooLarge,
        Code::UnsupportedMediaType,
        Code::RouteNotFound,
        Code::MethodNotAllowed,
        Code::Unauthorized,
        Code::Forbidden,
        Code::PoolForbidden,
        Code::ExecutionNotFound,
        Code::PlaybookNotFound,
        Code::ExecutionNotTerminal,
        Code::CatalogQuotaExceeded,
        Code::TenantQuotaExceeded,
        Code::IdempotencyKeyReused,
        Code::BusUnavailable,
        Code::ShardUnavailable,
        Code::ShardOverloaded,
        Code::RateLimited,
        Code::StreamQuotaExceeded,
        Code::TooManyStreams,
        Code::RequestTimeout,
        Code::TopologyUnavailable,
        Code::TopologyStale,
        Code::NodeLeaseUnavailable,
        Code::ExecutionRetired,
        Code::ClockBehind,
        Code::IdCollision,
        Code::Internal,
    ];

    /// The HTTP status of every problem with the code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidJson
            | Code::InvalidRequest
            | Code::InvalidPlaybook
            | Code::NestingTooDeep
            | Code::YamlExpansionLimit
            | Code::TemplateBudgetExceeded
            | Code::UnstorableValue
            | Code::LoopTooLarge
            | Code::InvalidExecutionId => StatusCode::BAD_REQUEST,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::RouteNotFound | Code::ExecutionNotFound | Code::PlaybookNotFound => {
                StatusCode::NOT_FOUND
            }
            Code::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Code::CatalogQuotaExceeded | Code::ExecutionNotTerminal => StatusCode::CONFLICT,
            Code::RateLimited | Code::StreamQuotaExceeded | Code::TenantQuotaExceeded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Code::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden | Code::PoolForbidden => StatusCode::FORBIDDEN,
            Code::ExecutionRetired => StatusCode::GONE,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::ShardUnavailable
            | Code::ShardOverloaded
            | Code::TooManyStreams
            | Code::TopologyUnavailable
            | Code::TopologyStale
            | Code::NodeLeaseUnavailable
            | Code::BusUnavailable
            | Code::ClockBehind
            | Code::IdCollision => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short summary: the `title` of every problem with the code.
    pub fn title(self) -> &'static str {
        match self {
            Code::InvalidJson => "Body is not valid JSON",
            Code::InvalidRequest => "Request does not match the API",
            Code::InvalidPlaybook => "Playbook is invalid",
            Code::NestingTooDeep => "Sub-playbooks nest too deep",
            Code::YamlExpansionLimit => "YAML expands too far",
            Code::TemplateBudgetExceeded => "Template over its budget",
            Code::UnstorableValue => "Value cannot be stored",
            Code::LoopTooLarge => "Loop over too many items",
            Code::InvalidExecutionId => "Invalid execution id",
            Code::PayloadTooLarge => "Body too large",
            Code::UnsupportedMediaType => "Unsupported media type",
            Code::RouteNotFound => "No such route",
            Code::MethodNotAllowed => "Method not allowed",
            Code::Unauthorized => "Unauthorized",
            Code::Forbidden => "Forbidden",
            Code::PoolForbidden => "Pool or action not open to the tenant",
            Code::ExecutionNotFound => "Execution not found",
            Code::PlaybookNotFound => "Playbook not found",
            Code::ExecutionNotTerminal => "Execution not finished",
            Code::CatalogQuotaExceeded => "Catalog quota exceeded",
            Code::TenantQuotaExceeded => "Tenant quota exceeded",
            Code::IdempotencyKeyReused => "Idempotency key reused",
            Code::BusUnavailable => "Bus unavailable",
            Code::ShardUnavailable => "Shard unavailable",
            Code::ShardOverloaded => "Shard overloaded",
            Code::RateLimited => "Too many requests",
            Code::StreamQuotaExceeded => "Too many event streams",
            Code::TooManyStreams => "Gateway at its stream capacity",
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

    /// What the code means and what to do about it: a lower-case clause without a full stop,
    /// the one explanation of the code there is.
    pub fn meaning(self) -> &'static str {
        match self {
            Code::InvalidJson => "a JSON body does not parse (a syntax error, trailing characters)",
            Code::InvalidRequest => {
                "the body, a path or query parameter or a header does not match the API: an \
                 unknown field, a wrong type, a YAML body that does not parse, invalid labels, a \
                 malformed `Idempotency-Key`; `detail` names the field (e.g. \
                 `playbook.steps[0].needs`)"
            }
            Code::NestingTooDeep => {
                "the playbook's `playbook` steps run inline playbooks nested deeper than the \
                 cluster's `max_child_depth` (default 4); a `playbook` step of an execution at \
                 that depth also fails with this code in its step error"
            }
            Code::InvalidPlaybook => {
                "the playbook is malformed: bad or duplicate names, an unknown action, unknown or \
                 cyclic `needs`, a bad pool name, a retry or timeout out of range, template \
                 syntax, a limit passed (a step's `timeout` over the cluster's \
                 `max_step_timeout_ms`, say); `detail` names the place (e.g. \
                 `playbook.steps[1].action`)"
            }
            Code::YamlExpansionLimit => {
                "a YAML body's aliases (`*name`, repeating what an anchor `&name` marks) expand \
                 it to more nodes than twice its length in bytes; write the repeated parts out, \
                 or send JSON"
            }
            Code::TemplateBudgetExceeded => {
                "a first step's `with` went over its template budget when rendered at submit: \
                 the server's `template_fuel`, `template_max_bytes` or `template_max_depth`, or \
                 minijinja's own caps (wiki/limits.md); `detail` names the step and the field; \
                 nothing was stored (a later step that goes over fails with this code instead)"
            }
            Code::UnstorableValue => {
                "a first step's `with` rendered a string holding the NUL character (U+0000), \
                 which the shard database cannot store; `detail` names the step and the field; \
                 nothing was stored (a later step fails with this code instead)"
            }
            Code::LoopTooLarge => {
                "a first step's `loop.in` rendered more items than the server's `max_loop_items` \
                 (10,000 by default, wiki/limits.md); `detail` names the step and the count; \
                 nothing was stored (a later loop step fails with this code instead)"
            }
            Code::InvalidExecutionId => {
                "the `{id}` in the path is not an execution id: plain decimal digits of a \
                 non-negative 64-bit integer"
            }
            Code::PayloadTooLarge => {
                "the body is over the gateway's `body_limit_bytes`, or a message it makes is over \
                 NATS `max_payload`: the request to the shard once encoded (numbers may grow, \
                 `9e15` becomes `9000000000000000.0`), or the shard's reply (an execution or \
                 events page too large to send; ask for fewer events), or a playbook to publish \
                 once stored"
            }
            Code::UnsupportedMediaType => "the body's `Content-Type` is neither JSON nor YAML",
            Code::RouteNotFound => "no such route; the API lives under `/api/v1`",
            Code::MethodNotAllowed => "the route exists, but not with this method",
            Code::Unauthorized => {
                "no valid `Authorization: Bearer` token (the gateway has an `auth_tokens_file`)"
            }
            Code::Forbidden => {
                "the token lacks the scope the route needs (`submit`, `read` or `admin`)"
            }
            Code::PoolForbidden => {
                "a step targets a pool the caller's tenant may not use (the server's \
                 `pool_tenants`), or runs the `shell` action for a tenant that did not opt in \
                 (`shell_tenants`); `detail` names the step and its pool; nothing was stored"
            }
            Code::ExecutionNotFound => {
                "the owning shard has no execution with this id (another tenant's execution is \
                 answered the same way)"
            }
            Code::PlaybookNotFound => {
                "the catalog has no playbook of that name, or not that version"
            }
            Code::ExecutionNotTerminal => {
                "only a finished execution (succeeded, failed or cancelled) can be deleted; this \
                 one is pending or running: cancel it first (`POST …/cancel`), then delete it \
                 once it has finished"
            }
            Code::CatalogQuotaExceeded => {
                "publishing would take the tenant's catalog over `catalog_max_versions` versions \
                 or `catalog_max_bytes` bytes (all versions of all its playbooks count until \
                 deleted or dropped by `catalog_keep_versions`)"
            }
            Code::TenantQuotaExceeded => {
                "the caller's tenant has `tenant_max_executions_in_flight` executions not yet \
                 finished on the owning shard; nothing was stored; retry after `Retry-After` \
                 seconds, once some finished (a retried submit of an execution that was stored \
                 is answered as before)"
            }
            Code::IdempotencyKeyReused => {
                "the `Idempotency-Key` was used before with another request body; `execution_id` \
                 names the execution it created"
            }
            Code::BusUnavailable => "NATS did not answer a catalog or idempotency-key request",
            Code::ShardUnavailable => {
                "the owning shard has no server, did not answer within `request_timeout_ms`, its \
                 database failed, or it refused the request as misrouted (gateway and server \
                 disagree on the topology for a moment); when a submit minted an id first, \
                 `execution_id` names it: look it up before retrying"
            }
            Code::ShardOverloaded => {
                "the owning shard's server has `max_in_flight` requests in hand and refused this \
                 one without starting it; retry after `Retry-After` seconds"
            }
            Code::RateLimited => {
                "the caller's tenant is over its request rate (`rate_limit_per_second`); retry \
                 after `Retry-After` seconds"
            }
            Code::StreamQuotaExceeded => {
                "the caller's tenant already has `sse_streams_per_tenant` event streams \
                 (`/stream`) open on this gateway; close one, or retry after `Retry-After` \
                 seconds (a stream's slot is freed when it ends or its client goes)"
            }
            Code::TooManyStreams => {
                "this gateway has `max_sse_streams` event streams open, all tenants together; \
                 retry after `Retry-After` seconds, or page through `/events` instead"
            }
            Code::RequestTimeout => {
                "the request did not complete within the gateway's deadline (`http_timeout_ms`)"
            }
            Code::TopologyUnavailable => {
                "the gateway has not read the cluster topology yet (no server has ever started, or \
                 NATS is unreachable)"
            }
            Code::TopologyStale => {
                "the gateway could not confirm its view of the topology within the grace, so \
                 minting could misroute; it mints nothing until a read succeeds"
            }
            Code::NodeLeaseUnavailable => {
                "the gateway holds no node-id lease (its fixed `node_id` is held by another \
                 gateway, or NATS is unreachable)"
            }
            Code::ExecutionRetired => {
                "the execution lived on a shard that was retired with its data discarded"
            }
            Code::ClockBehind => {
                "the gateway's clock stepped back more than 1 s behind the last id it minted; it \
                 refuses rather than mint a duplicate"
            }
            Code::IdCollision => {
                "three freshly minted ids in a row already existed: the gateway's node id is \
                 shared with another gateway"
            }
            Code::Internal => {
                "a bug on our side; the body says nothing more, the details are in the gateway's \
                 log"
            }
        }
    }

    /// The code as it is written in a problem document: `shard_unavailable`.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default()
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
            kind: format!("urn:noetl:problem:{}", code.name()),
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

    /// What went wrong with this request, for people.
    pub fn detail(&self) -> &str {
        &self.detail
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const ERRORS_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../wiki/errors.md");
    const TABLE_HEADER: &str = "| code | status | title | meaning |";

    /// The table of wiki/errors.md, rendered from the codes' descriptions.
    fn markdown_table() -> String {
        let mut table = format!("{TABLE_HEADER}\n|---|---|---|---|\n");
        for code in Code::ALL {
            table.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                code.name(),
                code.status().as_u16(),
                code.title(),
                code.meaning()
            ));
        }
        table
    }

    /// `page` with its table of codes (the header line and the table lines after it) replaced.
    fn with_table(page: &str, table: &str) -> Option<String> {
        let start = page.find(TABLE_HEADER)?;
        let rest = &page[start..];
        let length: usize = rest
            .split_inclusive('\n')
            .take_while(|line| line.starts_with('|'))
            .map(str::len)
            .sum();
        Some(format!("{}{table}{}", &page[..start], &rest[length..]))
    }

    #[test]
    fn wiki_errors_md_holds_the_table_the_codes_describe() {
        let table = markdown_table();
        let page = std::fs::read_to_string(ERRORS_MD).unwrap_or_default();
        if std::env::var_os("NOETL_WRITE_ERRORS").is_some() {
            let page = with_table(&page, &table).expect("wiki/errors.md has a table of codes");
            std::fs::write(ERRORS_MD, page).expect("write wiki/errors.md");
            return;
        }
        assert!(
            page.contains(&table),
            "the table of codes in wiki/errors.md is not the one the codes' descriptions render; \
             regenerate it with `NOETL_WRITE_ERRORS=1 cargo test -p noetl-gateway errors_md` \
             and commit it"
        );
    }

    #[test]
    fn a_table_is_replaced_up_to_its_last_line() {
        let page = format!("intro\n\n{TABLE_HEADER}\n|---|\n| old |\n\nafter\n");
        assert_eq!(
            with_table(&page, "NEW\n").as_deref(),
            Some("intro\n\nNEW\n\nafter\n")
        );
        assert_eq!(with_table("no table", "NEW\n"), None);
    }

    #[test]
    fn every_description_fits_a_table_cell_and_a_sentence() {
        for code in Code::ALL {
            for text in [code.title(), code.meaning()] {
                assert!(
                    !text.contains(['|', '\n']) && !text.ends_with('.') && !text.contains("  "),
                    "{code:?}: {text:?}"
                );
            }
            assert!(!code.name().is_empty(), "{code:?}");
        }
    }

    #[test]
    fn a_problem_document_has_the_documented_shape_and_headers() {
        let id = noetl_contract::ExecutionId::new(42).expect("valid id");
        let problem =
            Problem::new(Code::ShardUnavailable, "shard 1 did not answer").with_execution_id(id);
        assert_eq!(
            serde_json::to_value(&problem).expect("serialize"),
            serde_json::json!({
                "type": "urn:noetl:problem:shard_unavailable",
                "title": "Shard unavailable",
                "status": 503,
                "code": "shard_unavailable",
                "detail": "shard 1 did not answer",
                "execution_id": "42",
            })
        );
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(headers[header::RETRY_AFTER], "1");
        let unauthorized = Problem::new(Code::Unauthorized, "no token").into_response();
        assert_eq!(unauthorized.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(unauthorized.headers().get(header::RETRY_AFTER).is_none());
    }
}
