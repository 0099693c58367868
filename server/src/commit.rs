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
        Err(e) => {
            tracing::error!(%shard, error = %e, executions = rows.len(), "group commit failed");
            metrics::counter!("noetl_server_commit_failures_total", "shard" => shard_label)
                .increment(1);
            return order
                .iter()
                .map(|_| Err(unavailable("the shard database is unavailable")))
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

fn unavailable(message: &str) -> WireError {
    WireError {
        code: WireErrorCode::ShardUnavailable,
        message: message.to_owned(),
    }
}
