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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::testing::{execute, explained, TestShard};

    const HOUR: Duration = Duration::from_secs(3_600);

    /// Rows of execution `id` in every table the purge deletes from.
    async fn rows(pool: &PgPool, id: i64) -> i64 {
        sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM executions WHERE execution_id = $1)
                  + (SELECT count(*) FROM execution_steps WHERE execution_id = $1)
                  + (SELECT count(*) FROM execution_events WHERE execution_id = $1)
                  + (SELECT count(*) FROM outbox WHERE execution_id = $1)
                  + (SELECT count(*) FROM outbox_dead_letters WHERE execution_id = $1)",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("count")
    }

    /// Executions 1 to 5 (1, 2: old and finished; 3: old and running; 4: finished now; 5: old,
    /// finished, of tenant `b`), each with a row in every table.
    async fn seed(pool: &PgPool) {
        execute(
            pool,
            "INSERT INTO executions (execution_id, status, playbook_name, playbook, tenant,
                                     updated_at)
             VALUES (1, 'succeeded', 'p', '{}', 'a', now() - interval '2 hours'),
                    (2, 'failed', 'p', '{}', 'a', now() - interval '2 hours'),
                    (3, 'running', 'p', '{}', 'a', now() - interval '2 hours'),
                    (4, 'succeeded', 'p', '{}', 'a', now()),
                    (5, 'cancelled', 'p', '{}', 'b', now() - interval '2 hours');
             INSERT INTO execution_steps (execution_id, step_index, name)
             SELECT id, 0, 's' FROM generate_series(1, 5) id;
             INSERT INTO execution_events (execution_id, seq, kind)
             SELECT id, 1, 'execution_created' FROM generate_series(1, 5) id;
             INSERT INTO outbox (execution_id, pool, command)
             SELECT id, 'default', '{}' FROM generate_series(1, 5) id;
             INSERT INTO outbox_dead_letters (id, execution_id, pool, command, reason, size_bytes,
                                              max_payload, created_at)
             SELECT id, id, 'default', '{}', 'too_large', 1, 1, now() FROM generate_series(1, 5) id",
        )
        .await;
    }

    #[tokio::test]
    async fn a_batch_purges_old_finished_executions_everywhere_and_skips_what_another_holds() {
        let TestShard { pool, .. } = &TestShard::start(3).await;
        seed(pool).await;
        // Another replica's batch holds execution 2.
        let mut other = pool.begin().await.expect("transaction");
        execute(
            &mut *other,
            "SELECT 1 FROM executions WHERE execution_id = 2 FOR UPDATE",
        )
        .await;
        let others = ["b".to_owned()];
        let purged = purge_batch(pool, Tenants::AllBut(&others), HOUR, 10).await;
        assert_eq!(purged.expect("purged"), 1);
        assert_eq!(rows(pool, 1).await, 0);
        for kept in 2..=5 {
            assert_eq!(rows(pool, kept).await, 5, "execution {kept}");
        }
        other.commit().await.expect("commit");
        let purged = purge_batch(pool, Tenants::AllBut(&others), HOUR, 10).await;
        assert_eq!(purged.expect("purged"), 1);
        assert_eq!(rows(pool, 2).await, 0);
        let purged = purge_batch(pool, Tenants::One("b"), HOUR, 10).await;
        assert_eq!(purged.expect("purged"), 1);
        // The running one and the young one stay, however many passes run.
        let purged = purge_batch(pool, Tenants::AllBut(&[]), HOUR, 10).await;
        assert_eq!(purged.expect("purged"), 0);
        assert_eq!((rows(pool, 3).await, rows(pool, 4).await), (5, 5));
    }

    #[tokio::test]
    async fn a_delete_takes_only_a_finished_execution_of_its_tenant() {
        let TestShard { pool, .. } = &TestShard::start(2).await;
        seed(pool).await;
        let id = |n| ExecutionId::new(n).expect("valid id");
        let running = delete_execution(pool, id(3), "a").await.expect("answered");
        assert_eq!(running, Deleted::NotTerminal(ExecutionStatus::Running));
        let foreign = delete_execution(pool, id(4), "b").await.expect("answered");
        assert_eq!(foreign, Deleted::NotFound);
        assert_eq!((rows(pool, 3).await, rows(pool, 4).await), (5, 5));
        let gone = delete_execution(pool, id(4), "a").await.expect("answered");
        assert_eq!(gone, Deleted::Gone);
        assert_eq!(rows(pool, 4).await, 0);
        let again = delete_execution(pool, id(4), "a").await.expect("answered");
        assert_eq!(again, Deleted::NotFound);
    }

    /// Finding the oldest finished executions goes by the partial index, not through every
    /// execution of the shard.
    #[tokio::test]
    async fn the_oldest_are_found_through_the_partial_index() {
        let TestShard { pool, .. } = &TestShard::start(1).await;
        execute(
            pool,
            "INSERT INTO executions (execution_id, status, playbook_name, playbook, updated_at)
             SELECT id, CASE WHEN id % 100 = 0 THEN 'succeeded' ELSE 'running' END, 'p', '{}',
                    now() - id * interval '1 second'
             FROM generate_series(1, 20000) id;
             ANALYZE executions",
        )
        .await;
        let mut connection = pool.acquire().await.expect("connection");
        execute(
            &mut *connection,
            &format!("PREPARE doomed(bigint, text[], bigint) AS {SELECT_OF_OTHERS}"),
        )
        .await;
        let plan = explained(
            &mut connection,
            "EXPLAIN (FORMAT TEXT) EXECUTE doomed(60000, '{}', 500)",
        )
        .await;
        assert!(plan.contains("executions_finished_by_time"), "{plan}");
    }
}
