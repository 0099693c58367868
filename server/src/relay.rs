//! The outbox relay of one shard: publishes committed commands to JetStream and deletes them
//! once stored. A publish that fails (NATS down) leaves its row for the next pass, so an outage
//! delays work but never loses it; a command published twice is dropped by JetStream's
//! de-duplication (same message id).

use std::sync::Arc;
use std::time::Duration;

use noetl_bus::Client;
use noetl_contract::command::StepCommand;
use noetl_contract::ShardId;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::persistence;

const BATCH: i64 = 512;
/// Longest wait between passes when nothing wakes the relay (delayed retries, failed publishes).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Relays until `cancel`.
pub async fn run(
    shard: ShardId,
    pool: PgPool,
    client: Client,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let label = shard.to_string();
    loop {
        let full = match relay_once(&pool, &client, &label).await {
            Ok(published) => published == BATCH as usize,
            Err(e) => {
                tracing::warn!(%shard, error = %e, "outbox relay pass failed");
                false
            }
        };
        if full {
            continue;
        }
        let wait = match persistence::next_command_due_in_ms(&pool).await {
            Ok(Some(ms)) => Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(IDLE_POLL),
            _ => IDLE_POLL,
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Publishes one batch of due commands; returns how many were stored by JetStream. The rows
/// are deleted in the transaction that took them, which commits if every publish was stored;
/// otherwise it rolls back and only the stored rows are deleted, so the failed ones (and only
/// they) are published again on a later pass.
async fn relay_once(
    pool: &PgPool,
    client: &Client,
    shard: &str,
) -> Result<usize, persistence::Error> {
    let mut tx = persistence::begin_generic(pool).await?;
    let due = persistence::take_due_commands(&mut tx, BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let publishes = due.iter().map(|row| async move {
        match serde_json::from_value::<StepCommand>(row.command.clone()) {
            Ok(command) => match noetl_bus::commands::publish(client, &row.pool, &command)
                .instrument(dispatch_span(&command))
                .await
            {
                Ok(()) => Some(row.id),
                Err(e) => {
                    tracing::debug!(error = %e, "publish failed; the command stays in the outbox");
                    None
                }
            },
            Err(e) => {
                // Only this server writes the outbox, so this is a bug; dropping the row is the
                // only way not to retry it forever. The step's lease will expire and retry it.
                tracing::error!(outbox_id = row.id, error = %e, "dropping an undecodable outbox row");
                Some(row.id)
            }
        }
    });
    let stored: Vec<i64> = futures::future::join_all(publishes)
        .await
        .into_iter()
        .flatten()
        .collect();
    let failed = due.len() - stored.len();
    if failed == 0 {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
        persistence::delete_commands(pool, &stored).await?;
        metrics::counter!("noetl_server_command_publish_failures_total", "shard" => shard.to_owned())
            .increment(failed as u64);
    }
    metrics::counter!("noetl_server_commands_published_total", "shard" => shard.to_owned())
        .increment(stored.len() as u64);
    Ok(stored.len())
}

/// The span of publishing a command, in its execution's trace: the worker's step span is its
/// child.
fn dispatch_span(command: &StepCommand) -> tracing::Span {
    let span = tracing::info_span!(
        "dispatch",
        execution_id = %command.execution_id,
        step = %command.step,
        attempt = command.attempt,
    );
    noetl_bus::trace::join(&span, command.execution_id, None);
    span
}
