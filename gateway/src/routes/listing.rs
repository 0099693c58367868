//! `GET /api/v1/executions`: executions across every shard, newest first, a page at a time.
//!
//! Ids are time-ordered, so a page is "the `limit` largest ids below the cursor": every shard
//! is asked for that in parallel (one range scan of an index each), and the answers are merged.
//! The cursor is the last id of the page, so pages never overlap, and an execution created
//! while a client pages has a larger id than any cursor and cannot push an older one out.
//! A shard that does not answer in time is named in `missing_shards` (`partial: true`).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::{Extension, Json};
use noetl_contract::message::{ExecutionStatus, ExecutionSummary, Labels, ListQuery};
use noetl_contract::playbook::validate_labels;
use noetl_contract::{ExecutionId, NodeId, ShardId, ShardState};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::problem::{Code, Problem};
use crate::state::AppState;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1_000;
const CURSOR_PREFIX: &str = "c1.";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// At most this many executions (1 to 1,000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only executions in this state.
    #[param(value_type = Option<ExecutionStatus>)]
    pub status: Option<String>,
    /// Label selector: `key=value` pairs separated by commas; all must match.
    #[param(example = "team=data,env=prod")]
    pub labels: Option<String>,
    /// Playbook name.
    pub playbook: Option<String>,
    /// Only the tree of this execution: it and every child execution it started, at any
    /// depth (a decimal id).
    #[param(value_type = Option<String>, pattern = "^[0-9]{1,19}$")]
    pub root_id: Option<String>,
    /// RFC 3339; executions created at or after it (by the time in their id).
    #[param(format = DateTime)]
    pub created_after: Option<String>,
    /// RFC 3339; executions created before it.
    #[param(format = DateTime)]
    pub created_before: Option<String>,
}

/// A page of executions across every shard, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse {
    pub executions: Vec<ExecutionSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
    /// Whether some shard did not answer, so the page may miss its executions.
    pub partial: bool,
    pub missing_shards: Vec<ShardId>,
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(Code::InvalidRequest, detail)
}

fn parse_cursor(cursor: &str) -> Result<ExecutionId, Problem> {
    cursor
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
        .and_then(|raw| ExecutionId::new(raw).ok())
        .ok_or_else(|| invalid("cursor: not a cursor this API returned; start over without one"))
}

fn cursor_of(id: ExecutionId) -> String {
    format!("{CURSOR_PREFIX}{:x}", id.get())
}

pub fn parse_labels(selector: &str) -> Result<Labels, Problem> {
    let mut labels = Labels::new();
    for pair in selector.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| invalid(format!("labels: {pair:?} is not key=value")))?;
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    validate_labels(&labels).map_err(|e| invalid(format!("labels: {e}")))?;
    Ok(labels)
}

/// The smallest id minted at `instant` (ids sort by their time first).
fn first_id_at(field: &str, instant: &str) -> Result<ExecutionId, Problem> {
    let at = OffsetDateTime::parse(instant, &Rfc3339).map_err(|e| {
        invalid(format!(
            "{field}: {instant:?} is not an RFC 3339 time ({e})"
        ))
    })?;
    let unix_ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| invalid(format!("{field}: out of range")))?;
    let clamped = unix_ms.clamp(
        noetl_contract::id::CUSTOM_EPOCH_UNIX_MS,
        noetl_contract::id::MAX_UNIX_MS,
    );
    let node = NodeId::try_from(0).expect("node 0 is valid");
    ExecutionId::from_parts(clamped, node, 0).map_err(|e| invalid(format!("{field}: {e}")))
}

impl ListParams {
    fn query(&self) -> Result<ListQuery, Problem> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(invalid(format!("limit must be 1 to {MAX_LIMIT}")));
        }
        let status = self
            .status
            .as_deref()
            .map(|s| {
                ExecutionStatus::parse(s).ok_or_else(|| {
                    invalid(format!(
                        "status: {s:?} is not one of pending, running, succeeded, failed, cancelled"
                    ))
                })
            })
            .transpose()?;
        let cursor = self.cursor.as_deref().map(parse_cursor).transpose()?;
        let before = self
            .created_before
            .as_deref()
            .map(|t| first_id_at("created_before", t))
            .transpose()?;
        let below = match (cursor, before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(ListQuery {
            below,
            from: self
                .created_after
                .as_deref()
                .map(|t| first_id_at("created_after", t))
                .transpose()?,
            limit,
            status,
            labels: self
                .labels
                .as_deref()
                .map(parse_labels)
                .transpose()?
                .unwrap_or_default(),
            playbook: self.playbook.clone(),
            tenant: None,
            root_id: self
                .root_id
                .as_deref()
                .map(|raw| {
                    raw.parse::<ExecutionId>()
                        .map_err(|_| invalid(format!("root_id: {raw:?} is not an execution id")))
                })
                .transpose()?,
        })
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/executions",
    tag = "executions",
    operation_id = "list_executions",
    summary = "List executions across every shard",
    description = "Executions newest first (by id, which is time-ordered), a page at a time: pass \
        `next_cursor` as `cursor` for the next page; pages never overlap or leave gaps. Every \
        shard is asked; one that does not answer in time is named in `missing_shards` and the \
        page is marked `partial` (never silently short). Retired shards are not listed.",
    params(ListParams),
    responses((status = 200, description = "A page of executions.", body = ListResponse)),
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ListResponse>, Problem> {
    let Query(params) = params.map_err(|e| invalid(e.body_text()))?;
    let query = ListQuery {
        tenant: Some(principal.tenant),
        ..params.query()?
    };
    let topology = state.topology.current().ok_or_else(|| {
        Problem::new(
            Code::TopologyUnavailable,
            "the gateway has not read the cluster topology yet",
        )
    })?;
    // Retired shards are out of service: their executions are not listed.
    let shards: Vec<ShardId> = topology
        .shard_states(noetl_bus::unix_now_ms())
        .into_iter()
        .filter(|(_, s)| *s != ShardState::Retired)
        .map(|(shard, _)| shard)
        .collect();
    let answers = futures::future::join_all(
        shards
            .iter()
            .map(|&shard| state.dispatcher.list(shard, &query)),
    )
    .await;
    let limit = query.limit as usize;
    let mut missing_shards = Vec::new();
    let mut more = false;
    let mut executions = Vec::new();
    for (shard, answer) in shards.into_iter().zip(answers) {
        match answer {
            Some(page) => {
                more |= page.executions.len() >= limit;
                executions.extend(page.executions);
            }
            None => missing_shards.push(shard),
        }
    }
    executions.sort_unstable_by_key(|e| std::cmp::Reverse(e.execution_id));
    more |= executions.len() > limit;
    executions.truncate(limit);
    let partial = !missing_shards.is_empty();
    // A partial page may have missed a shard's executions: let the client carry on anyway.
    let next_cursor = (more || partial)
        .then(|| executions.last().map(|e| cursor_of(e.execution_id)))
        .flatten();
    Ok(Json(ListResponse {
        executions,
        next_cursor,
        partial,
        missing_shards,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let id = ExecutionId::new(320_816_801_799_737_344).expect("valid");
        assert_eq!(parse_cursor(&cursor_of(id)).expect("round trip"), id);
        for bad in ["", "c1.", "c1.zz", "12345", "c1.-5"] {
            assert_eq!(
                parse_cursor(bad).expect_err(bad).code(),
                Code::InvalidRequest
            );
        }
    }

    #[test]
    fn label_selectors_parse_and_bad_ones_are_named() {
        let labels = parse_labels("team=data,env=prod").expect("valid");
        assert_eq!(labels.get("env").map(String::as_str), Some("prod"));
        assert!(parse_labels("").expect("empty").is_empty());
        assert!(parse_labels("team").is_err());
    }

    #[test]
    fn time_ranges_become_id_bounds() {
        let params = ListParams {
            limit: Some(10),
            cursor: None,
            status: Some("running".to_owned()),
            labels: None,
            playbook: None,
            root_id: None,
            created_after: Some("2025-01-01T00:00:00Z".to_owned()),
            created_before: Some("2025-01-02T00:00:00Z".to_owned()),
        };
        let query = params.query().expect("valid");
        let (from, below) = (query.from.expect("from"), query.below.expect("below"));
        assert_eq!(from.unix_ms(), 1_735_689_600_000);
        assert_eq!(below.unix_ms(), 1_735_776_000_000);
        let bad = ListParams {
            created_after: Some("yesterday".to_owned()),
            ..params
        };
        assert!(bad.query().is_err());
    }
}
