//! Every query the server runs against a shard database, and nothing else.

use std::sync::LazyLock;
use std::time::Duration;

use noetl_contract::command::StepCommand;
use noetl_contract::engine::{StepState, StepStatus};
use noetl_contract::message::{
    EventPage, EventView, ExecutionStatus, ExecutionSummary, ExecutionView, Labels, ListQuery,
    StepView,
};
use noetl_contract::shards::ShardDsn;
use noetl_contract::topology::Epoch;
use noetl_contract::{ExecutionId, ShardCount, ShardId};
use secrecy::ExposeSecret;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, Row, Transaction};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::orchestrate::to_json;

/// Failures the server branches on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid connection setting {key}={value:?}: {reason}")]
    Setting {
        key: String,
        value: String,
        reason: String,
    },
    #[error(
        "this database belongs to shard {recorded}, but NOETL_SHARDS lists it as shard {configured} \
         (were the entries reordered?); refusing to serve it"
    )]
    WrongShard { recorded: i32, configured: u32 },
    #[error("stored row is malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Unavailable(&'static str),
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool for one shard database. Connections are opened lazily, so an unreachable database
/// surfaces on first use rather than here.
pub fn pool(dsn: &ShardDsn, size: u32) -> Result<PgPool, Error> {
    Ok(pool_options(size).connect_lazy_with(connect_options(dsn)?))
}

/// A pool whose commits do not wait for their WAL flush, for writes whose loss in a crash is
/// harmless (heartbeats: a lost one only lets a lease run out).
///
/// Its statements are always planned generically, without sequential scans (see
/// `GENERIC_PLANNING` and `BEAT_ATTEMPTS`): a plan made for the values at hand folds the
/// in-flight statuses into constants, which lets the planner pick the partial lease index
/// whenever the statistics say it is empty.
pub fn relaxed_pool(dsn: &ShardDsn, size: u32) -> Result<PgPool, Error> {
    let settings = [("synchronous_commit", "off")]
        .into_iter()
        .chain(GENERIC_PLANNING);
    Ok(pool_options(size).connect_lazy_with(connect_options(dsn)?.options(settings)))
}

/// A pool whose statements are always planned generically (`GENERIC_PLANNING`), with durable
/// commits: the committers' inserts of new executions, and the report batches. Under
/// PostgreSQL's default the insert (four inserts over arrays) was planned afresh on nearly
/// every call, a cost per transaction that a moderate load, whose batches hold one or two
/// submits, paid per submit.
pub fn generic_pool(dsn: &ShardDsn, size: u32) -> Result<PgPool, Error> {
    Ok(pool_options(size).connect_lazy_with(connect_options(dsn)?.options(GENERIC_PLANNING)))
}

/// The settings of generic planning, for the relaxed pool's connections and for
/// [`begin_generic`]'s transactions. A generic plan is made once per connection and kept for
/// its life, so sequential scans are off: one made at start-up, while a table was nearly empty,
/// scanned the whole table for every later call as it grew (the handoff's delete of a few
/// outbox rows by id walked every row of the outbox, dead ones too until a vacuum, a tenth of
/// PostgreSQL's time at full load). Every statement planned this way finds its rows through an
/// index.
const GENERIC_PLANNING: [(&str, &str); 2] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
];

/// [`begin_generic`]'s statement: `GENERIC_PLANNING` for one transaction.
static BEGIN_GENERIC: LazyLock<String> = LazyLock::new(|| {
    GENERIC_PLANNING
        .iter()
        .fold("BEGIN".to_owned(), |statement, (name, value)| {
            format!("{statement}; SET LOCAL {name} = {value}")
        })
});

/// Begins a transaction whose statements are planned generically, for the orchestrator's
/// writes outside report batches (whose tasks keep a connection of a [`generic_pool`]) and the
/// relay's passes. They take arrays of ids (`= ANY($1)`, `UNNEST`) or a batch limit, and for
/// those PostgreSQL's default makes a fresh plan for the values at hand on nearly every call:
/// planning was about a third of the report path's time in the database (pg_stat_statements:
/// 2,385 plans for 2,581 calls of the write; 13 for 3,024 with this). Reads keep the default,
/// which the listing's optional filters need. The plans avoid sequential scans, as in the
/// relaxed pool (`GENERIC_PLANNING`).
pub async fn begin_generic(pool: &PgPool) -> Result<Transaction<'static, Postgres>, Error> {
    Ok(pool.begin_with(BEGIN_GENERIC.as_str()).await?)
}

/// A connection one task keeps for all its statements, taken from `pool` at first use.
///
/// sqlx gives a connection back to its pool only after a round trip to the database (it pings
/// the connection on release, to catch one left broken or mid-statement). On the hot paths,
/// where every batch or delete was one checkout, that was a round trip more per transaction,
/// and a wake-up of the server and of a PostgreSQL backend, for nothing. A held connection is
/// given up only when a statement on it failed (it may be broken); the next use takes another.
#[derive(Debug)]
pub struct Held {
    pool: PgPool,
    connection: Option<PoolConnection<Postgres>>,
}

impl Held {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            connection: None,
        }
    }

    /// The held connection, taken from the pool if there is none.
    pub async fn connection(&mut self) -> Result<&mut PgConnection, Error> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.pool.acquire().await?,
        };
        Ok(self.connection.insert(connection))
    }

    /// Passes on the outcome of work on the connection; after an error the connection is
    /// closed, since it may be broken.
    pub fn checked<T>(&mut self, outcome: Result<T, Error>) -> Result<T, Error> {
        if outcome.is_err() {
            if let Some(mut broken) = self.connection.take() {
                broken.close_on_drop();
            }
        }
        outcome
    }
}

fn pool_options(size: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        // No ping before every use: it was a round trip on the path of every request, and a
        // connection that broke meanwhile fails its statement instead, which every caller
        // already handles (the worker retries its report, a submit is answered 503).
        .test_before_acquire(false)
}

fn connect_options(dsn: &ShardDsn) -> Result<PgConnectOptions, Error> {
    // Only NOETL_SHARDS decides where a shard lives: no ~/.pgpass lookup for another host.
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(&dsn.host)
        .port(dsn.port)
        .username(&dsn.user)
        .database(&dsn.database)
        .application_name("noetl-server")
        // A server cut off from its database (or paused) while inside a transaction would hold
        // the execution's row lock until its TCP connection delivers again, which after a long
        // partition takes tens of seconds of retransmission backoff; PostgreSQL ends such a
        // session instead, so another server can take the execution over (its changes roll
        // back; see wiki/reliability.md). No transaction of the server waits longer than the
        // relay's JetStream publish acknowledgements (5 s).
        .options([("idle_in_transaction_session_timeout", "10s")]);
    if let Some(password) = &dsn.password {
        options = options.password(password.expose_secret());
    }
    for (key, value) in &dsn.settings {
        let setting_error = |reason: String| Error::Setting {
            key: key.clone(),
            value: value.clone(),
            reason,
        };
        options = match key.as_str() {
            "sslmode" => {
                options.ssl_mode(value.parse().map_err(|e| setting_error(format!("{e}")))?)
            }
            "sslrootcert" => options.ssl_root_cert(value.as_str()),
            "application_name" => options.application_name(value),
            _ => return Err(setting_error("not supported".to_owned())),
        };
    }
    Ok(options)
}

/// Applies pending migrations. sqlx holds a Postgres advisory lock while migrating, so servers
/// starting together take turns and each finds the schema complete.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Records which shard this database is, or checks the recorded one.
pub async fn claim_shard(pool: &PgPool, shard: ShardId) -> Result<(), Error> {
    let configured = i32::try_from(shard.get()).map_err(|_| Error::WrongShard {
        recorded: -1,
        configured: shard.get(),
    })?;
    sqlx::query("INSERT INTO shard_identity (shard) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(configured)
        .execute(pool)
        .await?;
    let recorded: i32 = sqlx::query_scalar("SELECT shard FROM shard_identity")
        .fetch_one(pool)
        .await?;
    if recorded != configured {
        return Err(Error::WrongShard {
            recorded,
            configured: shard.get(),
        });
    }
    Ok(())
}

/// The topology epochs recorded in this shard database.
pub async fn recorded_epochs(pool: &PgPool) -> Result<Vec<Epoch>, Error> {
    let rows: Vec<(i64, i64, i32)> = sqlx::query_as(
        "SELECT epoch, activate_at_ms, shard_count FROM topology_epochs ORDER BY epoch",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(epoch, activate_at_ms, shard_count)| {
            let shard_count = u32::try_from(shard_count)
                .ok()
                .and_then(|n| ShardCount::new(n).ok())
                .ok_or_else(|| {
                    Error::Malformed(format!("epoch {epoch} has {shard_count} shards"))
                })?;
            Ok(Epoch {
                epoch: u64::try_from(epoch)
                    .map_err(|_| Error::Malformed(format!("epoch number {epoch}")))?,
                activate_at_ms,
                shard_count,
            })
        })
        .collect()
}

/// Records epochs this server accepted. An epoch recorded before is only replaced while it is
/// not in force yet at `now_ms` (an in-force one is what a server must never see rewritten).
pub async fn record_epochs(pool: &PgPool, epochs: &[Epoch], now_ms: i64) -> Result<(), Error> {
    let numbers: Vec<i64> = epochs
        .iter()
        .map(|e| i64::try_from(e.epoch).unwrap_or(i64::MAX))
        .collect();
    let activations: Vec<i64> = epochs.iter().map(|e| e.activate_at_ms).collect();
    let counts: Vec<i32> = epochs
        .iter()
        .map(|e| i32::try_from(e.shard_count.get()).unwrap_or(i32::MAX))
        .collect();
    sqlx::query(
        "INSERT INTO topology_epochs (epoch, activate_at_ms, shard_count)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::integer[])
         ON CONFLICT (epoch) DO UPDATE
             SET activate_at_ms = excluded.activate_at_ms, shard_count = excluded.shard_count,
                 seen_at = now()
             WHERE topology_epochs.activate_at_ms > $4
               AND (topology_epochs.activate_at_ms, topology_epochs.shard_count)
                   IS DISTINCT FROM (excluded.activate_at_ms, excluded.shard_count)",
    )
    .bind(numbers)
    .bind(activations)
    .bind(counts)
    .bind(now_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether execution `id` exists and belongs to `tenant` (any tenant when `None`).
pub async fn visible(pool: &PgPool, id: ExecutionId, tenant: Option<&str>) -> Result<bool, Error> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT execution_id FROM executions
         WHERE execution_id = $1 AND ($2::text IS NULL OR tenant = $2)",
    )
    .bind(id.get())
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

/// How many executions the shard holds, and how many are not finished.
pub async fn shard_counts(pool: &PgPool) -> Result<(u64, u64), Error> {
    let (total, unfinished): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status IN ('pending', 'running'))
         FROM executions",
    )
    .fetch_one(pool)
    .await?;
    Ok((
        u64::try_from(total).unwrap_or(0),
        u64::try_from(unfinished).unwrap_or(0),
    ))
}

/// Whether the database answers a trivial query within two seconds.
pub async fn ping(pool: &PgPool) -> bool {
    let query = sqlx::query("SELECT 1").execute(pool);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), query).await,
        Ok(Ok(_))
    )
}

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
}

/// A step's state to write.
#[derive(Debug, Clone)]
pub struct StepRow {
    pub index: u32,
    pub name: String,
    pub status: StepStatus,
    pub attempt: u32,
    pub result: Option<String>,
    pub error: Option<String>,
    /// From now; `None` clears the lease (the step is not in flight).
    pub lease_ms: Option<i64>,
    /// When the worker started the attempt that finished it (unix ms, its clock): the step's
    /// `started_at` when no heartbeat recorded one.
    pub started_at_ms: Option<i64>,
}

/// A command to put in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub pool: String,
    pub command: StepCommand,
    /// Backoff before it may run (a retry's); 0 when it may run at once.
    pub delay_ms: i64,
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

/// Commits many executions (rows, steps, first events, first commands) in one statement, so
/// one transaction (and one WAL flush) covers the whole batch. Ids that already exist are left
/// untouched and reported with `created: false`. `rows` must not repeat an id.
pub async fn insert_executions(
    connection: &mut PgConnection,
    rows: &[NewExecution],
) -> Result<Vec<Committed>, Error> {
    let ids: Vec<i64> = rows.iter().map(|r| r.execution_id.get()).collect();
    let mut columns = ChangeColumns::default();
    for row in rows {
        columns.push(row.execution_id, 0, &row.steps, &row.events, &row.outbox);
    }
    let ChangeColumns {
        steps,
        event_ids,
        event_seqs,
        event_kinds,
        event_payloads,
        outbox_ids,
        outbox_pools,
        outbox_commands,
        outbox_delays,
    } = columns;
    let inserted = sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::bigint[], $23::int[], $24::text[])
                 AS t(execution_id, playbook_name, playbook, input, labels, status, last_event_seq,
                      playbook_version, tenant)
         ), inserted AS (
             INSERT INTO executions
                 (execution_id, playbook_name, playbook, input, labels, status, last_event_seq,
                  playbook_version, tenant)
             SELECT execution_id, playbook_name, playbook::jsonb, input::jsonb, labels::jsonb,
                    status, last_event_seq, playbook_version, tenant
             FROM input
             ON CONFLICT (execution_id) DO NOTHING
             RETURNING execution_id, status, created_at
         ), new_steps AS (
             INSERT INTO execution_steps
                 (execution_id, step_index, name, status, attempt, lease_expires_at, error,
                  finished_at)
             SELECT s.execution_id, s.step_index, s.name, s.status, s.attempt,
                    now() + s.lease_ms * interval '1 millisecond', s.error,
                    CASE WHEN s.status IN ('succeeded', 'failed', 'skipped', 'cancelled')
                         THEN now() END
             FROM UNNEST($8::bigint[], $9::int[], $10::text[], $11::text[], $12::int[], $13::bigint[],
                         $22::text[])
                 AS s(execution_id, step_index, name, status, attempt, lease_ms, error)
             WHERE s.execution_id IN (SELECT execution_id FROM inserted)
         ), new_events AS (
             INSERT INTO execution_events (execution_id, seq, kind, payload)
             SELECT e.execution_id, e.seq, e.kind, e.payload::jsonb
             FROM UNNEST($14::bigint[], $15::bigint[], $16::text[], $17::text[])
                 AS e(execution_id, seq, kind, payload)
             WHERE e.execution_id IN (SELECT execution_id FROM inserted)
         ), new_commands AS (
             INSERT INTO outbox (execution_id, pool, command, not_before)
             SELECT o.execution_id, o.pool, o.command::jsonb,
                    now() + o.delay_ms * interval '1 millisecond'
             FROM UNNEST($18::bigint[], $19::text[], $20::text[], $21::bigint[])
                 AS o(execution_id, pool, command, delay_ms)
             WHERE o.execution_id IN (SELECT execution_id FROM inserted)
             RETURNING id, execution_id
         )
         SELECT i.execution_id, i.status, i.created_at, c.outbox_ids
         FROM inserted i LEFT JOIN (
             SELECT execution_id, array_agg(id) AS outbox_ids FROM new_commands
             GROUP BY execution_id
         ) c USING (execution_id)",
    )
    .bind(&ids)
    .bind(rows.iter().map(|r| r.playbook_name.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.playbook.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.input.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.labels.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.events.len() as i64).collect::<Vec<_>>())
    .bind(&steps.execution_ids)
    .bind(&steps.indexes)
    .bind(&steps.names)
    .bind(&steps.statuses)
    .bind(&steps.attempts)
    .bind(&steps.lease_ms)
    .bind(&event_ids)
    .bind(&event_seqs)
    .bind(&event_kinds)
    .bind(&event_payloads)
    .bind(&outbox_ids)
    .bind(&outbox_pools)
    .bind(&outbox_commands)
    .bind(&outbox_delays)
    .bind(&steps.errors)
    .bind(
        rows.iter()
            .map(|r| r.playbook_version.and_then(|v| i32::try_from(v).ok()))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *connection)
    .await?;
    let mut committed = inserted
        .iter()
        .map(|row| committed_from_row(row, true))
        .collect::<Result<Vec<_>, _>>()?;
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
    }
    Ok(committed)
}

/// Steps, events and commands of many executions as parallel arrays for `UNNEST`.
#[derive(Default)]
struct ChangeColumns<'a> {
    steps: StepColumns,
    event_ids: Vec<i64>,
    event_seqs: Vec<i64>,
    event_kinds: Vec<&'a str>,
    event_payloads: Vec<&'a str>,
    outbox_ids: Vec<i64>,
    outbox_pools: Vec<&'a str>,
    outbox_commands: Vec<String>,
    outbox_delays: Vec<i64>,
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
            self.steps.push(id, step);
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
            self.outbox_delays
                .push(crate::relay::due_after_ms(outbox, command));
        }
    }
}

/// Step rows as parallel arrays for `UNNEST`.
#[derive(Default)]
struct StepColumns {
    execution_ids: Vec<i64>,
    indexes: Vec<i32>,
    names: Vec<String>,
    statuses: Vec<&'static str>,
    attempts: Vec<i32>,
    results: Vec<Option<String>>,
    errors: Vec<Option<String>>,
    lease_ms: Vec<Option<i64>>,
    started_at_ms: Vec<Option<i64>>,
}

impl StepColumns {
    fn push(&mut self, execution_id: i64, step: &StepRow) {
        self.execution_ids.push(execution_id);
        self.indexes
            .push(i32::try_from(step.index).unwrap_or(i32::MAX));
        self.names.push(step.name.clone());
        self.statuses.push(step.status.as_str());
        self.attempts
            .push(i32::try_from(step.attempt).unwrap_or(i32::MAX));
        self.results.push(step.result.clone());
        self.errors.push(step.error.clone());
        self.lease_ms.push(step.lease_ms);
        self.started_at_ms.push(step.started_at_ms);
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
}

/// Locks the rows of the executions `ids` (those that exist) for the rest of `tx`, in id order
/// so concurrent batches cannot deadlock, and reads their state. Every change to a running
/// execution goes through this lock, so replicas of one shard take turns.
pub async fn lock_executions(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[ExecutionId],
) -> Result<Vec<LockedExecution>, Error> {
    let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    let rows = sqlx::query(
        "SELECT execution_id, status, playbook, input, last_event_seq FROM executions
         WHERE execution_id = ANY($1) ORDER BY execution_id FOR UPDATE",
    )
    .bind(&raw)
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // A statement of its own, after the lock: under READ COMMITTED it takes a fresh snapshot,
    // so it sees what the transaction that held the lock before us committed. (Read in the
    // locking statement, the steps would come from the snapshot taken before the wait, and a
    // report queued behind another for the same step would record its result twice.)
    let step_rows = sqlx::query(
        "SELECT execution_id, status, attempt, result, error FROM execution_steps
         WHERE execution_id = ANY($1) ORDER BY execution_id, step_index",
    )
    .bind(&raw)
    .fetch_all(&mut **tx)
    .await?;
    let mut step_rows = step_rows.iter().peekable();
    rows.iter()
        .map(|row| {
            let id = execution_id(row)?;
            let mut steps = Vec::new();
            while let Some(step) = step_rows.next_if(|s| execution_id(s).ok() == Some(id)) {
                let status: String = step.try_get("status")?;
                let attempt: i32 = step.try_get("attempt")?;
                steps.push(StepState {
                    status: StepStatus::parse(&status).ok_or_else(|| {
                        Error::Malformed(format!("step status {status:?} of {id}"))
                    })?,
                    attempt: u32::try_from(attempt).unwrap_or(0),
                    result: step.try_get("result")?,
                    error: step.try_get("error")?,
                });
            }
            Ok(LockedExecution {
                execution_id: id,
                status: status(row)?,
                playbook: row.try_get("playbook")?,
                input: row.try_get("input")?,
                last_event_seq: row.try_get("last_event_seq")?,
                steps,
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
    let ChangeColumns {
        steps,
        event_ids,
        event_seqs,
        event_kinds,
        event_payloads,
        outbox_ids,
        outbox_pools,
        outbox_commands,
        outbox_delays,
    } = columns;
    sqlx::query(
        "WITH changed_steps AS (
             UPDATE execution_steps AS s SET
                 status = u.status, attempt = u.attempt, result = u.result::jsonb, error = u.error,
                 lease_expires_at = now() + u.lease_ms * interval '1 millisecond',
                 started_at = CASE WHEN u.status = 'running' THEN coalesce(s.started_at, now())
                                   WHEN u.status = 'dispatched' THEN NULL
                                   ELSE coalesce(s.started_at, least(now(),
                                       to_timestamp(u.started_ms / 1000.0))) END,
                 finished_at = CASE WHEN u.status IN ('succeeded', 'failed', 'skipped', 'cancelled')
                                    THEN now() END,
                 updated_at = now()
             FROM UNNEST($4::bigint[], $5::int[], $6::text[], $7::int[], $8::text[], $9::text[],
                         $10::bigint[], $19::bigint[])
                 AS u(execution_id, step_index, status, attempt, result, error, lease_ms,
                      started_ms)
             WHERE s.execution_id = u.execution_id AND s.step_index = u.step_index
         ), new_events AS (
             INSERT INTO execution_events (execution_id, seq, kind, payload)
             SELECT execution_id, seq, kind, payload::jsonb
             FROM UNNEST($11::bigint[], $12::bigint[], $13::text[], $14::text[])
                 AS e(execution_id, seq, kind, payload)
         ), new_commands AS (
             INSERT INTO outbox (execution_id, pool, command, not_before)
             SELECT execution_id, pool, command::jsonb,
                    now() + delay_ms * interval '1 millisecond'
             FROM UNNEST($15::bigint[], $16::text[], $17::text[], $18::bigint[])
                 AS o(execution_id, pool, command, delay_ms)
             RETURNING id, execution_id
         ), changed_executions AS (
             UPDATE executions AS x SET status = u.status, last_event_seq = u.last_event_seq,
                    updated_at = now()
             FROM UNNEST($1::bigint[], $2::text[], $3::bigint[])
                 AS u(execution_id, status, last_event_seq)
             WHERE x.execution_id = u.execution_id
         )
         SELECT execution_id, array_agg(id) AS outbox_ids FROM new_commands GROUP BY execution_id",
    )
    .bind(
        changes
            .iter()
            .map(|c| c.execution_id.get())
            .collect::<Vec<_>>(),
    )
    .bind(
        changes
            .iter()
            .map(|c| c.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        changes
            .iter()
            .map(|c| c.last_event_seq + c.events.len() as i64)
            .collect::<Vec<_>>(),
    )
    .bind(&steps.execution_ids)
    .bind(&steps.indexes)
    .bind(&steps.statuses)
    .bind(&steps.attempts)
    .bind(&steps.results)
    .bind(&steps.errors)
    .bind(&steps.lease_ms)
    .bind(&event_ids)
    .bind(&event_seqs)
    .bind(&event_kinds)
    .bind(&event_payloads)
    .bind(&outbox_ids)
    .bind(&outbox_pools)
    .bind(&outbox_commands)
    .bind(&outbox_delays)
    .bind(&steps.started_at_ms)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|row| Ok((execution_id(row)?, row.try_get("outbox_ids")?)))
    .collect()
}

/// One heartbeat: an attempt of a step, and whether it is the check before the action starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub execution_id: ExecutionId,
    pub step: u32,
    pub attempt: u32,
    /// The check before the action starts: read, nothing written.
    pub starting: bool,
    /// When the action started (unix ms, the worker's clock), if the worker said.
    pub started_at_ms: Option<i64>,
}

/// [`beat_attempts`]' statement. Beats that are not `starting` extend the lease and set
/// `started_at` (the worker's start, never later than now; now when the worker did not say);
/// `starting` checks only read. Both match only an attempt that owns its in-flight step.
///
/// The in-flight statuses are a parameter (`$5`), not literals, and the relaxed pool plans
/// generically, so the planner cannot prove the partial lease index's predicate. If it could,
/// statistics gathered at an idle moment (no step in flight) would have it take that index for
/// one row and walk all of it for every beat of the batch: 8 ms a batch under load, against
/// 0.2 ms by the primary key.
const BEAT_ATTEMPTS: &str = "WITH b AS (
         SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::int[], $6::bool[], $7::bigint[])
             AS b(execution_id, step_index, attempt, starting, started_ms)
     ), touched AS (
         UPDATE execution_steps AS s
         SET lease_expires_at = now() + $4 * interval '1 millisecond',
             started_at = coalesce(s.started_at, least(now(), to_timestamp(b.started_ms / 1000.0)),
                                   now())
         FROM b
         WHERE NOT b.starting AND s.execution_id = b.execution_id
           AND s.step_index = b.step_index AND s.attempt = b.attempt
           AND s.status = ANY($5::text[])
         RETURNING s.execution_id, s.step_index, s.attempt, s.status
     )
     SELECT execution_id, step_index, attempt, status FROM touched
     UNION ALL
     SELECT s.execution_id, s.step_index, s.attempt, s.status
     FROM b JOIN execution_steps AS s
       ON s.execution_id = b.execution_id AND s.step_index = b.step_index
     WHERE b.starting AND s.attempt = b.attempt AND s.status = ANY($5::text[])";

/// Heartbeats, one statement for many: each beat that is not a `starting` check extends its
/// attempt's lease and notes when it started. Returns, per beat, the step's status, or `None`
/// when the attempt no longer owns its step (superseded, finished, cancelled). Meant for the
/// relaxed pool.
pub async fn beat_attempts(
    executor: impl PgExecutor<'_>,
    beats: &[Beat],
    lease_ms: i64,
) -> Result<Vec<Option<StepStatus>>, Error> {
    // Rows are taken in (execution, step) order, as report transactions write them, so two
    // batches do not wait for each other crosswise.
    let mut order: Vec<&Beat> = beats.iter().collect();
    order.sort_by_key(|b| (b.execution_id, b.step));
    let rows: Vec<(i64, i32, i32, String)> = sqlx::query_as(BEAT_ATTEMPTS)
        .bind(
            order
                .iter()
                .map(|b| b.execution_id.get())
                .collect::<Vec<_>>(),
        )
        .bind(
            order
                .iter()
                .map(|b| i32::try_from(b.step).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(
            order
                .iter()
                .map(|b| i32::try_from(b.attempt).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(lease_ms)
        .bind(
            &[
                StepStatus::Dispatched.as_str(),
                StepStatus::Running.as_str(),
            ][..],
        )
        .bind(order.iter().map(|b| b.starting).collect::<Vec<_>>())
        .bind(order.iter().map(|b| b.started_at_ms).collect::<Vec<_>>())
        .fetch_all(executor)
        .await?;
    let owned: std::collections::HashMap<(i64, i64, i64), StepStatus> = rows
        .into_iter()
        .filter_map(|(id, step, attempt, status)| {
            let status = StepStatus::parse(&status)?;
            Some(((id, i64::from(step), i64::from(attempt)), status))
        })
        .collect();
    Ok(beats
        .iter()
        .map(|b| {
            let key = (
                b.execution_id.get(),
                i64::from(b.step),
                i64::from(b.attempt),
            );
            owned.get(&key).copied()
        })
        .collect())
}

/// Whether the attempt's lease is still expired, locking its step row for the rest of `tx`
/// (call it with the execution already locked: execution before steps, on every path).
pub async fn lease_expired(
    tx: &mut Transaction<'_, Postgres>,
    id: ExecutionId,
    step: u32,
    attempt: u32,
) -> Result<bool, Error> {
    let expired: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM execution_steps
         WHERE execution_id = $1 AND step_index = $2 AND attempt = $3
           AND status IN ('dispatched', 'running') AND lease_expires_at < now()
         FOR UPDATE",
    )
    .bind(id.get())
    .bind(i32::try_from(step).unwrap_or(i32::MAX))
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .fetch_optional(&mut **tx)
    .await?;
    Ok(expired.is_some())
}

/// The shard's backlog: commands in the outbox not yet stored by JetStream, and steps
/// dispatched or running (commands handed out and not yet reported).
pub async fn backlog(pool: &PgPool) -> Result<(i64, i64), Error> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM outbox) AS outbox,
                (SELECT count(*) FROM execution_steps
                 WHERE status IN ('dispatched', 'running')) AS pending",
    )
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("outbox")?, row.try_get("pending")?))
}

/// In-flight attempts whose lease has run out: `(execution, step, attempt)`.
pub async fn expired_leases(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<(ExecutionId, u32, u32)>, Error> {
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
        let step: i32 = row.try_get("step_index")?;
        let attempt: i32 = row.try_get("attempt")?;
        Ok((
            execution_id(row)?,
            u32::try_from(step).unwrap_or(0),
            u32::try_from(attempt).unwrap_or(0),
        ))
    })
    .collect()
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
    sqlx::query(TAKE_DUE_COMMANDS)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| {
            Ok(PendingCommand {
                id: row.try_get("id")?,
                pool: row.try_get("pool")?,
                command: row.try_get("command")?,
            })
        })
        .collect()
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

/// A page of an execution's event log, and its status.
pub async fn events_page(
    pool: &PgPool,
    id: ExecutionId,
    tenant: Option<&str>,
    after_seq: i64,
    limit: i64,
) -> Result<Option<EventPage>, Error> {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM executions
         WHERE execution_id = $1 AND ($2::text IS NULL OR tenant = $2)",
    )
    .bind(id.get())
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    let Some(status) = status else {
        return Ok(None);
    };
    let events = sqlx::query(
        "SELECT seq, kind, payload, created_at FROM execution_events
         WHERE execution_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(id.get())
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(EventView {
            seq: row.try_get("seq")?,
            kind: row.try_get("kind")?,
            payload: row.try_get("payload")?,
            created_at: rfc3339(row.try_get("created_at")?)?,
        })
    })
    .collect::<Result<Vec<_>, Error>>()?;
    Ok(Some(EventPage {
        events,
        status: ExecutionStatus::parse(&status)
            .ok_or_else(|| Error::Malformed(format!("status {status:?}")))?,
    }))
}

fn committed_from_row(row: &sqlx::postgres::PgRow, created: bool) -> Result<Committed, Error> {
    let outbox_ids: Option<Vec<i64>> = if created {
        row.try_get("outbox_ids")?
    } else {
        None
    };
    Ok(Committed {
        execution_id: execution_id(row)?,
        status: status(row)?,
        created_at: rfc3339(row.try_get("created_at")?)?,
        created,
        outbox_ids: outbox_ids.unwrap_or_default(),
    })
}

/// Reads one execution.
pub async fn get_execution(
    pool: &PgPool,
    shard: ShardId,
    id: ExecutionId,
    tenant: Option<&str>,
) -> Result<Option<ExecutionView>, Error> {
    let row = sqlx::query(
        "SELECT execution_id, status, playbook_name, playbook_version, input, labels, created_at,
                updated_at
         FROM executions WHERE execution_id = $1 AND ($2::text IS NULL OR tenant = $2)",
    )
    .bind(id.get())
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let sqlx::types::Json(labels): sqlx::types::Json<Labels> = row.try_get("labels")?;
    let steps = sqlx::query(
        "SELECT name, status, attempt, result, error, started_at, finished_at
         FROM execution_steps WHERE execution_id = $1 ORDER BY step_index",
    )
    .bind(id.get())
    .fetch_all(pool)
    .await?
    .iter()
    .map(|step| {
        let status: String = step.try_get("status")?;
        let attempt: i32 = step.try_get("attempt")?;
        let at = |column: &str| -> Result<Option<String>, Error> {
            step.try_get::<Option<OffsetDateTime>, _>(column)?
                .map(rfc3339)
                .transpose()
        };
        Ok(StepView {
            name: step.try_get("name")?,
            status: StepStatus::parse(&status)
                .ok_or_else(|| Error::Malformed(format!("step status {status:?}")))?,
            attempt: u32::try_from(attempt).unwrap_or(0),
            result: step.try_get("result")?,
            error: step.try_get("error")?,
            started_at: at("started_at")?,
            finished_at: at("finished_at")?,
        })
    })
    .collect::<Result<Vec<_>, Error>>()?;
    Ok(Some(ExecutionView {
        execution_id: execution_id(&row)?,
        shard,
        status: status(&row)?,
        playbook_name: row.try_get("playbook_name")?,
        playbook_version: playbook_version(&row)?,
        input: row.try_get("input")?,
        labels,
        created_at: rfc3339(row.try_get("created_at")?)?,
        updated_at: rfc3339(row.try_get("updated_at")?)?,
        steps,
    }))
}

fn execution_id(row: &sqlx::postgres::PgRow) -> Result<ExecutionId, Error> {
    let raw: i64 = row.try_get("execution_id")?;
    ExecutionId::new(raw).map_err(|e| Error::Malformed(e.to_string()))
}

fn playbook_version(row: &sqlx::postgres::PgRow) -> Result<Option<u32>, Error> {
    let raw: Option<i32> = row.try_get("playbook_version")?;
    Ok(raw.and_then(|v| u32::try_from(v).ok()))
}

/// A page of executions, newest first: one range scan of the primary key (or of the index of
/// the filtered column) below `query.below`, at most `query.limit` rows.
pub async fn list_executions(
    pool: &PgPool,
    shard: ShardId,
    query: &ListQuery,
) -> Result<Vec<ExecutionSummary>, Error> {
    let labels = (!query.labels.is_empty())
        .then(|| serde_json::to_string(&query.labels))
        .transpose()
        .map_err(|e| Error::Malformed(e.to_string()))?;
    let rows = sqlx::query(
        "SELECT execution_id, status, playbook_name, playbook_version, labels, created_at,
                updated_at
         FROM executions
         WHERE ($1::bigint IS NULL OR execution_id < $1)
           AND ($2::bigint IS NULL OR execution_id >= $2)
           AND ($3::text IS NULL OR status = $3)
           AND ($4::jsonb IS NULL OR labels @> $4::jsonb)
           AND ($5::text IS NULL OR playbook_name = $5)
           AND ($7::text IS NULL OR tenant = $7)
         ORDER BY execution_id DESC
         LIMIT $6",
    )
    .bind(query.below.map(ExecutionId::get))
    .bind(query.from.map(ExecutionId::get))
    .bind(query.status.map(ExecutionStatus::as_str))
    .bind(labels)
    .bind(query.playbook.as_deref())
    .bind(i64::from(query.limit))
    .bind(query.tenant.as_deref())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let sqlx::types::Json(labels): sqlx::types::Json<Labels> = row.try_get("labels")?;
            Ok(ExecutionSummary {
                execution_id: execution_id(row)?,
                shard,
                status: status(row)?,
                playbook_name: row.try_get("playbook_name")?,
                playbook_version: playbook_version(row)?,
                labels,
                created_at: rfc3339(row.try_get("created_at")?)?,
                updated_at: rfc3339(row.try_get("updated_at")?)?,
            })
        })
        .collect()
}

fn status(row: &sqlx::postgres::PgRow) -> Result<ExecutionStatus, Error> {
    let raw: String = row.try_get("status")?;
    ExecutionStatus::parse(&raw).ok_or_else(|| Error::Malformed(format!("status {raw:?}")))
}

fn rfc3339(at: OffsetDateTime) -> Result<String, Error> {
    at.format(&Rfc3339)
        .map_err(|e| Error::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use noetl_contract::shards::ShardMap;
    use noetl_test_support::Postgres;
    use sqlx::PgConnection;

    use super::*;

    /// A fresh database on `pg`, as the DSN of a one-shard map.
    fn shard_dsn(pg: &Postgres, database: &str) -> ShardDsn {
        pg.create_database(database);
        let map = ShardMap::parse(&pg.url(database)).expect("valid DSN");
        map.get(ShardId::new(0)).expect("one shard").clone()
    }

    /// A fresh, migrated shard database on `pg`: its DSN and a pool of two connections.
    async fn migrated_shard(pg: &Postgres, database: &str) -> (ShardDsn, PgPool) {
        let dsn = shard_dsn(pg, database);
        let pool = pool(&dsn, 2).expect("pool");
        migrate(&pool).await.expect("migrate");
        (dsn, pool)
    }

    /// A held connection is the same backend at every use (no checkout, so no ping on release),
    /// and one the database ended is given up after the statement that failed on it: the next
    /// use has another.
    #[tokio::test]
    async fn a_held_connection_is_kept_and_replaced_once_it_broke() {
        let pg = Postgres::start();
        let (_, pool) = migrated_shard(&pg, "held").await;
        let mut held = Held::new(pool.clone());
        async fn backend(held: &mut Held) -> Result<i32, Error> {
            let connection = held.connection().await?;
            let pid = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(connection)
                .await;
            held.checked(pid.map_err(Error::from))
        }
        let first = backend(&mut held).await.expect("first use");
        assert_eq!(backend(&mut held).await.expect("second use"), first);
        let in_use = pool.size() as usize - pool.num_idle();
        assert_eq!(in_use, 1, "the held connection never went back to the pool");

        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 10000)")
            .bind(first)
            .fetch_one(&pool)
            .await
            .expect("terminate");
        assert!(ended);
        assert!(backend(&mut held).await.is_err(), "its backend is gone");
        let next = backend(&mut held).await.expect("a new connection");
        assert_ne!(next, first);
    }

    /// The heartbeat statement goes by the primary key even when the statistics say no step is
    /// in flight (gathered at an idle moment) while thousands are: the partial lease index, which
    /// such statistics make look empty, would be walked whole for every beat.
    #[tokio::test]
    async fn heartbeats_find_their_steps_by_primary_key_whatever_the_statistics_say() {
        let pg = Postgres::start();
        let (dsn, pool) = migrated_shard(&pg, "plans").await;
        let steps = |status: &'static str, from: i64| {
            sqlx::query(
                "INSERT INTO execution_steps (execution_id, step_index, name, status, attempt,
                                              lease_expires_at)
                 SELECT id, 0, 'only', $2, 1, now() + interval '1 minute'
                 FROM generate_series($1, $1 + 4999) AS id",
            )
            .bind(from)
            .bind(status)
        };
        steps("succeeded", 1)
            .execute(&pool)
            .await
            .expect("finished steps");
        sqlx::query("ANALYZE execution_steps")
            .execute(&pool)
            .await
            .expect("analyze");
        steps("dispatched", 10_001)
            .execute(&pool)
            .await
            .expect("steps in flight");

        // Planned as the heartbeats' own pool plans it.
        let relaxed = relaxed_pool(&dsn, 1).expect("pool");
        let mut connection = relaxed.acquire().await.expect("connection");
        sqlx::raw_sql(&format!(
            "PREPARE beat(bigint[], int[], int[], bigint, text[], bool[], bigint[]) AS \
             {BEAT_ATTEMPTS}"
        ))
        .execute(&mut *connection)
        .await
        .expect("prepare");
        let plan: Vec<String> = sqlx::query_scalar(
            "EXPLAIN (FORMAT TEXT) EXECUTE beat('{10001,10002}', '{0,0}', '{1,1}', 1000,
                                                '{dispatched,running}', '{false,true}',
                                                '{1,NULL}')",
        )
        .fetch_all(&mut *connection)
        .await
        .expect("explain");
        let plan = plan.join("\n");
        assert!(plan.contains("execution_steps_pkey"), "{plan}");
        assert!(!plan.contains("in_flight_leases"), "{plan}");

        drop(connection);
        let touched = beat_attempts(
            &relaxed,
            &[Beat {
                execution_id: ExecutionId::new(10_001).expect("valid id"),
                step: 0,
                attempt: 1,
                starting: false,
                started_at_ms: None,
            }],
            1_000,
        )
        .await
        .expect("heartbeat");
        assert_eq!(touched, vec![Some(StepStatus::Dispatched)]);
    }

    /// The outbox's deletes run their locking subquery once, and find rows through the
    /// primary key, in plans made while the statistics said the outbox was empty (a vacuum of
    /// an empty outbox, then a server's first handoff or pass), also after the outbox grew.
    #[tokio::test]
    async fn outbox_deletes_planned_on_an_empty_outbox_stay_linear_once_it_is_large() {
        let pg = Postgres::start();
        let (dsn, pool) = migrated_shard(&pg, "grown").await;
        let fill = "INSERT INTO outbox (execution_id, pool, command)
                    SELECT id, 'default', '{}' FROM generate_series(1, 20000) AS id";
        sqlx::query(fill).execute(&pool).await.expect("fill");
        sqlx::query("DELETE FROM outbox")
            .execute(&pool)
            .await
            .expect("empty");
        sqlx::query("VACUUM ANALYZE outbox")
            .execute(&pool)
            .await
            .expect("vacuum");
        let relaxed = relaxed_pool(&dsn, 1).expect("pool");
        let mut connection = relaxed.acquire().await.expect("connection");
        let statements = [
            ("handoff(bigint[])", DELETE_COMMANDS, "handoff('{1,2}')"),
            ("pass(bigint)", TAKE_DUE_COMMANDS, "pass(512)"),
        ];
        for (signature, statement, _) in statements {
            sqlx::raw_sql(&format!("PREPARE {signature} AS {statement}"))
                .execute(&mut *connection)
                .await
                .expect("prepare");
        }
        let mut plans = Vec::new();
        for grown in [false, true] {
            if grown {
                sqlx::query(fill).execute(&pool).await.expect("refill");
            }
            for (_, _, execute) in statements {
                let explain = format!("EXPLAIN (FORMAT TEXT) EXECUTE {execute}");
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

    /// The plan `explain` prints, one string.
    async fn explained(connection: &mut PgConnection, explain: &str) -> String {
        let lines: Vec<String> = sqlx::query_scalar(explain)
            .fetch_all(connection)
            .await
            .expect("explain");
        lines.join("\n")
    }

    #[tokio::test]
    async fn generic_planning_lasts_only_for_its_transaction() {
        let pg = Postgres::start();
        let pool = pool(&shard_dsn(&pg, "generic"), 1).expect("pool");
        let settings =
            "SELECT current_setting('plan_cache_mode') || ' ' || current_setting('enable_seqscan')";
        let mut tx = begin_generic(&pool).await.expect("begin");
        let inside: String = sqlx::query_scalar(settings)
            .fetch_one(&mut *tx)
            .await
            .expect("inside");
        tx.commit().await.expect("commit");
        // The pool has one connection: this is the same one, back in the pool.
        let after: String = sqlx::query_scalar(settings)
            .fetch_one(&pool)
            .await
            .expect("after");
        assert_eq!(
            (inside.as_str(), after.as_str()),
            ("force_generic_plan off", "auto on")
        );
    }
}
