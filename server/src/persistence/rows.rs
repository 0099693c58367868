//! Columns in and out: reading typed values from rows (a value the types cannot hold is
//! [`Error::Malformed`], never a default), and writing them as the columns' types.

use noetl_contract::engine::StepStatus;
use noetl_contract::message::ExecutionStatus;
use noetl_contract::step::{Attempt, AttemptToken, StepIndex};
use noetl_contract::ExecutionId;
use sqlx::postgres::PgRow;
use sqlx::Row;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Error;

/// JSON text for a database column; the values came out of JSON, so they go back in.
pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .expect("playbooks, inputs, labels and results are plain JSON values")
}

/// A step index or an attempt as an `integer` column: one beyond its range (only a worker's
/// report can name one) matches no row.
pub(super) fn integer(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

pub(super) fn execution_id(row: &PgRow) -> Result<ExecutionId, Error> {
    let raw: i64 = row.try_get("execution_id")?;
    ExecutionId::new(raw).map_err(|e| Error::Malformed(e.to_string()))
}

pub(super) fn status(row: &PgRow) -> Result<ExecutionStatus, Error> {
    let raw: String = row.try_get("status")?;
    ExecutionStatus::parse(&raw).ok_or_else(|| Error::Malformed(format!("status {raw:?}")))
}

/// The `status` of a step row.
pub(super) fn step_status(row: &PgRow) -> Result<StepStatus, Error> {
    let raw: String = row.try_get("status")?;
    StepStatus::parse(&raw).ok_or_else(|| Error::Malformed(format!("step status {raw:?}")))
}

pub(super) fn step_index(row: &PgRow) -> Result<StepIndex, Error> {
    let raw: i32 = row.try_get("step_index")?;
    u32::try_from(raw)
        .map(StepIndex::new)
        .map_err(|_| Error::Malformed(format!("step index {raw}")))
}

pub(super) fn attempt(row: &PgRow) -> Result<Attempt, Error> {
    let raw: i32 = row.try_get("attempt")?;
    u32::try_from(raw)
        .map(Attempt::new)
        .map_err(|_| Error::Malformed(format!("attempt {raw}")))
}

/// The `attempt_token` of a step row (the column's check keeps it 16 bytes).
pub(super) fn attempt_token(row: &PgRow) -> Result<Option<AttemptToken>, Error> {
    let raw: Option<Vec<u8>> = row.try_get("attempt_token")?;
    raw.map(|bytes| {
        AttemptToken::from_slice(&bytes)
            .ok_or_else(|| Error::Malformed(format!("an attempt token of {} bytes", bytes.len())))
    })
    .transpose()
}

pub(super) fn playbook_version(row: &PgRow) -> Result<Option<u32>, Error> {
    let raw: Option<i32> = row.try_get("playbook_version")?;
    Ok(raw.and_then(|v| u32::try_from(v).ok()))
}

/// The timestamp in `column`, as RFC 3339.
pub(super) fn timestamp(row: &PgRow, column: &str) -> Result<String, Error> {
    rfc3339(row.try_get(column)?)
}

/// The nullable timestamp in `column`, as RFC 3339.
pub(super) fn timestamp_or_null(row: &PgRow, column: &str) -> Result<Option<String>, Error> {
    row.try_get::<Option<OffsetDateTime>, _>(column)?
        .map(rfc3339)
        .transpose()
}

fn rfc3339(at: OffsetDateTime) -> Result<String, Error> {
    at.format(&Rfc3339)
        .map_err(|e| Error::Malformed(e.to_string()))
}
