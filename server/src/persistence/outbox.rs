//! The outbox: commands committed with the state change that made them, until JetStream stored
//! them. A write puts them in; the relay takes the due ones out (a pass) or deletes those it
//! was handed and published (a handoff). When a row becomes due is decided here, at the write.

use std::time::Duration;

use noetl_contract::child::{ChildCancel, ChildReturn, ChildStart};
use noetl_contract::command::StepCommand;
use noetl_contract::ExecutionId;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use super::Error;

/// A command to put in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// The worker pool of a step command; for the messages to other shards, a name no pool can
    /// have ([`Outgoing::pool`]).
    pub pool: String,
    pub command: Outgoing,
    /// Backoff before it may run (a retry's); 0 when it may run at once.
    pub delay_ms: i64,
}

/// What an outbox row sends: a step's command to the workers over JetStream, or a message of
/// the child protocol to another shard's server over NATS request/reply.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Outgoing {
    Step(StepCommand),
    Start(ChildStart),
    Return(ChildReturn),
    Cancel(ChildCancel),
}

/// The `pool` of the rows of the child protocol: `@` is in no pool name.
const START: &str = "@child";
const RETURN: &str = "@return";
const CANCEL: &str = "@cancel";

impl Outgoing {
    /// The `pool` column of a message of the child protocol (a step command's is its pool).
    pub fn pool(&self) -> Option<&'static str> {
        match self {
            Outgoing::Step(_) => None,
            Outgoing::Start(_) => Some(START),
            Outgoing::Return(_) => Some(RETURN),
            Outgoing::Cancel(_) => Some(CANCEL),
        }
    }

    /// Reads a row back by its `pool`.
    pub fn decode(pool: &str, command: serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(match pool {
            START => Outgoing::Start(serde_json::from_value(command)?),
            RETURN => Outgoing::Return(serde_json::from_value(command)?),
            CANCEL => Outgoing::Cancel(serde_json::from_value(command)?),
            _ => Outgoing::Step(serde_json::from_value(command)?),
        })
    }

    /// The step command, if it is one.
    pub fn step(&self) -> Option<&StepCommand> {
        match self {
            Outgoing::Step(command) => Some(command),
            _ => None,
        }
    }
}

impl OutboxRow {
    /// A message of the child protocol, due at once.
    pub fn message(command: Outgoing) -> Self {
        Self {
            pool: command.pool().unwrap_or_default().to_owned(),
            command,
            delay_ms: 0,
        }
    }
}

/// Withdraws the start of child `child` of execution `parent` if it is still in the outbox,
/// within `tx` (which holds the parent's lock): `true` when it was, so the child never starts.
/// A relay pass that took the row holds it until the child's shard answered, so this waits for
/// that pass and then finds the row gone (the child exists: it must be cancelled).
pub async fn withdraw_start(
    tx: &mut Transaction<'_, Postgres>,
    parent: ExecutionId,
    child: ExecutionId,
) -> Result<bool, Error> {
    let withdrawn = sqlx::query(
        "DELETE FROM outbox WHERE execution_id = $1 AND pool = $2
           AND command -> 'submit' ->> 'execution_id' = $3",
    )
    .bind(parent.get())
    .bind(START)
    .bind(child.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(withdrawn.rows_affected() > 0)
}

/// How long after its commit a handed-off command becomes due for a pass of the relay: far
/// longer than a handoff takes, far shorter than JetStream's de-duplication window, so a
/// command the handoff published and a pass publishes again is stored once.
pub const HANDOFF_GRACE: Duration = Duration::from_secs(2);

/// Whether an execution's new commands are handed off: all of them or none, and only when none
/// is delayed (a retry's backoff), since a delayed one must wait for a pass anyway.
pub fn hands_off(commands: &[OutboxRow]) -> bool {
    !commands.is_empty()
        && commands
            .iter()
            .all(|c| c.delay_ms == 0 && c.command.step().is_some())
}

/// When the outbox row of `command`, among `commands` of one execution, becomes due, in
/// milliseconds after the commit.
pub(super) fn due_after_ms(commands: &[OutboxRow], command: &OutboxRow) -> i64 {
    if hands_off(commands) {
        HANDOFF_GRACE.as_millis() as i64
    } else {
        command.delay_ms
    }
}

/// A command waiting in the outbox.
#[derive(Debug)]
pub struct PendingCommand {
    pub id: i64,
    pub pool: String,
    pub command: serde_json::Value,
}

/// The outbox's deletes lock their rows in a subquery (`FOR UPDATE SKIP LOCKED`) whose ids
/// come back as an array (`= ANY(ARRAY(...))`): PostgreSQL runs such a subquery once, as an
/// init plan. Written as `id IN (subquery)`, a generic plan made while the outbox's statistics
/// said it was empty (after a vacuum of an empty outbox) was a nested loop that ran the
/// subquery again for every row of the outbox: a handoff's delete of 500 ids then took minutes
/// of CPU on an outbox of 30,000 rows, and the relay, waiting for it, published nothing more
/// (found by the benchmark: a run stalled with every execution's commands in the outbox).
const TAKE_DUE_COMMANDS: &str = "DELETE FROM outbox WHERE id = ANY(ARRAY(
     SELECT id FROM outbox WHERE not_before <= now()
     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
     RETURNING id, pool, command";

/// Takes up to `limit` due outbox rows out of the outbox within `tx`, skipping rows another
/// relay of the same shard holds: they are gone once `tx` commits, and back if it rolls back.
pub async fn take_due_commands(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<PendingCommand>, Error> {
    let taken: Vec<(i64, String, serde_json::Value)> = sqlx::query_as(TAKE_DUE_COMMANDS)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await?;
    Ok(taken
        .into_iter()
        .map(|(id, pool, command)| PendingCommand { id, pool, command })
        .collect())
}

/// [`delete_commands`]' statement (its shape: see [`TAKE_DUE_COMMANDS`]).
const DELETE_COMMANDS: &str = "DELETE FROM outbox WHERE id = ANY(ARRAY(
     SELECT id FROM outbox WHERE id = ANY($1) FOR UPDATE SKIP LOCKED))";

/// Deletes outbox rows JetStream has stored, skipping rows a relay pass holds (it publishes and
/// deletes them itself; JetStream stores the command once).
pub async fn delete_commands(executor: impl PgExecutor<'_>, ids: &[i64]) -> Result<(), Error> {
    sqlx::query(DELETE_COMMANDS)
        .bind(ids)
        .execute(executor)
        .await?;
    Ok(())
}

/// Why an outbox row can never be published: its size on the wire and the limit it is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undeliverable {
    pub outbox_id: i64,
    pub size_bytes: usize,
    pub max_payload: usize,
}

impl Undeliverable {
    /// The step error an operator reads (`command_too_large`, then what to change).
    pub fn reason(&self) -> String {
        format!(
            "command_too_large: the step's command is {} bytes, over NATS max_payload ({} bytes); \
             make its rendered `with` smaller",
            self.size_bytes, self.max_payload
        )
    }
}

/// Moves an outbox row into `outbox_dead_letters` within `tx`; `false` when the row is gone
/// (another relay or an earlier call moved it, or JetStream stored it).
pub async fn dead_letter(
    tx: &mut Transaction<'_, Postgres>,
    undeliverable: &Undeliverable,
) -> Result<bool, Error> {
    let moved = sqlx::query(
        "WITH taken AS (DELETE FROM outbox WHERE id = $1
                        RETURNING id, execution_id, pool, command, created_at)
         INSERT INTO outbox_dead_letters
             (id, execution_id, pool, command, reason, size_bytes, max_payload, created_at)
         SELECT id, execution_id, pool, command, $2, $3, $4, created_at FROM taken",
    )
    .bind(undeliverable.outbox_id)
    .bind(undeliverable.reason())
    .bind(i64::try_from(undeliverable.size_bytes).unwrap_or(i64::MAX))
    .bind(i64::try_from(undeliverable.max_payload).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// In how many milliseconds the next outbox row becomes due (0 when one is due now), or
/// `None` when the outbox is empty. The statement has no parameter, so PostgreSQL plans it once
/// per connection: meant for the relaxed pool, whose plans use the index.
pub async fn next_command_due_in_ms(pool: &PgPool) -> Result<Option<i64>, Error> {
    // No GREATEST here: it skips NULLs, and would turn "empty" (a NULL min) into "due now".
    let due: Option<f64> = sqlx::query_scalar(
        "SELECT (EXTRACT(EPOCH FROM (min(not_before) - now())) * 1000)::float8 FROM outbox",
    )
    .fetch_one(pool)
    .await?;
    Ok(due.map(|ms| ms.max(0.0) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::relaxed_pool;
    use crate::persistence::testing::{execute, explained, outbox_row as row, TestShard};

    #[test]
    fn handed_off_rows_wait_out_the_grace_and_others_their_delay() {
        let all_now = [row(1, 0, 0), row(1, 1, 0)];
        let grace = HANDOFF_GRACE.as_millis() as i64;
        assert_eq!(due_after_ms(&all_now, &all_now[0]), grace);
        let mixed = [row(2, 0, 0), row(2, 1, 5_000)];
        assert_eq!(due_after_ms(&mixed, &mixed[0]), 0);
        assert_eq!(due_after_ms(&mixed, &mixed[1]), 5_000);
    }

    /// The outbox's deletes run their locking subquery once, and find rows through the
    /// primary key, in plans made while the statistics said the outbox was empty (a vacuum of
    /// an empty outbox, then a server's first handoff or pass), also after the outbox grew.
    #[tokio::test]
    async fn outbox_deletes_planned_on_an_empty_outbox_stay_linear_once_it_is_large() {
        let TestShard { dsn, pool, .. } = &TestShard::start(2).await;
        let fill = "INSERT INTO outbox (execution_id, pool, command)
                    SELECT id, 'default', '{}' FROM generate_series(1, 20000) AS id";
        execute(pool, fill).await;
        execute(pool, "DELETE FROM outbox").await;
        execute(pool, "VACUUM ANALYZE outbox").await;
        let relaxed = relaxed_pool(dsn, 1).expect("pool");
        let mut connection = relaxed.acquire().await.expect("connection");
        let statements = [
            ("handoff(bigint[])", DELETE_COMMANDS, "handoff('{1,2}')"),
            ("pass(bigint)", TAKE_DUE_COMMANDS, "pass(512)"),
        ];
        for (signature, statement, _) in statements {
            execute(
                &mut *connection,
                &format!("PREPARE {signature} AS {statement}"),
            )
            .await;
        }
        let mut plans = Vec::new();
        for grown in [false, true] {
            if grown {
                execute(pool, fill).await;
            }
            for (_, _, call) in statements {
                let explain = format!("EXPLAIN (FORMAT TEXT) EXECUTE {call}");
                plans.push(explained(&mut connection, &explain).await);
            }
        }
        for plan in &plans {
            assert!(plan.contains("InitPlan"), "{plan}");
            assert!(plan.contains("outbox_pkey"), "{plan}");
            assert!(!plan.contains("Nested Loop"), "{plan}");
            assert!(!plan.contains("Seq Scan"), "{plan}");
        }
    }
}
