//! The write path: committing new executions (many per statement), locking running ones and
//! reading their state, and writing what the engine decided for them (many per statement).
//! Steps, events and commands go in as parallel arrays ([`ChangeColumns`]), bound the same way
//! by both statements.

use std::collections::{HashMap, HashSet};

use noetl_contract::child::ParentLink;
use noetl_contract::engine::StepState;
use noetl_contract::status::{ExecutionStatus, StepStatus};
use noetl_contract::step::{Attempt, AttemptToken, StepIndex};
use noetl_contract::ExecutionId;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Row, Transaction};

mod children;
mod quota;
mod statements;

pub use quota::recount_tenant_executions;
use quota::settle_admitted;
use statements::{INSERT_EXECUTIONS, INSERT_EXECUTIONS_WITHIN_QUOTA};

use super::outbox::{due_after_ms, OutboxRow};
use super::rows::{self, integer, to_json};
use super::Error;

/// A new execution, already started by the engine, with its JSON columns serialised: the
/// execution row, its steps, its first events and the commands of its first steps.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub execution_id: ExecutionId,
    pub playbook_name: String,
    pub playbook_version: Option<u32>,
    pub tenant: String,
    pub playbook: String,
    pub input: String,
    pub labels: String,
    pub status: ExecutionStatus,
    pub steps: Vec<StepRow>,
    /// `(kind, payload)`, numbered from 1.
    pub events: Vec<(String, String)>,
    pub outbox: Vec<OutboxRow>,
    /// The step that started it, when it is a child execution.
    pub parent: Option<ParentLink>,
}

/// A step's state to write.
#[derive(Debug, Clone)]
pub struct StepRow {
    pub index: StepIndex,
    pub name: String,
    pub status: StepStatus,
    pub attempt: Attempt,
    /// JSON text, once the step succeeded.
    pub result: Option<String>,
    /// Why the step failed, once it did.
    pub error: Option<String>,
    /// From now; `None` clears the lease (the step is not in flight).
    pub lease_ms: Option<i64>,
    /// When the worker started the attempt that finished it (unix ms, its clock): the step's
    /// `started_at` when no heartbeat recorded one.
    pub started_at_ms: Option<i64>,
    /// The secret of the attempt that owns the step (`None`: never dispatched, or stored
    /// before tokens existed).
    pub token: Option<AttemptToken>,
    /// The child execution its current attempt started (a `playbook` step).
    pub child_id: Option<ExecutionId>,
}

/// The outcome of committing one execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub execution_id: ExecutionId,
    pub status: ExecutionStatus,
    pub created_at: String,
    /// `false` when the id was committed before (a retried submit).
    pub created: bool,
    /// The outbox rows of its first commands, when `created` (the committer takes them for the
    /// relay).
    pub outbox_ids: Vec<i64>,
}

/// What committing a batch of new executions did.
#[derive(Debug, Default)]
pub struct Inserted {
    /// The executions stored now (`created`) and those stored before (a retried submit).
    pub committed: Vec<Committed>,
    /// The new executions refused because their tenant has `max_in_flight` executions not yet
    /// finished in the shard; nothing of them was stored.
    pub over_quota: Vec<ExecutionId>,
}

/// Commits many executions (rows, steps, first events, first commands) in one statement, so
/// one transaction (and one WAL flush) covers the whole batch. Ids that already exist are left
/// untouched and reported with `created: false`. A tenant's new executions are admitted, in the
/// order of `rows`, while its executions not yet finished in the shard stay within
/// `max_in_flight` (`tenant_admitted` minus `tenant_finished`, the counter row locked by the
/// statement); the others are [`Inserted::over_quota`]. Without a quota (`None`) the counter
/// rows are not touched: one row per tenant written by every batch costs the shard's database
/// far more than the rest of the statement. `rows` must not repeat an id.
pub async fn insert_executions(
    connection: &mut PgConnection,
    rows: &[NewExecution],
    max_in_flight: Option<u64>,
) -> Result<Inserted, Error> {
    let ids: Vec<i64> = rows.iter().map(|r| r.execution_id.get()).collect();
    let mut columns = ChangeColumns::default();
    for row in rows {
        columns.push(row.execution_id, 0, &row.steps, &row.events, &row.outbox);
    }
    let tokens = std::mem::take(&mut columns.step_tokens);
    let child_ids = std::mem::take(&mut columns.step_child_ids);
    let parents: Vec<Option<&ParentLink>> = rows.iter().map(|r| r.parent.as_ref()).collect();
    let statement = sqlx::query(if max_in_flight.is_some() {
        INSERT_EXECUTIONS_WITHIN_QUOTA
    } else {
        INSERT_EXECUTIONS
    });
    let returned = columns
        .bind(statement)
        .bind(&ids)
        .bind(
            rows.iter()
                .map(|r| r.playbook_name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.playbook.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.input.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.labels.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.events.len() as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.playbook_version.and_then(|v| i32::try_from(v).ok()))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
        .bind(max_in_flight.map(|quota| i64::try_from(quota).unwrap_or(i64::MAX)))
        .bind(tokens);
    let returned = children::bind(returned, &parents, child_ids)
        .fetch_all(&mut *connection)
        .await?;
    let mut committed = Vec::with_capacity(rows.len());
    let mut admitted: HashMap<String, i64> = HashMap::new();
    for row in &returned {
        match row.try_get::<Option<String>, _>("tenant")? {
            Some(tenant) => {
                admitted.insert(tenant, row.try_get("admitted")?);
            }
            None => committed.push(committed_from_row(row, true)?),
        }
    }
    if let Err(e) = settle_admitted(connection, rows, &committed, admitted).await {
        // The executions are stored: answer them; the tenant's count stays one too high.
        tracing::error!(error = %e, "giving back the quota of executions stored concurrently failed");
    }
    let mut over_quota = Vec::new();
    if committed.len() < rows.len() {
        // A new statement, so a row committed concurrently by another replica is visible.
        let fresh: Vec<i64> = committed.iter().map(|c| c.execution_id.get()).collect();
        let existing = sqlx::query(
            "SELECT execution_id, status, created_at FROM executions
             WHERE execution_id = ANY($1) AND NOT (execution_id = ANY($2))",
        )
        .bind(&ids)
        .bind(&fresh)
        .fetch_all(&mut *connection)
        .await?;
        for row in &existing {
            committed.push(committed_from_row(row, false)?);
        }
        // Neither stored now nor before: its tenant's quota refused it.
        let stored: HashSet<ExecutionId> = committed.iter().map(|c| c.execution_id).collect();
        over_quota = rows
            .iter()
            .map(|r| r.execution_id)
            .filter(|id| !stored.contains(id))
            .collect();
    }
    Ok(Inserted {
        committed,
        over_quota,
    })
}

fn committed_from_row(row: &PgRow, created: bool) -> Result<Committed, Error> {
    let outbox_ids: Option<Vec<i64>> = if created {
        row.try_get("outbox_ids")?
    } else {
        None
    };
    Ok(Committed {
        execution_id: rows::execution_id(row)?,
        status: rows::status(row)?,
        created_at: rows::timestamp(row, "created_at")?,
        created,
        outbox_ids: outbox_ids.unwrap_or_default(),
    })
}

/// Steps, events and commands of many executions as parallel arrays for `UNNEST`: parameters
/// `$1` to `$17` of both writes ([`ChangeColumns::bind`]).
#[derive(Default)]
struct ChangeColumns<'a> {
    step_ids: Vec<i64>,
    step_indexes: Vec<i32>,
    step_names: Vec<&'a str>,
    step_statuses: Vec<&'static str>,
    step_attempts: Vec<i32>,
    step_results: Vec<Option<&'a str>>,
    step_errors: Vec<Option<&'a str>>,
    step_lease_ms: Vec<Option<i64>>,
    step_started_at_ms: Vec<Option<i64>>,
    event_ids: Vec<i64>,
    event_seqs: Vec<i64>,
    event_kinds: Vec<&'a str>,
    event_payloads: Vec<&'a str>,
    outbox_ids: Vec<i64>,
    outbox_pools: Vec<&'a str>,
    outbox_commands: Vec<String>,
    outbox_delays: Vec<i64>,
    /// Bound by each statement at its own position, after its other parameters.
    step_tokens: Vec<Option<Vec<u8>>>,
    /// As `step_tokens`.
    step_child_ids: Vec<Option<i64>>,
}

impl<'a> ChangeColumns<'a> {
    /// Adds one execution's rows; its events are numbered from `after_seq + 1`.
    fn push(
        &mut self,
        id: ExecutionId,
        after_seq: i64,
        steps: &'a [StepRow],
        events: &'a [(String, String)],
        outbox: &'a [OutboxRow],
    ) {
        let id = id.get();
        for step in steps {
            self.step_ids.push(id);
            self.step_indexes.push(integer(step.index.get()));
            self.step_names.push(&step.name);
            self.step_statuses.push(step.status.as_str());
            self.step_attempts.push(integer(step.attempt.get()));
            self.step_results.push(step.result.as_deref());
            self.step_errors.push(step.error.as_deref());
            self.step_lease_ms.push(step.lease_ms);
            self.step_started_at_ms.push(step.started_at_ms);
            self.step_tokens
                .push(step.token.map(|token| token.expose().to_vec()));
            self.step_child_ids
                .push(step.child_id.map(ExecutionId::get));
        }
        for (seq, (kind, payload)) in (after_seq + 1..).zip(events) {
            self.event_ids.push(id);
            self.event_seqs.push(seq);
            self.event_kinds.push(kind);
            self.event_payloads.push(payload);
        }
        for command in outbox {
            self.outbox_ids.push(id);
            self.outbox_pools.push(&command.pool);
            self.outbox_commands.push(to_json(&command.command));
            self.outbox_delays.push(due_after_ms(outbox, command));
        }
    }

    /// Binds the columns as `$1` to `$17`: the steps (execution, index, name, status, attempt,
    /// result, error, lease in ms, start in unix ms), the events (execution, seq, kind,
    /// payload), the commands (execution, pool, command, delay in ms).
    fn bind(self, statement: Query<'a, Postgres, PgArguments>) -> Query<'a, Postgres, PgArguments> {
        statement
            .bind(self.step_ids)
            .bind(self.step_indexes)
            .bind(self.step_names)
            .bind(self.step_statuses)
            .bind(self.step_attempts)
            .bind(self.step_results)
            .bind(self.step_errors)
            .bind(self.step_lease_ms)
            .bind(self.step_started_at_ms)
            .bind(self.event_ids)
            .bind(self.event_seqs)
            .bind(self.event_kinds)
            .bind(self.event_payloads)
            .bind(self.outbox_ids)
            .bind(self.outbox_pools)
            .bind(self.outbox_commands)
            .bind(self.outbox_delays)
    }
}

/// The state of an execution read under its row lock.
#[derive(Debug)]
pub struct LockedExecution {
    pub execution_id: ExecutionId,
    pub status: ExecutionStatus,
    pub playbook: serde_json::Value,
    pub input: serde_json::Value,
    pub last_event_seq: i64,
    pub steps: Vec<StepState>,
    pub tenant: String,
    /// The bytes of its step results together (their JSON).
    pub results_bytes: i64,
    /// Its variables (`ctx`).
    pub ctx: serde_json::Map<String, serde_json::Value>,
    /// The gotos it took.
    pub gotos: i32,
    /// The token of the attempt that owns each step, in step order.
    pub tokens: Vec<Option<AttemptToken>>,
    /// The child execution each step's current attempt started, in step order.
    pub child_ids: Vec<Option<ExecutionId>>,
    /// The step that started it, when it is a child execution.
    pub parent: Option<ParentLink>,
    /// Its depth among children (0 for a submitted execution).
    pub depth: u32,
}

/// Locks the rows of the executions `ids` (those that exist) for the rest of `tx`, in id order
/// so concurrent batches cannot deadlock, and reads their state. Every change to a running
/// execution goes through this lock, so replicas of one shard take turns.
pub async fn lock_executions(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[ExecutionId],
) -> Result<Vec<LockedExecution>, Error> {
    let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    let statement = format!(
        "SELECT execution_id, status, playbook, input, last_event_seq, tenant, results_bytes,
                ctx, gotos, {} FROM executions WHERE execution_id = ANY($1)
         ORDER BY execution_id FOR UPDATE",
        children::PARENT_COLUMNS
    );
    let locked = sqlx::query(&statement)
        .bind(&raw)
        .fetch_all(&mut **tx)
        .await?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    // A statement of its own, after the lock: under READ COMMITTED it takes a fresh snapshot,
    // so it sees what the transaction that held the lock before us committed. (Read in the
    // locking statement, the steps would come from the snapshot taken before the wait, and a
    // report queued behind another for the same step would record its result twice.)
    let step_rows = sqlx::query(
        "SELECT execution_id, status, attempt, result, error, attempt_token, child_id
         FROM execution_steps
         WHERE execution_id = ANY($1) ORDER BY execution_id, step_index",
    )
    .bind(&raw)
    .fetch_all(&mut **tx)
    .await?;
    let mut step_rows = step_rows.iter().peekable();
    locked
        .iter()
        .map(|row| {
            let id = rows::execution_id(row)?;
            let (mut steps, mut tokens, mut child_ids) = (Vec::new(), Vec::new(), Vec::new());
            while let Some(step) = step_rows.next_if(|s| rows::execution_id(s).ok() == Some(id)) {
                tokens.push(rows::attempt_token(step)?);
                child_ids.push(children::child_id(step)?);
                steps.push(StepState {
                    status: rows::step_status(step)?,
                    attempt: rows::attempt(step)?,
                    result: step.try_get("result")?,
                    error: step.try_get("error")?,
                });
            }
            let (parent, depth) = children::parent_link(row)?;
            Ok(LockedExecution {
                execution_id: id,
                status: rows::status(row)?,
                playbook: row.try_get("playbook")?,
                input: row.try_get("input")?,
                last_event_seq: row.try_get("last_event_seq")?,
                steps,
                tenant: row.try_get("tenant")?,
                results_bytes: row.try_get("results_bytes")?,
                ctx: row
                    .try_get::<sqlx::types::Json<_>, _>("ctx")
                    .map(|json| json.0)?,
                gotos: row.try_get("gotos")?,
                tokens,
                child_ids,
                parent,
                depth,
            })
        })
        .collect()
}

/// What decisions changed in one execution, to write inside the transaction that locked it.
#[derive(Debug)]
pub struct ExecutionChange {
    pub execution_id: ExecutionId,
    pub status: ExecutionStatus,
    /// The log's last sequence number before `events`.
    pub last_event_seq: i64,
    /// At most one row per step.
    pub steps: Vec<StepRow>,
    pub events: Vec<(String, String)>,
    pub outbox: Vec<OutboxRow>,
    /// The bytes of its step results together, these changes included.
    pub results_bytes: i64,
    /// Its variables' JSON, when these changes wrote them.
    pub ctx: Option<String>,
    /// The gotos it took, these changes included.
    pub gotos: i32,
    /// Its tenant, when these changes finished it (it leaves the tenant's executions in flight).
    pub finished_tenant: Option<String>,
}

/// Writes the changes of many executions in one statement. Returns the outbox rows of each
/// execution that queued commands.
pub async fn save_changes(
    tx: &mut Transaction<'_, Postgres>,
    changes: &[ExecutionChange],
) -> Result<Vec<(ExecutionId, Vec<i64>)>, Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let mut columns = ChangeColumns::default();
    for c in changes {
        columns.push(
            c.execution_id,
            c.last_event_seq,
            &c.steps,
            &c.events,
            &c.outbox,
        );
    }
    let statement = sqlx::query(
        "WITH changed_steps AS (
             UPDATE execution_steps AS s SET
                 status = u.status, attempt = u.attempt, result = u.result::jsonb, error = u.error,
                 attempt_token = u.token, child_id = coalesce(u.child_id, s.child_id),
                 lease_expires_at = now() + u.lease_ms * interval '1 millisecond',
                 started_at = CASE WHEN u.status = 'running' THEN coalesce(s.started_at, now())
                                   WHEN u.status = 'dispatched' THEN NULL
                                   ELSE coalesce(s.started_at, least(now(),
                                       to_timestamp(u.started_ms / 1000.0))) END,
                 finished_at = CASE WHEN u.status IN ('succeeded', 'failed', 'skipped', 'cancelled')
                                    THEN now() END,
                 updated_at = now()
             FROM UNNEST($1::bigint[], $2::int[], $3::text[], $4::text[], $5::int[], $6::text[],
                         $7::text[], $8::bigint[], $9::bigint[], $23::bytea[], $26::bigint[])
                 AS u(execution_id, step_index, name, status, attempt, result, error, lease_ms,
                      started_ms, token, child_id)
             WHERE s.execution_id = u.execution_id AND s.step_index = u.step_index
         ), new_events AS (
             INSERT INTO execution_events (execution_id, seq, kind, payload)
             SELECT execution_id, seq, kind, payload::jsonb
             FROM UNNEST($10::bigint[], $11::bigint[], $12::text[], $13::text[])
                 AS e(execution_id, seq, kind, payload)
         ), new_commands AS (
             INSERT INTO outbox (execution_id, pool, command, not_before)
             SELECT execution_id, pool, command::jsonb,
                    now() + delay_ms * interval '1 millisecond'
             FROM UNNEST($14::bigint[], $15::text[], $16::text[], $17::bigint[])
                 AS o(execution_id, pool, command, delay_ms)
             RETURNING id, execution_id
         ), changed_executions AS (
             UPDATE executions AS x SET status = u.status, last_event_seq = u.last_event_seq,
                    results_bytes = u.results_bytes, ctx = coalesce(u.ctx::jsonb, x.ctx),
                    gotos = u.gotos, updated_at = now()
             FROM UNNEST($18::bigint[], $19::text[], $20::bigint[], $21::bigint[], $24::text[],
                         $25::int[])
                 AS u(execution_id, status, last_event_seq, results_bytes, ctx, gotos)
             WHERE x.execution_id = u.execution_id
         ), finished AS (
             INSERT INTO tenant_finished AS f (tenant, executions)
             SELECT tenant, count(*) FROM UNNEST($22::text[]) AS t(tenant)
             GROUP BY tenant ORDER BY tenant
             ON CONFLICT (tenant) DO UPDATE SET executions = f.executions + EXCLUDED.executions
         )
         SELECT execution_id, array_agg(id) AS outbox_ids FROM new_commands GROUP BY execution_id",
    );
    let ids: Vec<i64> = changes.iter().map(|c| c.execution_id.get()).collect();
    let statuses: Vec<&str> = changes.iter().map(|c| c.status.as_str()).collect();
    let last_seqs: Vec<i64> = changes
        .iter()
        .map(|c| c.last_event_seq + c.events.len() as i64)
        .collect();
    let tokens = std::mem::take(&mut columns.step_tokens);
    let child_ids = std::mem::take(&mut columns.step_child_ids);
    let results_bytes: Vec<i64> = changes.iter().map(|c| c.results_bytes).collect();
    let ctx: Vec<Option<&str>> = changes.iter().map(|c| c.ctx.as_deref()).collect();
    let gotos: Vec<i32> = changes.iter().map(|c| c.gotos).collect();
    let finished: Vec<&str> = changes
        .iter()
        .filter_map(|c| c.finished_tenant.as_deref())
        .collect();
    columns
        .bind(statement)
        .bind(ids)
        .bind(statuses)
        .bind(last_seqs)
        .bind(results_bytes)
        .bind(finished)
        .bind(tokens)
        .bind(ctx)
        .bind(gotos)
        .bind(child_ids)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| Ok((rows::execution_id(row)?, row.try_get("outbox_ids")?)))
        .collect()
}
