//! The outbox relay of one shard: publishes committed commands to JetStream and deletes them
//! once stored. A publish that fails (NATS down) leaves its row for the next pass, so an outage
//! delays work but never loses it; a command published twice is dropped by JetStream's
//! de-duplication (same message id).
//!
//! Commands are handed off: the task that committed them passes them here at once (see
//! [`Relay::committed`]), and the relay publishes them without reading them back. Their rows
//! became due only [`persistence::HANDOFF_GRACE`] after their commit, so a pass of the relay
//! takes them only if the handoff never happened (the server died after the commit, the queue
//! was full, NATS was down): the outbox stays the record, the handoff only saves a pass of the
//! relay (three round trips and a commit that waits for the WAL) and a millisecond of dispatch
//! latency.
//!
//! A command over NATS `max_payload` is never sent (nats-server would close the connection
//! over it, on every pass, forever): a pass hands it to its dead-letter callback, which fails
//! its step with `command_too_large` and moves its row to `outbox_dead_letters`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use noetl_bus::Client;
use noetl_contract::child::ChildStart;
use noetl_contract::command::StepCommand;
use noetl_contract::message::WireError;
use noetl_contract::{ExecutionId, ShardId, Topology};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::persistence::{self, hands_off, OutboxRow, Outgoing, Pools, Undeliverable};

mod children;

/// What the relay can never deliver, for its dead-letter callback.
#[derive(Debug)]
pub enum Dead {
    /// A step's command over NATS `max_payload`.
    TooLarge(StepCommand, Undeliverable),
    /// A child's start its shard refuses, and always will (the message says why).
    Refused(Box<ChildStart>, WireError),
}

const BATCH: i64 = 512;
/// Longest wait between passes when nothing wakes the relay (delayed retries, failed publishes).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Commit batches waiting to be handed off; beyond that they wait out their grace.
const HANDOFF_QUEUE: usize = 1024;
/// How long the rows of stored handoffs may wait to be deleted, so one delete serves the
/// handoffs of many commits: under a moderate load a commit batch holds one or two executions,
/// and a delete of its own per batch was as many transactions again as the submits. Far
/// shorter than [`persistence::HANDOFF_GRACE`], so a pass never finds the rows due.
const DELETE_LINGER: Duration = Duration::from_millis(20);

/// Committed commands of one execution, handed off together: the rows are deleted only if
/// every command was stored, since their ids are known per execution, not per command.
#[derive(Debug)]
pub struct Handoff {
    pub outbox_ids: Vec<i64>,
    pub commands: Vec<OutboxRow>,
}

/// Pairs the commands of committed executions with their outbox rows (`outbox_ids`, per
/// execution): the handoffs, and whether other commands are due for a pass now.
pub fn handoffs(
    commands: impl IntoIterator<Item = (ExecutionId, Vec<OutboxRow>)>,
    mut outbox_ids: HashMap<ExecutionId, Vec<i64>>,
) -> (Vec<Handoff>, bool) {
    let mut handoffs = Vec::new();
    let mut due_now = false;
    for (id, commands) in commands {
        if !hands_off(&commands) {
            due_now |= commands.iter().any(|c| c.delay_ms == 0);
            continue;
        }
        // Missing only if the write did not return them; they wait out their grace.
        if let Some(outbox_ids) = outbox_ids.remove(&id) {
            handoffs.push(Handoff {
                outbox_ids,
                commands,
            });
        }
    }
    (handoffs, due_now)
}

/// How committers and the orchestrator reach their shard's relay.
#[derive(Debug, Clone)]
pub struct Relay {
    shard: ShardId,
    wake: Arc<Notify>,
    handoffs: mpsc::Sender<Vec<Handoff>>,
}

/// The relay's end of a [`Relay`], for [`run`].
#[derive(Debug)]
pub struct Feed {
    wake: Arc<Notify>,
    handoffs: mpsc::Receiver<Vec<Handoff>>,
}

impl Relay {
    pub fn new(shard: ShardId) -> (Self, Feed) {
        let wake = Arc::new(Notify::new());
        let (sender, receiver) = mpsc::channel(HANDOFF_QUEUE);
        (
            Self {
                shard,
                wake: wake.clone(),
                handoffs: sender,
            },
            Feed {
                wake,
                handoffs: receiver,
            },
        )
    }

    /// After a commit: hands off the commands that are handed off, and wakes a pass for any
    /// other command that is due now. Must not be called before the commit is durable.
    pub fn committed(&self, handoffs: Vec<Handoff>, due_now: bool) {
        if due_now {
            self.wake.notify_one();
        }
        if handoffs.is_empty() {
            return;
        }
        let commands: usize = handoffs.iter().map(|h| h.commands.len()).sum();
        if self.handoffs.try_send(handoffs).is_err() {
            // Full, or closed (shutting down): the rows wait out their grace for a pass.
            tracing::debug!(shard = %self.shard, commands, "handoff queue full or closed; the commands wait for a pass");
            metrics::counter!("noetl_server_command_handoffs_missed_total", "shard" => self.shard.to_string())
                .increment(commands as u64);
        }
    }
}

/// Relays until `cancel`: handed-off commands as they come, and passes over the outbox for
/// anything else that is due. The rows of stored handoffs are deleted many at a time
/// (`StoredRows`). A command that can never be published goes to `dead_letter`, which owns
/// its row from then on.
///
/// The messages of the child protocol are not handed off: a pass sends them, routed with
/// `topology` ([`children`]).
pub async fn run<D, F>(
    shard: ShardId,
    pools: Pools,
    (client, topology): (Client, watch::Receiver<Option<Topology>>),
    mut feed: Feed,
    dead_letter: D,
    cancel: CancellationToken,
) where
    D: Fn(Dead) -> F,
    F: Future<Output = bool>,
{
    let nats = Nats {
        client: &client,
        topology: &topology,
    };
    let label = shard.to_string();
    let Pools { pool, relaxed, .. } = pools;
    let mut stored = StoredRows::default();
    let mut deletes = persistence::Held::new(relaxed.clone());
    loop {
        let full = match relay_once(&pool, nats, &label, &dead_letter).await {
            Ok(published) => published == BATCH as usize,
            Err(e) => {
                tracing::warn!(%shard, error = %e, "outbox relay pass failed");
                false
            }
        };
        if full {
            continue;
        }
        let wait = match persistence::next_command_due_in_ms(&relaxed).await {
            Ok(Some(ms)) => Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(IDLE_POLL),
            _ => IDLE_POLL,
        };
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    stored.delete(&mut deletes).await;
                    return;
                }
                () = feed.wake.notified() => break,
                () = &mut sleep => break,
                () = stored.due(), if stored.is_pending() => stored.delete(&mut deletes).await,
                Some(first) = feed.handoffs.recv() => {
                    let mut handoffs = first;
                    while handoffs.len() < BATCH as usize {
                        match feed.handoffs.try_recv() {
                            Ok(more) => handoffs.extend(more),
                            Err(_) => break,
                        }
                    }
                    stored.add(publish_handoffs(&client, &label, handoffs).await);
                    if stored.is_full() {
                        stored.delete(&mut deletes).await;
                    }
                }
            }
        }
    }
}

/// Outbox rows whose handed-off commands JetStream stored, waiting to be deleted together: at
/// most [`DELETE_LINGER`] after the first of them, or at once when there are a batch of them.
#[derive(Debug, Default)]
struct StoredRows {
    ids: Vec<i64>,
    /// When the oldest of `ids` must be deleted.
    deadline: Option<tokio::time::Instant>,
}

impl StoredRows {
    fn add(&mut self, ids: Vec<i64>) {
        if ids.is_empty() {
            return;
        }
        self.deadline
            .get_or_insert_with(|| tokio::time::Instant::now() + DELETE_LINGER);
        self.ids.extend(ids);
    }

    fn is_pending(&self) -> bool {
        self.deadline.is_some()
    }

    fn is_full(&self) -> bool {
        self.ids.len() >= BATCH as usize
    }

    /// Resolves at the deadline (never while nothing is pending).
    async fn due(&self) {
        match self.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }

    /// Deletes the rows through `held`, a connection of the relaxed pool: a delete lost in a
    /// crash (or failed) only has a pass publish them again after their grace, which JetStream
    /// de-duplicates.
    async fn delete(&mut self, held: &mut persistence::Held) {
        self.deadline = None;
        let ids = std::mem::take(&mut self.ids);
        if ids.is_empty() {
            return;
        }
        let deleted =
            async { persistence::delete_commands(held.connection().await?, &ids).await }.await;
        if let Err(e) = held.checked(deleted) {
            tracing::debug!(error = %e, "deleting handed-off commands failed; a pass publishes them again");
        }
    }
}

/// Publishes handed-off commands; returns the rows of each execution whose commands were all
/// stored, to delete. The others stay for a pass after their grace.
async fn publish_handoffs(client: &Client, shard: &str, handoffs: Vec<Handoff>) -> Vec<i64> {
    let publishes = handoffs.iter().map(|handoff| async move {
        // Only step commands are handed off ([`hands_off`]).
        let commands = handoff
            .commands
            .iter()
            .filter_map(|row| Some(publish(client, &row.pool, row.command.step()?)));
        let stored = futures::future::join_all(commands).await;
        // A command too large to publish waits for a pass, which dead-letters it.
        let stored = stored.iter().filter(|p| **p == Published::Stored).count();
        (handoff, stored)
    });
    let (mut ids, mut stored, mut failed) = (Vec::new(), 0, 0);
    for (handoff, count) in futures::future::join_all(publishes).await {
        stored += count;
        failed += handoff.commands.len() - count;
        if count == handoff.commands.len() {
            ids.extend_from_slice(&handoff.outbox_ids);
        }
    }
    count_published(shard, stored, failed);
    ids
}

/// What became of publishing one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    Stored,
    /// Not stored (NATS or JetStream failed): the row stays for a later pass.
    Failed,
    /// Not sent, and never will be: `size` is over NATS `max_payload`.
    TooLarge {
        size: usize,
        max_payload: usize,
    },
}

/// Publishes one command.
async fn publish(client: &Client, pool: &str, command: &StepCommand) -> Published {
    match noetl_bus::commands::publish(client, pool, command)
        .instrument(dispatch_span(command))
        .await
    {
        Ok(()) => Published::Stored,
        Err(noetl_bus::Error::TooLarge {
            size, max_payload, ..
        }) => Published::TooLarge { size, max_payload },
        Err(e) => {
            tracing::debug!(error = %e, "publish failed; the command stays in the outbox");
            Published::Failed
        }
    }
}

fn count_published(shard: &str, stored: usize, failed: usize) {
    if failed > 0 {
        metrics::counter!("noetl_server_command_publish_failures_total", "shard" => shard.to_owned())
            .increment(failed as u64);
    }
    metrics::counter!("noetl_server_commands_published_total", "shard" => shard.to_owned())
        .increment(stored as u64);
}

/// Publishes one batch of due commands; returns how many were stored by JetStream. The rows
/// are deleted in the transaction that took them, which commits if every publish was stored;
/// otherwise it rolls back and only the stored rows are deleted, so the failed ones (and only
/// they) are published again on a later pass. The rows of commands too large to publish are
/// handed to `dead_letter` once the transaction is over.
/// How the relay reaches NATS: the client, and the topology messages to shards are routed with.
#[derive(Clone, Copy)]
struct Nats<'a> {
    client: &'a Client,
    topology: &'a watch::Receiver<Option<Topology>>,
}

/// A child's start its shard refused is handed to `dead_letter` before the transaction that
/// took its row commits (the parent's step fails; should the server die first, the start is
/// sent again, refused again, and the step, no longer in flight for that attempt, stays as it
/// is), and its row is deleted with the others.
async fn relay_once<D, F>(
    pool: &PgPool,
    nats: Nats<'_>,
    shard: &str,
    dead_letter: &D,
) -> Result<usize, persistence::Error>
where
    D: Fn(Dead) -> F,
    F: Future<Output = bool>,
{
    let client = nats.client;
    let mut tx = persistence::begin_generic(pool).await?;
    let due = persistence::take_due_commands(&mut tx, BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let publishes = due.iter().map(|row| async move {
        match Outgoing::decode(&row.pool, row.command.clone()) {
            Ok(Outgoing::Step(command)) => {
                let published = publish(client, &row.pool, &command).await;
                (row.id, published, Some(command))
            }
            Ok(message) => {
                let published = match children::deliver(client, nats.topology, message).await {
                    children::Delivered::Done => Published::Stored,
                    children::Delivered::Retry => Published::Failed,
                    children::Delivered::Refused(start, error) => {
                        tracing::warn!(execution_id = %start.submit.execution_id, error = %error.message, "a child's shard refused its start; failing its parent's step");
                        if dead_letter(Dead::Refused(start, error)).await {
                            Published::Stored
                        } else {
                            Published::Failed
                        }
                    }
                };
                (row.id, published, None)
            }
            Err(e) => {
                // Only this server writes the outbox, so this is a bug; dropping the row is the
                // only way not to retry it forever. The step's lease will expire and retry it.
                tracing::error!(outbox_id = row.id, error = %e, "dropping an undecodable outbox row");
                (row.id, Published::Stored, None)
            }
        }
    });
    let published = futures::future::join_all(publishes).await;
    let stored: Vec<i64> = published
        .iter()
        .filter(|(_, p, _)| *p == Published::Stored)
        .map(|(id, _, _)| *id)
        .collect();
    let failed = published
        .iter()
        .filter(|(_, p, _)| *p == Published::Failed)
        .count();
    if stored.len() == due.len() {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
        persistence::delete_commands(pool, &stored).await?;
    }
    count_published(shard, stored.len(), failed);
    for (outbox_id, published, command) in published {
        if let (Published::TooLarge { size, max_payload }, Some(command)) = (published, command) {
            let undeliverable = Undeliverable {
                outbox_id,
                size_bytes: size,
                max_payload,
            };
            tracing::warn!(execution_id = %command.execution_id, step = %command.step, size, max_payload, "a command is over NATS max_payload; dead-lettering it");
            dead_letter(Dead::TooLarge(command, undeliverable)).await;
        }
    }
    Ok(stored.len())
}

/// The span of publishing a command, in its execution's trace: the worker's step span is its
/// child.
fn dispatch_span(command: &StepCommand) -> tracing::Span {
    let span = tracing::info_span!(
        "dispatch",
        execution_id = %command.execution_id,
        step = %command.step,
        attempt = command.attempt.get(),
    );
    noetl_bus::trace::join(&span, command.execution_id, None);
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::testing::outbox_row as row;

    #[test]
    fn only_executions_whose_commands_are_all_due_now_are_handed_off() {
        let id = |n| ExecutionId::new(n).expect("valid id");
        let commands = vec![
            (id(1), vec![row(1, 0, 0), row(1, 1, 0)]),
            (id(2), vec![row(2, 0, 0), row(2, 1, 5_000)]),
            (id(3), vec![row(3, 0, 5_000)]),
            (id(4), vec![]),
        ];
        let outbox_ids = HashMap::from([
            (id(1), vec![10, 11]),
            (id(2), vec![20, 21]),
            (id(3), vec![30]),
        ]);
        let (handed, due_now) = handoffs(commands.clone(), outbox_ids.clone());
        assert_eq!(handed.len(), 1);
        assert_eq!(handed[0].outbox_ids, [10, 11]);
        assert_eq!(handed[0].commands.len(), 2);
        assert!(
            due_now,
            "execution 2's undelayed command waits for a pass, now"
        );

        let (handed, due_now) = handoffs(commands[2..].to_vec(), outbox_ids);
        assert!(handed.is_empty());
        assert!(!due_now, "a delayed command is not due now");
    }

    #[test]
    fn commands_that_find_the_handoff_queue_full_are_counted_and_left_for_a_pass() {
        let metrics = noetl_service::install_metrics();
        // A shard number no other test uses, so the counter is this test's alone.
        let (relay, mut feed) = Relay::new(ShardId::new(91));
        let handoff = |outbox_id: i64, commands: Vec<OutboxRow>| Handoff {
            outbox_ids: vec![outbox_id],
            commands,
        };
        for n in 0..HANDOFF_QUEUE {
            relay.committed(vec![handoff(n as i64, vec![row(1, 0, 0)])], false);
        }
        relay.committed(vec![handoff(-1, vec![row(2, 0, 0), row(2, 1, 0)])], false);
        let rendered = metrics.render();
        assert!(
            rendered.contains("noetl_server_command_handoffs_missed_total{shard=\"91\"} 2"),
            "{rendered}"
        );
        let mut queued = 0;
        while let Ok(batch) = feed.handoffs.try_recv() {
            assert_eq!(batch[0].outbox_ids, [queued as i64]);
            queued += 1;
        }
        assert_eq!(
            queued, HANDOFF_QUEUE,
            "the batch that did not fit was not queued"
        );
    }
}
