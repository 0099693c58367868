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
    /// `pool`; each batch's first commands are handed to `relay` once committed.
    pub fn spawn(
        shard: ShardId,
        pool: PgPool,
        relay: Relay,
        max_batch: usize,
        parallel: usize,
        tracker: &TaskTracker,
    ) -> Self {
        let held = move || persistence::Held::new(pool.clone());
        let batcher = Batcher::spawn(max_batch, parallel, tracker, held, move |mut held, rows| {
            let relay = relay.clone();
            async move {
                let outcomes = commit_batch(shard, &mut held, &relay, rows).await;
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
        async { persistence::insert_executions(held.connection().await?, &rows).await }.await;
    let mut committed = match held.checked(inserted) {
        Ok(committed) => committed,
        Err(e) if e.is_data_error() && rows.len() > 1 => {
            // One row's data fails the statement, and with it the whole batch: insert each row
            // on its own, so only the row at fault is refused, with its own reason.
            tracing::warn!(%shard, error = %e, executions = rows.len(), "group commit refused a row's data; inserting one by one");
            let (kept, refused) = insert_one_by_one(shard, held, rows).await;
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
    rows: Vec<NewExecution>,
) -> OneByOne {
    let mut kept = Vec::with_capacity(rows.len());
    let mut committed = Vec::with_capacity(rows.len());
    let mut refusals = HashMap::new();
    for row in rows {
        let one = async {
            persistence::insert_executions(held.connection().await?, std::slice::from_ref(&row))
                .await
        }
        .await;
        match held.checked(one) {
            Ok(mut done) => {
                committed.append(&mut done);
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
        let outcomes = commit_batch(ShardId::new(0), &mut held, &relay, batch).await;
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
}
