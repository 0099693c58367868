//! Group commit: submits to one shard are gathered into batches, each committed by one
//! statement, so throughput is not capped by one WAL flush per execution.
//!
//! Batching needs no timer: a committer takes whatever queued while the previous batch was
//! being written. Under light load a batch is one execution and adds no delay; under heavy
//! load batches grow up to `max_batch`. Several committers per shard overlap one batch's flush
//! with the gathering of the next.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use noetl_contract::message::{WireError, WireErrorCode};
use noetl_contract::{ExecutionId, ShardId};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};
use tokio_util::task::TaskTracker;

use crate::persistence::{self, Committed, NewExecution};

type Outcome = Result<Committed, WireError>;

struct Pending {
    row: NewExecution,
    reply: oneshot::Sender<Outcome>,
}

/// Hands executions to the shard's committers. Dropping every clone lets them finish the
/// queued work and stop.
#[derive(Clone, Debug)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("execution_id", &self.row.execution_id)
            .finish()
    }
}

impl Committer {
    /// Starts `parallel` committer tasks for `shard` on `tracker`.
    pub fn spawn(
        shard: ShardId,
        pool: PgPool,
        relay: Arc<Notify>,
        max_batch: usize,
        parallel: usize,
        tracker: &TaskTracker,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(max_batch * parallel * 2);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..parallel {
            let (receiver, pool, relay) = (receiver.clone(), pool.clone(), relay.clone());
            tracker.spawn(async move {
                while let Some(batch) = next_batch(&receiver, max_batch).await {
                    commit_batch(shard, &pool, batch).await;
                    // The new executions' first commands are in the outbox.
                    relay.notify_one();
                }
            });
        }
        Self { queue }
    }

    /// Commits one execution; resolves once it is durable (or failed to be).
    pub async fn commit(&self, row: NewExecution) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        if self.queue.send(Pending { row, reply }).await.is_err() {
            return Err(unavailable("the shard is shutting down"));
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(unavailable("the commit was abandoned")))
    }
}

async fn next_batch(
    receiver: &Mutex<mpsc::Receiver<Pending>>,
    max_batch: usize,
) -> Option<Vec<Pending>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = Vec::with_capacity(max_batch.min(64));
    batch.push(first);
    while batch.len() < max_batch {
        match receiver.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn commit_batch(shard: ShardId, pool: &PgPool, batch: Vec<Pending>) {
    let shard_label = shard.to_string();
    metrics::histogram!("noetl_server_commit_batch_size", "shard" => shard_label.clone())
        .record(batch.len() as f64);
    // The same id twice in one batch (a client retrying quickly) is inserted once.
    let mut waiting: HashMap<ExecutionId, Vec<oneshot::Sender<Outcome>>> = HashMap::new();
    let mut rows = Vec::with_capacity(batch.len());
    for Pending { row, reply } in batch {
        let replies = waiting.entry(row.execution_id).or_default();
        if replies.is_empty() {
            rows.push(row);
        }
        replies.push(reply);
    }
    let started = Instant::now();
    match persistence::insert_executions(pool, &rows).await {
        Ok(committed) => {
            metrics::histogram!("noetl_server_commit_seconds", "shard" => shard_label.clone())
                .record(started.elapsed().as_secs_f64());
            for outcome in committed {
                let Some(replies) = waiting.remove(&outcome.execution_id) else {
                    continue;
                };
                let outcome_label = if outcome.created {
                    "created"
                } else {
                    "existing"
                };
                metrics::counter!("noetl_server_submits_total", "shard" => shard_label.clone(), "outcome" => outcome_label)
                    .increment(replies.len() as u64);
                for (i, reply) in replies.into_iter().enumerate() {
                    let created = outcome.created && i == 0;
                    let _ = reply.send(Ok(Committed {
                        created,
                        ..outcome.clone()
                    }));
                }
            }
            for (id, replies) in waiting {
                tracing::error!(%shard, execution_id = %id, "execution missing after commit");
                for reply in replies {
                    let _ = reply.send(Err(unavailable("the execution could not be read back")));
                }
            }
        }
        Err(e) => {
            tracing::error!(%shard, error = %e, executions = rows.len(), "group commit failed");
            metrics::counter!("noetl_server_commit_failures_total", "shard" => shard_label)
                .increment(1);
            for reply in waiting.into_values().flatten() {
                let _ = reply.send(Err(unavailable("the shard database is unavailable")));
            }
        }
    }
}

fn unavailable(message: &str) -> WireError {
    WireError {
        code: WireErrorCode::ShardUnavailable,
        message: message.to_owned(),
    }
}
