//! Messages exchanged between gateway and shard servers over NATS (JSON bodies).

use serde::{Deserialize, Serialize};

use crate::id::ExecutionId;
use crate::playbook::Playbook;
use crate::routing::ShardId;
use crate::status::StepStatus;
use crate::step::Attempt;

// Named by the messages of this module, so reachable from here too.
pub use crate::playbook::Labels;
pub use crate::status::ExecutionStatus;

/// The tenant of executions submitted without authentication.
pub const DEFAULT_TENANT: &str = "default";

fn default_tenant() -> String {
    DEFAULT_TENANT.to_owned()
}

/// Whose execution a read, a cancel or a listing is for: the shard answers `not_found` for an
/// execution of another tenant, exactly as for a missing one. Required: the shard refuses a
/// request without one (`bad_request`); it is an `Option` only so such a request decodes and
/// is refused with a clear message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionQuery {
    #[serde(default)]
    pub tenant: Option<String>,
}

/// Ask the owning shard to commit a new execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitCommand {
    pub execution_id: ExecutionId,
    pub playbook: Playbook,
    /// The catalog version of `playbook`, when it was submitted by reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook_version: Option<u32>,
    /// Who submitted it (from the caller's token).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    pub input: serde_json::Value,
    pub labels: Labels,
}

/// Reply to a submit once the execution is committed in its shard database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitReceipt {
    pub execution_id: ExecutionId,
    pub shard: ShardId,
    pub status: ExecutionStatus,
    /// RFC 3339 commit time.
    pub created_at: String,
    /// `false` when the id was already committed (a retried submit).
    pub created: bool,
}

/// An execution as stored in its shard, with the state of every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutionView {
    pub execution_id: ExecutionId,
    pub shard: ShardId,
    pub status: ExecutionStatus,
    pub playbook_name: String,
    /// The catalog version it ran, when it was submitted by reference.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub playbook_version: Option<u32>,
    /// The playbook's default input overridden by the submitted input.
    pub input: serde_json::Value,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::playbook::LabelsSchema))]
    pub labels: Labels,
    /// RFC 3339.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    /// RFC 3339: the last change of the execution or one of its steps.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
    pub steps: Vec<StepView>,
    /// The execution's variables, written by its steps' `set` (absent while none is).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub ctx: serde_json::Map<String, serde_json::Value>,
    /// The execution whose `playbook` step started it (absent for a submitted execution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<ExecutionId>,
    /// The submitted execution its tree started from (absent for a submitted execution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<ExecutionId>,
    /// The child executions its `playbook` steps started (each step's current attempt's), in
    /// step order; each step names its own as `child_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ExecutionId>,
}

/// One step of an execution: its state, current attempt, result and timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepView {
    pub name: String,
    pub status: StepStatus,
    /// The current attempt (0 before the first dispatch).
    #[cfg_attr(feature = "openapi", schema(value_type = u32))]
    pub attempt: Attempt,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub finished_at: Option<String>,
    /// A loop step's progress once its loop started: items in all, dispatched so far
    /// (`next`), succeeded, failed, and in flight.
    #[serde(default, rename = "loop", skip_serializing_if = "Option::is_none")]
    pub loop_: Option<crate::engine::LoopProgress>,
    /// The child execution its current attempt started (a `playbook` step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_id: Option<ExecutionId>,
}

/// Which events to read: those after `after_seq`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsQuery {
    pub after_seq: i64,
    pub limit: u32,
    /// As in [`ExecutionQuery`].
    #[serde(default)]
    pub tenant: Option<String>,
}

/// One entry of an execution's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventView {
    /// Its position in the log, from 1.
    pub seq: i64,
    /// What happened: `execution_created`, `step_dispatched`, `step_succeeded`, …
    pub kind: String,
    pub payload: serde_json::Value,
    /// RFC 3339.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
}

/// A page of the event log, in sequence order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// The execution's status when the page was read; a client following the log stops once
    /// it is terminal and the page is empty.
    pub status: ExecutionStatus,
}

/// Stable machine-readable codes a shard server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireErrorCode {
    /// The execution id does not route to the shard the request was sent to.
    Misrouted,
    /// No execution with that id in this shard.
    NotFound,
    /// The request body could not be understood.
    BadRequest,
    /// The shard's database is unreachable or failing.
    ShardUnavailable,
    /// The shard's server has as many requests in flight as it takes (`max_in_flight`); the
    /// request was not started.
    Overloaded,
    /// The request or its reply is over NATS `max_payload`: it was not sent (a reply: this
    /// error was sent instead). Sending it again cannot help.
    TooLarge,
    /// A first step's `with` went over its template budget (the message names the step and
    /// the field); nothing was stored.
    TemplateBudgetExceeded,
    /// A first step's `with` rendered a value PostgreSQL cannot store (U+0000); nothing was
    /// stored.
    UnstorableValue,
    /// A first step's `loop.in` rendered more items than the shard's `max_loop_items` (the
    /// message names the step and the count); nothing was stored.
    LoopTooLarge,
    /// The submit's tenant has `tenant_max_executions_in_flight` executions not yet finished in
    /// the shard (the message names the quota); nothing was stored.
    TenantQuotaExceeded,
    /// A step targets a pool its tenant may not use, or runs `shell` for a tenant that did not
    /// opt in (the message names the step and the pool); nothing was stored.
    PoolForbidden,
    /// The playbook is invalid, or a step may run longer than the shard's
    /// `max_step_timeout_ms` (the message names the field and the bound); nothing was stored.
    InvalidPlaybook,
    /// A delete named an execution that has not finished (the message names its status);
    /// nothing was deleted.
    NotTerminal,
    /// The playbook's `playbook` steps nest deeper than the shard's `max_child_depth`; nothing
    /// was stored.
    NestingTooDeep,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub code: WireErrorCode,
    pub message: String,
}

/// Envelope of every shard reply: `{"ok": …}` or `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Error(WireError),
}

impl<T> From<Result<T, WireError>> for Reply<T> {
    fn from(result: Result<T, WireError>) -> Self {
        match result {
            Ok(value) => Reply::Ok(value),
            Err(error) => Reply::Error(error),
        }
    }
}

impl<T> From<Reply<T>> for Result<T, WireError> {
    fn from(reply: Reply<T>) -> Self {
        match reply {
            Reply::Ok(value) => Ok(value),
            Reply::Error(error) => Err(error),
        }
    }
}

/// Reply to a shard ping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReply {
    pub shard: ShardId,
    /// Whether the shard's database committed a write (a read-only one did not).
    pub database_ok: bool,
}

/// Which executions a shard lists: newest first, by id (ids are time-ordered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Only ids below this one (a page's cursor, or the end of a time range).
    pub below: Option<ExecutionId>,
    /// Only ids from this one on (the start of a time range).
    pub from: Option<ExecutionId>,
    pub limit: u32,
    pub status: Option<ExecutionStatus>,
    /// Every one of these labels must be present with this value.
    pub labels: Labels,
    pub playbook: Option<String>,
    /// Only this tenant's executions; required, as in [`ExecutionQuery`].
    #[serde(default)]
    pub tenant: Option<String>,
    /// Only the executions of this tree: the execution itself and every child it started,
    /// at any depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<ExecutionId>,
}

/// An execution in a listing, without its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutionSummary {
    pub execution_id: ExecutionId,
    pub shard: ShardId,
    pub status: ExecutionStatus,
    pub playbook_name: String,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub playbook_version: Option<u32>,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::playbook::LabelsSchema))]
    pub labels: Labels,
    /// RFC 3339.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    /// RFC 3339.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
}

/// A shard's page of a listing, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionList {
    pub executions: Vec<ExecutionSummary>,
}

/// One version of a playbook in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub name: String,
    pub version: u32,
    pub created_at_ms: i64,
    pub playbook: Playbook,
}

/// A playbook name in the catalog and its newest version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSummary {
    pub name: String,
    pub latest_version: u32,
    pub updated_at_ms: i64,
}

/// Reply to a shard stats request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    pub shard: ShardId,
    /// Executions stored in the shard.
    pub executions: u64,
    /// Executions not yet in a terminal state: a draining shard may retire at zero.
    pub unfinished: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_envelope_shape_is_stable() {
        let error: Reply<()> = Reply::Error(WireError {
            code: WireErrorCode::Misrouted,
            message: "wrong shard".into(),
        });
        assert_eq!(
            serde_json::to_value(&error).expect("serialize"),
            serde_json::json!({"error": {"code": "misrouted", "message": "wrong shard"}})
        );
        let ok: Reply<u32> = serde_json::from_str(r#"{"ok": 7}"#).expect("parse");
        assert_eq!(Result::from(ok), Ok(7));
    }
}
