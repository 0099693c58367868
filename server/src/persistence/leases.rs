//! Leases of attempts in flight: heartbeats that extend them (many per statement), the check
//! under the execution's lock that one is still expired, and the scan for those that ran out.

use std::collections::HashMap;

use noetl_contract::status::StepStatus;
use noetl_contract::step::{Attempt, StepIndex};
use noetl_contract::ExecutionId;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use super::rows::{self, integer};
use super::Error;

/// One heartbeat: an attempt of a step, and whether it is the check before the action starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub execution_id: ExecutionId,
    pub step: StepIndex,
    pub attempt: Attempt,
    /// The check before the action starts: read, nothing written.
    pub starting: bool,
    /// When the action started (unix ms, the worker's clock), if the worker said.
    pub started_at_ms: Option<i64>,
}

/// [`beat_attempts`]' statement. Beats that are not `starting` extend the lease and set
/// `started_at` (the worker's start, never later than now; now when the worker did not say);
/// `starting` checks only read. Both match only an attempt that owns its in-flight step.
///
/// The in-flight statuses are a parameter (`$5`), not literals, and the relaxed pool plans
/// generically, so the planner cannot prove the partial lease index's predicate. If it could,
/// statistics gathered at an idle moment (no step in flight) would have it take that index for
/// one row and walk all of it for every beat of the batch: 8 ms a batch under load, against
/// 0.2 ms by the primary key.
const BEAT_ATTEMPTS: &str = "WITH b AS (
         SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::int[], $6::bool[], $7::bigint[])
             AS b(execution_id, step_index, attempt, starting, started_ms)
     ), touched AS (
         UPDATE execution_steps AS s
         SET lease_expires_at = now() + $4 * interval '1 millisecond',
             started_at = coalesce(s.started_at, least(now(), to_timestamp(b.started_ms / 1000.0)),
                                   now())
         FROM b
         WHERE NOT b.starting AND s.execution_id = b.execution_id
           AND s.step_index = b.step_index AND s.attempt = b.attempt
           AND s.status = ANY($5::text[])
         RETURNING s.execution_id, s.step_index, s.attempt, s.status
     )
     SELECT execution_id, step_index, attempt, status FROM touched
     UNION ALL
     SELECT s.execution_id, s.step_index, s.attempt, s.status
     FROM b JOIN execution_steps AS s
       ON s.execution_id = b.execution_id AND s.step_index = b.step_index
     WHERE b.starting AND s.attempt = b.attempt AND s.status = ANY($5::text[])";

/// Heartbeats, one statement for many: each beat that is not a `starting` check extends its
/// attempt's lease and notes when it started. Returns, per beat, the step's status, or `None`
/// when the attempt no longer owns its step (superseded, finished, cancelled). Meant for the
/// relaxed pool.
pub async fn beat_attempts(
    executor: impl PgExecutor<'_>,
    beats: &[Beat],
    lease_ms: i64,
) -> Result<Vec<Option<StepStatus>>, Error> {
    // Rows are taken in (execution, step) order, as report transactions write them, so two
    // batches do not wait for each other crosswise.
    let mut order: Vec<&Beat> = beats.iter().collect();
    order.sort_by_key(|b| (b.execution_id, b.step));
    let rows = sqlx::query(BEAT_ATTEMPTS)
        .bind(
            order
                .iter()
                .map(|b| b.execution_id.get())
                .collect::<Vec<_>>(),
        )
        .bind(
            order
                .iter()
                .map(|b| integer(b.step.get()))
                .collect::<Vec<_>>(),
        )
        .bind(
            order
                .iter()
                .map(|b| integer(b.attempt.get()))
                .collect::<Vec<_>>(),
        )
        .bind(lease_ms)
        .bind(
            &[
                StepStatus::Dispatched.as_str(),
                StepStatus::Running.as_str(),
            ][..],
        )
        .bind(order.iter().map(|b| b.starting).collect::<Vec<_>>())
        .bind(order.iter().map(|b| b.started_at_ms).collect::<Vec<_>>())
        .fetch_all(executor)
        .await?;
    let owned = rows
        .iter()
        .map(|row| {
            let attempt = (
                rows::execution_id(row)?,
                rows::step_index(row)?,
                rows::attempt(row)?,
            );
            Ok((attempt, rows::step_status(row)?))
        })
        .collect::<Result<HashMap<_, _>, Error>>()?;
    Ok(beats
        .iter()
        .map(|b| owned.get(&(b.execution_id, b.step, b.attempt)).copied())
        .collect())
}

/// Whether the attempt's lease is still expired, locking its step row for the rest of `tx`
/// (call it with the execution already locked: execution before steps, on every path).
pub async fn lease_expired(
    tx: &mut Transaction<'_, Postgres>,
    id: ExecutionId,
    step: StepIndex,
    attempt: Attempt,
) -> Result<bool, Error> {
    let expired: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM execution_steps
         WHERE execution_id = $1 AND step_index = $2 AND attempt = $3
           AND status IN ('dispatched', 'running') AND lease_expires_at < now()
         FOR UPDATE",
    )
    .bind(id.get())
    .bind(integer(step.get()))
    .bind(integer(attempt.get()))
    .fetch_optional(&mut **tx)
    .await?;
    Ok(expired.is_some())
}

/// In-flight attempts whose lease has run out: `(execution, step, attempt)`.
pub async fn expired_leases(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<(ExecutionId, StepIndex, Attempt)>, Error> {
    sqlx::query(
        "SELECT execution_id, step_index, attempt FROM execution_steps
         WHERE status IN ('dispatched', 'running') AND lease_expires_at < now()
         ORDER BY lease_expires_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok((
            rows::execution_id(row)?,
            rows::step_index(row)?,
            rows::attempt(row)?,
        ))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use noetl_test_support::Postgres;

    use super::*;
    use crate::persistence::relaxed_pool;
    use crate::persistence::testing::migrated_shard;

    /// The heartbeat statement goes by the primary key even when the statistics say no step is
    /// in flight (gathered at an idle moment) while thousands are: the partial lease index, which
    /// such statistics make look empty, would be walked whole for every beat.
    #[tokio::test]
    async fn heartbeats_find_their_steps_by_primary_key_whatever_the_statistics_say() {
        let pg = Postgres::start();
        let (dsn, pool) = migrated_shard(&pg, "plans").await;
        let steps = |status: &'static str, from: i64| {
            sqlx::query(
                "INSERT INTO execution_steps (execution_id, step_index, name, status, attempt,
                                              lease_expires_at)
                 SELECT id, 0, 'only', $2, 1, now() + interval '1 minute'
                 FROM generate_series($1, $1 + 4999) AS id",
            )
            .bind(from)
            .bind(status)
        };
        steps("succeeded", 1)
            .execute(&pool)
            .await
            .expect("finished steps");
        sqlx::query("ANALYZE execution_steps")
            .execute(&pool)
            .await
            .expect("analyze");
        steps("dispatched", 10_001)
            .execute(&pool)
            .await
            .expect("steps in flight");

        // Planned as the heartbeats' own pool plans it.
        let relaxed = relaxed_pool(&dsn, 1).expect("pool");
        let mut connection = relaxed.acquire().await.expect("connection");
        sqlx::raw_sql(&format!(
            "PREPARE beat(bigint[], int[], int[], bigint, text[], bool[], bigint[]) AS \
             {BEAT_ATTEMPTS}"
        ))
        .execute(&mut *connection)
        .await
        .expect("prepare");
        let plan: Vec<String> = sqlx::query_scalar(
            "EXPLAIN (FORMAT TEXT) EXECUTE beat('{10001,10002}', '{0,0}', '{1,1}', 1000,
                                                '{dispatched,running}', '{false,true}',
                                                '{1,NULL}')",
        )
        .fetch_all(&mut *connection)
        .await
        .expect("explain");
        let plan = plan.join("\n");
        assert!(plan.contains("execution_steps_pkey"), "{plan}");
        assert!(!plan.contains("in_flight_leases"), "{plan}");

        drop(connection);
        let touched = beat_attempts(
            &relaxed,
            &[Beat {
                execution_id: ExecutionId::new(10_001).expect("valid id"),
                step: StepIndex::new(0),
                attempt: Attempt::FIRST,
                starting: false,
                started_at_ms: None,
            }],
            1_000,
        )
        .await
        .expect("heartbeat");
        assert_eq!(touched, vec![Some(StepStatus::Dispatched)]);
    }
}
