//! Leases of attempts in flight (of steps and of loop items): heartbeats that extend them (many
//! per statement), the check under the execution's lock that one is still expired, and the scan
//! for those that ran out.

use std::collections::HashMap;

use noetl_contract::status::StepStatus;
use noetl_contract::step::{Attempt, AttemptToken, StepIndex};
use noetl_contract::ExecutionId;
use sqlx::{PgExecutor, PgPool, Postgres, Row, Transaction};

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
    /// The attempt's token, as the worker sent it.
    pub token: Option<AttemptToken>,
    /// The loop item the attempt runs, for a loop step.
    pub item: Option<u32>,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatAnswer {
    /// The attempt owns its in-flight step, in this status (before the beat).
    Owns(StepStatus),
    /// The attempt no longer owns its step (superseded, finished, cancelled).
    Lost,
    /// The attempt owns its step, but the beat does not carry its token: nothing was written.
    Refused,
}

/// [`beat_attempts`]' statement. Beats that are not `starting` extend the lease and set
/// `started_at` (the worker's start, never later than now; now when the worker did not say);
/// `starting` checks only read. Both match only an attempt that owns its in-flight step, and
/// a beat writes only with the attempt's token (or to a row stored before tokens, which has
/// none). The statement compares the SHA-256 digests of the tokens, so how long the comparison
/// takes says nothing about the token; rows whose beat is refused come back too, and
/// [`beat_attempts`] compares the tokens again, in constant time, to tell the beats apart.
///
/// The in-flight statuses are a parameter (`$5`), not literals, and the relaxed pool plans
/// generically, so the planner cannot prove the partial lease index's predicate. If it could,
/// statistics gathered at an idle moment (no step in flight) would have it take that index for
/// one row and walk all of it for every beat of the batch: 8 ms a batch under load, against
/// 0.2 ms by the primary key.
const BEAT_ATTEMPTS: &str = "WITH b AS (
         SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::int[], $6::bool[], $7::bigint[],
                              $8::bytea[])
             AS b(execution_id, step_index, attempt, starting, started_ms, token)
     ), touched AS (
         UPDATE execution_steps AS s
         SET lease_expires_at = now() + $4 * interval '1 millisecond',
             started_at = coalesce(s.started_at, least(now(), to_timestamp(b.started_ms / 1000.0)),
                                   now())
         FROM b
         WHERE NOT b.starting AND s.execution_id = b.execution_id
           AND s.step_index = b.step_index AND s.attempt = b.attempt
           AND s.status = ANY($5::text[])
           AND (s.attempt_token IS NULL
                OR coalesce(sha256(s.attempt_token) = sha256(b.token), false))
         RETURNING s.execution_id, s.step_index, s.attempt, s.status, s.attempt_token
     )
     SELECT execution_id, step_index, attempt, status, attempt_token FROM touched
     UNION ALL
     SELECT s.execution_id, s.step_index, s.attempt, s.status, s.attempt_token
     FROM b JOIN execution_steps AS s
       ON s.execution_id = b.execution_id AND s.step_index = b.step_index
     WHERE s.attempt = b.attempt AND s.status = ANY($5::text[])
       AND (b.starting OR NOT (s.attempt_token IS NULL
                               OR coalesce(sha256(s.attempt_token) = sha256(b.token), false)))";

/// Heartbeats, one statement for many: each beat that is not a `starting` check and carries
/// its attempt's token extends the attempt's lease and notes when it started. Returns what
/// each beat found. Meant for the relaxed pool.
pub async fn beat_attempts(
    connection: &mut sqlx::PgConnection,
    beats: &[Beat],
    lease_ms: i64,
) -> Result<Vec<BeatAnswer>, Error> {
    if beats.iter().all(|b| b.item.is_none()) {
        return beat_steps(connection, beats, lease_ms).await;
    }
    // Items and steps, in two statements of one transaction.
    let mut tx = sqlx::Connection::begin(connection).await?;
    let (items, steps): (Vec<&Beat>, Vec<&Beat>) = beats.iter().partition(|b| b.item.is_some());
    let steps: Vec<Beat> = steps.into_iter().copied().collect();
    let mut step_answers = beat_steps(&mut *tx, &steps, lease_ms).await?.into_iter();
    let mut item_answers = beat_items(&mut *tx, &items, lease_ms).await?.into_iter();
    tx.commit().await?;
    Ok(beats
        .iter()
        .map(|b| {
            let next = match b.item {
                Some(_) => item_answers.next(),
                None => step_answers.next(),
            };
            next.unwrap_or(BeatAnswer::Lost)
        })
        .collect())
}

/// [`beat_attempts`] for beats of steps (not of loop items).
async fn beat_steps(
    executor: impl PgExecutor<'_>,
    beats: &[Beat],
    lease_ms: i64,
) -> Result<Vec<BeatAnswer>, Error> {
    if beats.is_empty() {
        return Ok(Vec::new());
    }
    // Rows are taken in (execution, step) order, as report transactions write them, so two
    // batches do not wait for each other crosswise.
    let mut order: Vec<&Beat> = beats.iter().collect();
    order.sort_by_key(|b| (b.execution_id, b.step));
    let in_flight = [
        StepStatus::Dispatched.as_str(),
        StepStatus::Running.as_str(),
    ];
    let found = sqlx::query(BEAT_ATTEMPTS)
        .bind(column(&order, |b| b.execution_id.get()))
        .bind(column(&order, |b| integer(b.step.get())))
        .bind(column(&order, |b| integer(b.attempt.get())))
        .bind(lease_ms)
        .bind(&in_flight[..])
        .bind(column(&order, |b| b.starting))
        .bind(column(&order, |b| b.started_at_ms))
        .bind(column(&order, |b| b.token.map(|t| t.expose().to_vec())))
        .fetch_all(executor)
        .await?;
    let owned = found
        .iter()
        .map(|row| {
            let attempt = (
                rows::execution_id(row)?,
                rows::step_index(row)?,
                rows::attempt(row)?,
            );
            Ok((
                attempt,
                (rows::step_status(row)?, rows::attempt_token(row)?),
            ))
        })
        .collect::<Result<HashMap<_, _>, Error>>()?;
    Ok(beats
        .iter()
        .map(|b| match owned.get(&(b.execution_id, b.step, b.attempt)) {
            None => BeatAnswer::Lost,
            Some((status, stored)) if AttemptToken::admits(stored.as_ref(), b.token.as_ref()) => {
                BeatAnswer::Owns(*status)
            }
            Some(_) => BeatAnswer::Refused,
        })
        .collect())
}

/// One column of `beats`, as an array for `UNNEST`.
fn column<T>(beats: &[&Beat], of: impl Fn(&Beat) -> T) -> Vec<T> {
    beats.iter().map(|b| of(b)).collect()
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

/// Items are in flight only while their loop step runs: a failed or cancelled loop's items
/// neither heartbeat nor expire.
const ITEM_OF_A_RUNNING_LOOP: &str = "EXISTS (SELECT 1 FROM execution_steps AS s
    WHERE s.execution_id = l.execution_id AND s.step_index = l.step_index
      AND s.status = 'running')";

/// Heartbeats of loop items, as [`super::beat_attempts`] for steps: every item has a token.
async fn beat_items(
    executor: impl PgExecutor<'_>,
    beats: &[&Beat],
    lease_ms: i64,
) -> Result<Vec<BeatAnswer>, Error> {
    let statement = format!(
        "WITH b AS (
             SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::int[], $4::int[], $5::bool[],
                                  $6::bytea[])
                 AS b(execution_id, step_index, item, attempt, starting, token)
         ), found AS (
             SELECT l.execution_id, l.step_index, l.item, l.status, b.starting,
                    coalesce(sha256(l.attempt_token) = sha256(b.token), false) AS admitted
             FROM b JOIN loop_items AS l USING (execution_id, step_index, item)
             WHERE l.attempt = b.attempt AND l.status IN ('dispatched', 'running')
               AND {ITEM_OF_A_RUNNING_LOOP}
         ), touched AS (
             UPDATE loop_items AS l SET lease_expires_at = now() + $7 * interval '1 millisecond'
             FROM found AS f
             WHERE NOT f.starting AND f.admitted AND l.execution_id = f.execution_id
               AND l.step_index = f.step_index AND l.item = f.item
         )
         SELECT execution_id, step_index, item, status, admitted FROM found"
    );
    let found = sqlx::query(&statement)
        .bind(
            beats
                .iter()
                .map(|b| b.execution_id.get())
                .collect::<Vec<_>>(),
        )
        .bind(
            beats
                .iter()
                .map(|b| integer(b.step.get()))
                .collect::<Vec<_>>(),
        )
        .bind(
            beats
                .iter()
                .map(|b| integer(b.item.unwrap_or(u32::MAX)))
                .collect::<Vec<_>>(),
        )
        .bind(
            beats
                .iter()
                .map(|b| integer(b.attempt.get()))
                .collect::<Vec<_>>(),
        )
        .bind(beats.iter().map(|b| b.starting).collect::<Vec<_>>())
        .bind(
            beats
                .iter()
                .map(|b| b.token.map(|t| t.expose().to_vec()))
                .collect::<Vec<_>>(),
        )
        .bind(lease_ms)
        .fetch_all(executor)
        .await?;
    let mut owned = std::collections::HashMap::new();
    for row in &found {
        let item: i32 = row.try_get("item")?;
        let key = (rows::execution_id(row)?, rows::step_index(row)?, item);
        let admitted: bool = row.try_get("admitted")?;
        owned.insert(key, (rows::step_status(row)?, admitted));
    }
    Ok(beats
        .iter()
        .map(|b| {
            let key = (b.execution_id, b.step, integer(b.item.unwrap_or(u32::MAX)));
            match owned.get(&key) {
                None => BeatAnswer::Lost,
                Some((status, true)) => BeatAnswer::Owns(*status),
                Some((_, false)) => BeatAnswer::Refused,
            }
        })
        .collect())
}

/// Whether the item's lease is still expired, locking its row for the rest of `tx` (call it
/// with the execution already locked).
pub async fn item_lease_expired(
    tx: &mut Transaction<'_, Postgres>,
    key: super::ItemKey,
    attempt: Attempt,
) -> Result<bool, Error> {
    let expired: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM loop_items
         WHERE execution_id = $1 AND step_index = $2 AND item = $3 AND attempt = $4
           AND status IN ('dispatched', 'running') AND lease_expires_at < now()
         FOR UPDATE",
    )
    .bind(key.0.get())
    .bind(integer(key.1.get()))
    .bind(integer(key.2))
    .bind(integer(attempt.get()))
    .fetch_optional(&mut **tx)
    .await?;
    Ok(expired.is_some())
}

/// Items of running loops whose lease has run out: `(execution, step, attempt, item)`.
pub async fn expired_item_leases(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<(ExecutionId, StepIndex, Attempt, u32)>, Error> {
    let statement = format!(
        "SELECT execution_id, step_index, attempt, item FROM loop_items AS l
         WHERE status IN ('dispatched', 'running') AND lease_expires_at < now()
           AND {ITEM_OF_A_RUNNING_LOOP}
         ORDER BY lease_expires_at LIMIT $1"
    );
    sqlx::query(&statement)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            let item: i32 = row.try_get("item")?;
            Ok((
                rows::execution_id(row)?,
                rows::step_index(row)?,
                rows::attempt(row)?,
                u32::try_from(item).map_err(|_| Error::Malformed(format!("item {item}")))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::relaxed_pool;
    use crate::persistence::testing::{execute, explained, TestShard};

    /// The heartbeat statement goes by the primary key even when the statistics say no step is
    /// in flight (gathered at an idle moment) while thousands are: the partial lease index, which
    /// such statistics make look empty, would be walked whole for every beat.
    #[tokio::test]
    async fn heartbeats_find_their_steps_by_primary_key_whatever_the_statistics_say() {
        let TestShard { dsn, pool, .. } = &TestShard::start(2).await;
        let steps = |status: &str, from: i64| {
            format!(
                "INSERT INTO execution_steps (execution_id, step_index, name, status, attempt,
                                              lease_expires_at)
                 SELECT id, 0, 'only', '{status}', 1, now() + interval '1 minute'
                 FROM generate_series({from}, {from} + 4999) AS id"
            )
        };
        execute(pool, &steps("succeeded", 1)).await;
        execute(pool, "ANALYZE execution_steps").await;
        execute(pool, &steps("dispatched", 10_001)).await;

        // Planned as the heartbeats' own pool plans it.
        let relaxed = relaxed_pool(dsn, 1).expect("pool");
        let mut connection = relaxed.acquire().await.expect("connection");
        let prepare = format!(
            "PREPARE beat(bigint[], int[], int[], bigint, text[], bool[], bigint[], bytea[]) AS \
             {BEAT_ATTEMPTS}"
        );
        execute(&mut *connection, &prepare).await;
        let plan = explained(
            &mut connection,
            "EXPLAIN (FORMAT TEXT) EXECUTE beat('{10001,10002}', '{0,0}', '{1,1}', 1000,
                                                '{dispatched,running}', '{false,true}',
                                                '{1,NULL}', '{NULL,NULL}')",
        )
        .await;
        assert!(plan.contains("execution_steps_pkey"), "{plan}");
        assert!(!plan.contains("in_flight_leases"), "{plan}");

        drop(connection);
        let mut connection = relaxed.acquire().await.expect("connection");
        let touched = beat_attempts(
            &mut connection,
            &[Beat {
                execution_id: ExecutionId::new(10_001).expect("valid id"),
                step: StepIndex::new(0),
                attempt: Attempt::FIRST,
                starting: false,
                started_at_ms: None,
                token: None,
                item: None,
            }],
            1_000,
        )
        .await
        .expect("heartbeat");
        assert_eq!(touched, vec![BeatAnswer::Owns(StepStatus::Dispatched)]);
    }
}
