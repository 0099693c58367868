//! Deleting executions: one terminal execution on request, and the retention purge's batches
//! of terminal executions older than their tenant's retention. Both delete an execution's rows
//! from every table of the shard in one transaction that holds its row lock.
//!
//! The per-tenant counters of `tenant_max_executions_in_flight` are left alone: a terminal
//! execution is counted in both `tenant_admitted` and `tenant_finished`, so deleting it does
//! not change how many are in flight, and a recount (at start with a quota) agrees.

use std::time::Duration;

use noetl_contract::status::ExecutionStatus;
use noetl_contract::ExecutionId;
use sqlx::{PgConnection, PgPool};

use super::Error;

/// Deletes every row of executions `$1` (already locked) in every table of the shard. Steps,
/// events and the outbox have no foreign key to `executions` (the write path dropped them), so
/// each table is named; tables that reference `executions` with `ON DELETE CASCADE` follow.
const DELETE_EVERYWHERE: &str = "WITH events AS (
         DELETE FROM execution_events WHERE execution_id = ANY($1)
     ), steps AS (
         DELETE FROM execution_steps WHERE execution_id = ANY($1)
     ), commands AS (
         DELETE FROM outbox WHERE execution_id = ANY($1)
     ), dead AS (
         DELETE FROM outbox_dead_letters WHERE execution_id = ANY($1)
     )
     DELETE FROM executions WHERE execution_id = ANY($1)";

async fn delete_everywhere(connection: &mut PgConnection, ids: &[i64]) -> Result<u64, Error> {
    Ok(sqlx::query(DELETE_EVERYWHERE)
        .bind(ids)
        .execute(connection)
        .await?
        .rows_affected())
}

/// What a request to delete one execution found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// It was terminal, and is gone from every table.
    Gone,
    /// No such execution for this tenant.
    NotFound,
    /// It has not finished (this status); nothing was deleted.
    NotTerminal(ExecutionStatus),
}

/// Deletes execution `id` of `tenant` if it is terminal, under its row lock (so a decision in
/// flight finishes first, and a running execution is never deleted).
pub async fn delete_execution(
    pool: &PgPool,
    id: ExecutionId,
    tenant: &str,
) -> Result<Deleted, Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT status FROM executions WHERE execution_id = $1 AND tenant = $2 FOR UPDATE",
    )
    .bind(id.get())
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(Deleted::NotFound);
    };
    let status = super::rows::status(&row)?;
    if !status.is_terminal() {
        return Ok(Deleted::NotTerminal(status));
    }
    delete_everywhere(&mut tx, &[id.get()]).await?;
    tx.commit().await?;
    Ok(Deleted::Gone)
}

/// Which tenants one purge batch is for.
#[derive(Debug, Clone, Copy)]
pub enum Tenants<'a> {
    /// Only this one.
    One(&'a str),
    /// Every tenant but these (those with a retention of their own).
    AllBut(&'a [String]),
}

/// Terminal executions of tenants `$2` that last changed more than `$1` ms ago, oldest first
/// (through `executions_finished_by_time`), at most `$3`, locked unless another holds them.
macro_rules! doomed {
    ($tenants:literal) => {
        concat!(
            "SELECT execution_id FROM executions
             WHERE status IN ('succeeded', 'failed', 'cancelled')
               AND updated_at < now() - $1 * interval '1 millisecond' AND ",
            $tenants,
            " ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED"
        )
    };
}
const SELECT_OF_TENANTS: &str = doomed!("tenant = ANY($2)");
const SELECT_OF_OTHERS: &str = doomed!("tenant <> ALL($2)");

/// Deletes up to `limit` terminal executions of `tenants` that last changed more than `age`
/// ago, oldest first, in one transaction, and answers how many. Rows another replica's purge
/// (or a request) holds are skipped, so replicas of a shard purge side by side.
pub async fn purge_batch(
    pool: &PgPool,
    tenants: Tenants<'_>,
    age: Duration,
    limit: i64,
) -> Result<u64, Error> {
    let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    let (filter, names) = match tenants {
        Tenants::One(tenant) => (SELECT_OF_TENANTS, vec![tenant.to_owned()]),
        Tenants::AllBut(others) => (SELECT_OF_OTHERS, others.to_vec()),
    };
    let mut tx = pool.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(filter)
        .bind(age_ms)
        .bind(names)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let purged = delete_everywhere(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(purged)
}
