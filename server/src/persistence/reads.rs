//! Reads outside the write path: an execution with its steps, a page of its event log, a page
//! of the shard's executions, and the counts behind stats and the backlog gauges.

use noetl_contract::message::{
    EventPage, EventView, ExecutionSummary, ExecutionView, Labels, ListQuery, StepView,
};
use noetl_contract::status::ExecutionStatus;
use noetl_contract::{ExecutionId, ShardId};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::rows::{self, timestamp};
use super::Error;

/// A statement reading `$columns` of execution `$1` when it belongs to tenant `$2`: how every
/// read of one execution sees only its tenant's (there is no read for any tenant).
macro_rules! tenants_execution {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM executions WHERE execution_id = $1 AND tenant = $2"
        )
    };
}

/// The row `statement` (made by `tenants_execution!`) reads of execution `id` for `tenant`.
async fn tenants_execution(
    pool: &PgPool,
    statement: &'static str,
    id: ExecutionId,
    tenant: &str,
) -> Result<Option<PgRow>, Error> {
    Ok(sqlx::query(statement)
        .bind(id.get())
        .bind(tenant)
        .fetch_optional(pool)
        .await?)
}

/// Whether execution `id` exists and belongs to `tenant`.
pub async fn visible(pool: &PgPool, id: ExecutionId, tenant: &str) -> Result<bool, Error> {
    let statement = tenants_execution!("execution_id");
    Ok(tenants_execution(pool, statement, id, tenant)
        .await?
        .is_some())
}

/// How many executions the shard holds, and how many are not finished.
pub async fn shard_counts(pool: &PgPool) -> Result<(u64, u64), Error> {
    let (total, unfinished): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status IN ('pending', 'running'))
         FROM executions",
    )
    .fetch_one(pool)
    .await?;
    Ok((
        u64::try_from(total).unwrap_or(0),
        u64::try_from(unfinished).unwrap_or(0),
    ))
}

/// The shard's backlog: commands in the outbox not yet stored by JetStream, and steps
/// dispatched or running (commands handed out and not yet reported).
pub async fn backlog(pool: &PgPool) -> Result<(i64, i64), Error> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM outbox) AS outbox,
                (SELECT count(*) FROM execution_steps
                 WHERE status IN ('dispatched', 'running')) AS pending",
    )
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("outbox")?, row.try_get("pending")?))
}

/// A page of an execution's event log, and its status.
pub async fn events_page(
    pool: &PgPool,
    id: ExecutionId,
    tenant: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Option<EventPage>, Error> {
    let statement = tenants_execution!("status");
    let Some(execution) = tenants_execution(pool, statement, id, tenant).await? else {
        return Ok(None);
    };
    let events = sqlx::query(
        "SELECT seq, kind, payload, created_at FROM execution_events
         WHERE execution_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(id.get())
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(EventView {
            seq: row.try_get("seq")?,
            kind: row.try_get("kind")?,
            payload: row.try_get("payload")?,
            created_at: timestamp(row, "created_at")?,
        })
    })
    .collect::<Result<Vec<_>, Error>>()?;
    Ok(Some(EventPage {
        events,
        status: rows::status(&execution)?,
    }))
}

/// Reads one execution.
pub async fn get_execution(
    pool: &PgPool,
    shard: ShardId,
    id: ExecutionId,
    tenant: &str,
) -> Result<Option<ExecutionView>, Error> {
    let statement = tenants_execution!(
        "execution_id, status, playbook_name, playbook_version, input, labels, created_at, \
         updated_at, ctx, parent_id, root_id"
    );
    let Some(row) = tenants_execution(pool, statement, id, tenant).await? else {
        return Ok(None);
    };
    let sqlx::types::Json(labels): sqlx::types::Json<Labels> = row.try_get("labels")?;
    let sqlx::types::Json(ctx) = row.try_get("ctx")?;
    let step_rows = sqlx::query(
        "SELECT name, status, attempt, result, error, started_at, finished_at, child_id
         FROM execution_steps WHERE execution_id = $1 ORDER BY step_index",
    )
    .bind(id.get())
    .fetch_all(pool)
    .await?;
    let steps: Vec<StepView> = step_rows.iter().map(step_view).collect::<Result<_, _>>()?;
    let id_or_null = |column: &str| -> Result<Option<ExecutionId>, Error> {
        row.try_get::<Option<i64>, _>(column)?
            .map(|raw| ExecutionId::new(raw).map_err(|e| Error::Malformed(e.to_string())))
            .transpose()
    };
    Ok(Some(ExecutionView {
        execution_id: rows::execution_id(&row)?,
        shard,
        status: rows::status(&row)?,
        playbook_name: row.try_get("playbook_name")?,
        playbook_version: rows::playbook_version(&row)?,
        input: row.try_get("input")?,
        labels,
        created_at: timestamp(&row, "created_at")?,
        updated_at: timestamp(&row, "updated_at")?,
        children: steps.iter().filter_map(|s| s.child_id).collect(),
        steps,
        ctx,
        parent_id: id_or_null("parent_id")?,
        root_id: id_or_null("root_id")?,
    }))
}

fn step_view(step: &PgRow) -> Result<StepView, Error> {
    Ok(StepView {
        name: step.try_get("name")?,
        status: rows::step_status(step)?,
        attempt: rows::attempt(step)?,
        result: step.try_get("result")?,
        error: step.try_get("error")?,
        started_at: rows::timestamp_or_null(step, "started_at")?,
        finished_at: rows::timestamp_or_null(step, "finished_at")?,
        child_id: step
            .try_get::<Option<i64>, _>("child_id")?
            .map(|raw| ExecutionId::new(raw).map_err(|e| Error::Malformed(e.to_string())))
            .transpose()?,
    })
}

/// A page of `tenant`'s executions, newest first: one range scan of the tenant's index (of the
/// filtered column) below `query.below`, at most `query.limit` rows. `query.tenant` is not
/// read: the caller checked it and passes it as `tenant`.
pub async fn list_executions(
    pool: &PgPool,
    shard: ShardId,
    tenant: &str,
    query: &ListQuery,
) -> Result<Vec<ExecutionSummary>, Error> {
    let labels = (!query.labels.is_empty())
        .then(|| serde_json::to_string(&query.labels))
        .transpose()
        .map_err(|e| Error::Malformed(e.to_string()))?;
    let found = sqlx::query(
        "SELECT execution_id, status, playbook_name, playbook_version, labels, created_at,
                updated_at
         FROM executions
         WHERE ($1::bigint IS NULL OR execution_id < $1)
           AND ($2::bigint IS NULL OR execution_id >= $2)
           AND ($3::text IS NULL OR status = $3)
           AND ($4::jsonb IS NULL OR labels @> $4::jsonb)
           AND ($5::text IS NULL OR playbook_name = $5)
           AND ($8::bigint IS NULL OR root_id = $8 OR execution_id = $8)
           AND tenant = $7
         ORDER BY execution_id DESC
         LIMIT $6",
    )
    .bind(query.below.map(ExecutionId::get))
    .bind(query.from.map(ExecutionId::get))
    .bind(query.status.map(ExecutionStatus::as_str))
    .bind(labels)
    .bind(query.playbook.as_deref())
    .bind(i64::from(query.limit))
    .bind(tenant)
    .bind(query.root_id.map(ExecutionId::get))
    .fetch_all(pool)
    .await?;
    found
        .iter()
        .map(|row| {
            let sqlx::types::Json(labels): sqlx::types::Json<Labels> = row.try_get("labels")?;
            Ok(ExecutionSummary {
                execution_id: rows::execution_id(row)?,
                shard,
                status: rows::status(row)?,
                playbook_name: row.try_get("playbook_name")?,
                playbook_version: rows::playbook_version(row)?,
                labels,
                created_at: timestamp(row, "created_at")?,
                updated_at: timestamp(row, "updated_at")?,
            })
        })
        .collect()
}
