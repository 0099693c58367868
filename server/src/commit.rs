//! Group commit of submits: many executions per transaction (see [`crate::batch`]), so
//! throughput is not capped by one WAL flush per execution.

use std::collections::HashMap;
use std::time::Instant;

use noetl_contract::message::{WireError, WireErrorCode};
use noetl_contract::{ExecutionId, ShardId};
use sqlx::PgPool;
use tokio_util::task::TaskTracker;

use crate::batch::Batcher;
use crate::persistence::{self, Committed, NewExecution};
use crate::relay::{self, Relay};

type Outcome = Result<Committed, WireError>;

/// Hands executions to the shard's committers. Dropping every clone lets them finish the
/// queued work and stop.
#[derive(Clone, Debug)]
pub struct Committer {
    batcher: Batcher<NewExecution, Outcome>,
}

impl Committer {
    /// Starts `parallel` committer tasks for `shard` on `tracker`, each holding a connection of
    /// `pool`; each batch's first commands are handed to `relay` once committed. A tenant's new
    /// executions are refused once it has `quota` executions not yet finished in the shard
    /// (`tenant_max_executions_in_flight`).
    pub fn spawn(
        shard: ShardId,
        pool: PgPool,
        relay: Relay,
        quota: Option<u64>,
        max_batch: usize,
        parallel: usize,
        tracker: &TaskTracker,
    ) -> Self {
        let held = move || persistence::Held::new(pool.clone());
        let batcher = Batcher::spawn(max_batch, parallel, tracker, held, move |mut held, rows| {
            let relay = relay.clone();
            async move {
                let outcomes = commit_batch(shard, &mut held, &relay, quota, rows).await;
                (held, outcomes)
            }
        });
        Self { batcher }
    }

    /// Commits one execution; resolves once it is durable (or failed to be).
    pub async fn commit(&self, row: NewExecution) -> Outcome {
        self.batcher
            .submit(row)
            .await
            .unwrap_or_else(|| Err(unavailable("the shard is shutting down")))
    }
}

async fn commit_batch(
    shard: ShardId,
    held: &mut persistence::Held,
    relay: &Relay,
    quota: Option<u64>,
    batch: Vec<NewExecution>,
) -> Vec<Outcome> {
    let shard_label = shard.to_string();
    metrics::histogram!("noetl_server_commit_batch_size", "shard" => shard_label.clone())
        .record(batch.len() as f64);
    let order: Vec<ExecutionId> = batch.iter().map(|row| row.execution_id).collect();
    // The same id twice in one batch (a client retrying quickly) is inserted once.
    let mut rows = Vec::with_capacity(batch.len());
    let mut refusals: HashMap<ExecutionId, WireError> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for row in batch {
        if seen.insert(row.execution_id) {
            rows.push(row);
        }
    }
    let started = Instant::now();
    let inserted =
        async { persistence::insert_executions(held.connection().await?, &rows, quota).await }
            .await;
    let mut committed = match held.checked(inserted) {
        Ok(inserted) => {
            refuse_over_quota(shard, quota, &rows, inserted.over_quota, &mut refusals);
            inserted.committed
        }
        Err(e) if e.is_data_error() && rows.len() > 1 => {
            // One row's data fails the statement, and with it the whole batch: insert each row
            // on its own, so only the row at fault is refused, with its own reason.
            tracing::warn!(%shard, error = %e, executions = rows.len(), "group commit refused a row's data; inserting one by one");
            let (kept, refused) = insert_one_by_one(shard, held, quota, rows).await;
            rows = kept.0;
            refusals = refused;
            kept.1
        }
        Err(e) => {
            tracing::error!(%shard, error = %e, executions = rows.len(), "group commit failed");
            metrics::counter!("noetl_server_commit_failures_total", "shard" => shard_label)
                .increment(1);
            let refusal = refused_data(&e);
            return order
                .iter()
                .map(|_| {
                    Err(refusal
                        .clone()
                        .unwrap_or_else(|| unavailable("the shard database is unavailable")))
                })
                .collect();
        }
    };
    metrics::histogram!("noetl_server_commit_seconds", "shard" => shard_label.clone())
        .record(started.elapsed().as_secs_f64());
    let outbox_ids = committed
        .iter_mut()
        .filter(|c| c.created)
        .map(|c| (c.execution_id, std::mem::take(&mut c.outbox_ids)))
        .collect();
    let (handoffs, due_now) = relay::handoffs(
        rows.into_iter().map(|row| (row.execution_id, row.outbox)),
        outbox_ids,
    );
    relay.committed(handoffs, due_now);
    let mut by_id: HashMap<ExecutionId, Committed> =
        committed.into_iter().map(|c| (c.execution_id, c)).collect();
    order
        .iter()
        .map(|id| {
            // The first request for an id gets the insert's outcome; repeats see it as existing.
            if let Some(refusal) = refusals.get(id) {
                return Err(refusal.clone());
            }
            let outcome = match by_id.get_mut(id) {
                Some(committed) => {
                    let this = committed.clone();
                    committed.created = false;
                    this
                }
                None => {
                    tracing::error!(%shard, execution_id = %id, "execution missing after commit");
                    return Err(unavailable("the execution could not be read back"));
                }
            };
            let label = if outcome.created { "created" } else { "existing" };
            metrics::counter!("noetl_server_submits_total", "shard" => shard_label.clone(), "outcome" => label)
                .increment(1);
            Ok(outcome)
        })
        .collect()
}

/// The rows that committed (and what each became), and the refusals of the others.
type OneByOne = (
    (Vec<NewExecution>, Vec<Committed>),
    HashMap<ExecutionId, WireError>,
);

/// Inserts each row in a statement (and transaction) of its own.
async fn insert_one_by_one(
    shard: ShardId,
    held: &mut persistence::Held,
    quota: Option<u64>,
    rows: Vec<NewExecution>,
) -> OneByOne {
    let mut kept = Vec::with_capacity(rows.len());
    let mut committed = Vec::with_capacity(rows.len());
    let mut refusals = HashMap::new();
    for row in rows {
        let one = async {
            let connection = held.connection().await?;
            persistence::insert_executions(connection, std::slice::from_ref(&row), quota).await
        }
        .await;
        match held.checked(one) {
            Ok(mut done) => {
                let rows = std::slice::from_ref(&row);
                refuse_over_quota(shard, quota, rows, done.over_quota, &mut refusals);
                committed.append(&mut done.committed);
                kept.push(row);
            }
            Err(e) => {
                tracing::warn!(%shard, execution_id = %row.execution_id, error = %e, "a submit could not be stored");
                let refusal = refused_data(&e)
                    .unwrap_or_else(|| unavailable("the shard database is unavailable"));
                refusals.insert(row.execution_id, refusal);
            }
        }
    }
    ((kept, committed), refusals)
}

/// Refuses the submits of `over_quota` (executions of `rows`) for their tenant's quota.
fn refuse_over_quota(
    shard: ShardId,
    quota: Option<u64>,
    rows: &[NewExecution],
    over_quota: Vec<ExecutionId>,
    refusals: &mut HashMap<ExecutionId, WireError>,
) {
    // Only a quota refuses an execution.
    let Some(quota) = quota.filter(|_| !over_quota.is_empty()) else {
        return;
    };
    metrics::counter!("noetl_server_submits_total", "shard" => shard.to_string(), "outcome" => "over_quota")
        .increment(over_quota.len() as u64);
    let tenants: HashMap<ExecutionId, &str> = rows
        .iter()
        .map(|r| (r.execution_id, r.tenant.as_str()))
        .collect();
    for id in over_quota {
        let tenant = tenants.get(&id).copied().unwrap_or_default();
        let message = format!(
            "tenant {tenant:?} is at its quota of {quota} executions not yet finished on \
             shard {shard} (tenant_max_executions_in_flight); retry once some finish"
        );
        refusals.insert(
            id,
            WireError {
                code: WireErrorCode::TenantQuotaExceeded,
                message,
            },
        );
    }
}

/// The refusal of a submit whose own data the database refused; `None` for other failures.
fn refused_data(error: &persistence::Error) -> Option<WireError> {
    error.is_data_error().then(|| WireError {
        code: WireErrorCode::UnstorableValue,
        message: "the execution holds a value the shard database cannot store".to_owned(),
    })
}

fn unavailable(message: &str) -> WireError {
    WireError {
        code: WireErrorCode::ShardUnavailable,
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use noetl_contract::status::ExecutionStatus;

    use super::*;
    use crate::persistence::testing::TestShard;

    fn execution(id: i64, input: &str) -> NewExecution {
        NewExecution {
            execution_id: ExecutionId::new(id).expect("valid id"),
            playbook_name: "p".to_owned(),
            playbook_version: None,
            tenant: "t".to_owned(),
            playbook: r#"{"name": "p", "steps": []}"#.to_owned(),
            input: input.to_owned(),
            labels: "{}".to_owned(),
            status: ExecutionStatus::Running,
            steps: Vec::new(),
            events: vec![("execution_created".to_owned(), "{}".to_owned())],
            outbox: Vec::new(),
            parent: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_the_database_refuses_is_refused_alone() {
        let shard = TestShard::start(2).await;
        let mut held = persistence::Held::new(shard.pool.clone());
        let (relay, _feed) = Relay::new(ShardId::new(0));
        // `jsonb` refuses U+0000 (which the gateway and the renderer keep out, as here a bug
        // might not): the batch's statement fails on this row alone.
        let batch = vec![
            execution(1, "{}"),
            execution(2, r#"{"x": "\u0000"}"#),
            execution(3, "{}"),
        ];
        let outcomes = commit_batch(ShardId::new(0), &mut held, &relay, Some(10), batch).await;
        assert!(
            outcomes[0].as_ref().is_ok_and(|c| c.created),
            "{outcomes:?}"
        );
        assert!(
            outcomes[2].as_ref().is_ok_and(|c| c.created),
            "{outcomes:?}"
        );
        let refused = outcomes[1].as_ref().expect_err("refused");
        assert_eq!(refused.code, WireErrorCode::UnstorableValue);
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
            .fetch_one(&shard.pool)
            .await
            .expect("count");
        assert_eq!(stored, 2);
    }

    /// Without a quota the counter rows are never written; a server started with one counts
    /// each tenant's executions again from what is stored, and holds the tenant to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_quota_nothing_is_counted_and_a_quota_set_later_counts_what_is_stored() {
        let shard = TestShard::start(2).await;
        let mut held = persistence::Held::new(shard.pool.clone());
        let (relay, _feed) = Relay::new(ShardId::new(0));
        let zero = ShardId::new(0);
        let batch = vec![of("a", 1), of("a", 2), of("b", 3)];
        let outcomes = commit_batch(zero, &mut held, &relay, None, batch).await;
        assert!(
            outcomes.iter().all(|o| created(o) == Some(true)),
            "{outcomes:?}"
        );
        let counted: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM tenant_admitted) + (SELECT count(*) FROM tenant_finished)",
        )
        .fetch_one(&shard.pool)
        .await
        .expect("count");
        assert_eq!(counted, 0, "no quota: the counter rows are not touched");

        persistence::recount_tenant_executions(&shard.pool)
            .await
            .expect("recount");
        let outcomes = commit_batch(
            zero,
            &mut held,
            &relay,
            Some(2),
            vec![of("a", 4), of("b", 5)],
        )
        .await;
        assert!(over_quota(&outcomes[0]), "a has 2 in flight: {outcomes:?}");
        assert_eq!(created(&outcomes[1]), Some(true), "b has 1: {outcomes:?}");
    }

    fn of(tenant: &str, id: i64) -> NewExecution {
        NewExecution {
            tenant: tenant.to_owned(),
            ..execution(id, "{}")
        }
    }

    fn created(outcome: &Outcome) -> Option<bool> {
        outcome.as_ref().ok().map(|c| c.created)
    }

    fn over_quota(outcome: &Outcome) -> bool {
        outcome
            .as_ref()
            .is_err_and(|e| e.code == WireErrorCode::TenantQuotaExceeded)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenant_over_its_quota_is_refused_alone_and_retries_and_finished_ones_do_not_count() {
        let shard = TestShard::start(2).await;
        let mut held = persistence::Held::new(shard.pool.clone());
        let (relay, _feed) = Relay::new(ShardId::new(0));
        let zero = ShardId::new(0);
        let batch = vec![of("a", 1), of("a", 2), of("a", 3), of("b", 4)];
        let outcomes = commit_batch(zero, &mut held, &relay, Some(2), batch).await;
        assert_eq!(created(&outcomes[0]), Some(true), "{outcomes:?}");
        assert_eq!(created(&outcomes[1]), Some(true), "{outcomes:?}");
        assert!(over_quota(&outcomes[2]), "{outcomes:?}");
        let message = &outcomes[2].as_ref().expect_err("refused").message;
        assert!(
            message.contains("\"a\"") && message.contains("tenant_max_executions_in_flight"),
            "{message}"
        );
        assert_eq!(created(&outcomes[3]), Some(true), "{outcomes:?}");

        // A retry of a stored execution is answered as before, and takes no quota; one created
        // already finished is not in flight.
        let done = NewExecution {
            status: ExecutionStatus::Failed,
            ..of("a", 7)
        };
        let batch = vec![of("a", 1), of("a", 5), of("b", 6), done];
        let outcomes = commit_batch(zero, &mut held, &relay, Some(2), batch).await;
        assert_eq!(created(&outcomes[0]), Some(false), "{outcomes:?}");
        assert!(over_quota(&outcomes[1]), "{outcomes:?}");
        assert_eq!(created(&outcomes[2]), Some(true), "{outcomes:?}");
        assert_eq!(created(&outcomes[3]), Some(true), "{outcomes:?}");

        // The transaction that ends one of a's executions gives its place back.
        let one = ExecutionId::new(1).expect("valid id");
        let mut tx = shard.pool.begin().await.expect("begin");
        let locked = persistence::lock_executions(&mut tx, &[one])
            .await
            .expect("lock");
        assert_eq!(
            (locked[0].tenant.as_str(), locked[0].results_bytes),
            ("a", 0)
        );
        let change = persistence::ExecutionChange {
            execution_id: one,
            status: ExecutionStatus::Succeeded,
            last_event_seq: locked[0].last_event_seq,
            steps: Vec::new(),
            events: Vec::new(),
            outbox: Vec::new(),
            results_bytes: 10,
            ctx: Some(r#"{"k":1}"#.to_owned()),
            gotos: 2,
            finished_tenant: Some("a".to_owned()),
        };
        persistence::save_changes(&mut tx, &[change])
            .await
            .expect("save");
        tx.commit().await.expect("commit");
        let outcomes = commit_batch(
            zero,
            &mut held,
            &relay,
            Some(2),
            vec![of("a", 8), of("a", 9)],
        )
        .await;
        assert_eq!(created(&outcomes[0]), Some(true), "{outcomes:?}");
        assert!(over_quota(&outcomes[1]), "{outcomes:?}");
        let stored: Vec<i64> =
            sqlx::query_scalar("SELECT execution_id FROM executions ORDER BY execution_id")
                .fetch_all(&shard.pool)
                .await
                .expect("ids");
        assert_eq!(stored, [1, 2, 4, 6, 7, 8]);
        let (bytes, ctx, gotos): (i64, serde_json::Value, i32) = sqlx::query_as(
            "SELECT results_bytes, ctx, gotos FROM executions WHERE execution_id = 1",
        )
        .fetch_one(&shard.pool)
        .await
        .expect("bytes");
        assert_eq!((bytes, ctx, gotos), (10, serde_json::json!({"k": 1}), 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_execution_stored_concurrently_gives_back_the_quota_it_took() {
        let shard = TestShard::start(4).await;
        // Another replica stores execution 1 and has not committed yet.
        let mut other = shard.pool.begin().await.expect("begin");
        sqlx::query(
            "INSERT INTO executions (execution_id, playbook_name, playbook, tenant)
             VALUES (1, 'p', '{}', 'a')",
        )
        .execute(&mut *other)
        .await
        .expect("insert");
        let pool = shard.pool.clone();
        let batch = tokio::spawn(async move {
            let mut held = persistence::Held::new(pool);
            let (relay, _feed) = Relay::new(ShardId::new(0));
            commit_batch(
                ShardId::new(0),
                &mut held,
                &relay,
                Some(10),
                vec![of("a", 1)],
            )
            .await
        });
        // The batch admitted it (its snapshot does not show the other insert) and waits for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
            )
            .fetch_one(&shard.pool)
            .await
            .expect("activity");
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the batch never waited"
            );
            tokio::task::yield_now().await;
        }
        other.commit().await.expect("commit");
        let outcomes = batch.await.expect("the batch");
        assert_eq!(created(&outcomes[0]), Some(false), "{outcomes:?}");
        let in_flight: i64 = sqlx::query_scalar(
            "SELECT (SELECT executions FROM tenant_admitted WHERE tenant = 'a')
                  - (SELECT executions FROM tenant_finished WHERE tenant = 'a')",
        )
        .fetch_one(&shard.pool)
        .await
        .expect("count");
        assert_eq!(in_flight, 0);
    }
}
