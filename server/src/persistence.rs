//! Every query the server runs against a shard database, and nothing else.

use std::time::Duration;

use noetl_contract::message::{ExecutionStatus, ExecutionView, Labels};
use noetl_contract::shards::ShardDsn;
use noetl_contract::{ExecutionId, ShardId};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool for one shard database. Connections are opened lazily, so an unreachable database
/// surfaces on first use rather than here.
pub fn pool(dsn: &ShardDsn, size: u32) -> Result<PgPool, Error> {
    // Only NOETL_SHARDS decides where a shard lives: no ~/.pgpass lookup for another host.
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(&dsn.host)
        .port(dsn.port)
        .username(&dsn.user)
        .database(&dsn.database)
        .application_name("noetl-server");
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
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
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

/// Whether the database answers a trivial query within two seconds.
pub async fn ping(pool: &PgPool) -> bool {
    let query = sqlx::query("SELECT 1").execute(pool);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), query).await,
        Ok(Ok(_))
    )
}

/// A new execution, with its JSON columns already serialised.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub execution_id: ExecutionId,
    pub playbook_name: String,
    pub playbook: String,
    pub input: String,
    pub labels: String,
}

/// The outcome of committing one execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub execution_id: ExecutionId,
    pub status: ExecutionStatus,
    pub created_at: String,
    /// `false` when the id was committed before (a retried submit).
    pub created: bool,
}

/// Commits many executions and their first event in one statement, so one transaction (and one
/// WAL flush) covers the whole batch. Ids that already exist are left untouched and reported
/// with `created: false`. `rows` must not repeat an id.
pub async fn insert_executions(
    pool: &PgPool,
    rows: &[NewExecution],
) -> Result<Vec<Committed>, Error> {
    let ids: Vec<i64> = rows.iter().map(|r| r.execution_id.get()).collect();
    let inserted = sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
                 AS t(execution_id, playbook_name, playbook, input, labels)
         ), inserted AS (
             INSERT INTO executions (execution_id, playbook_name, playbook, input, labels)
             SELECT execution_id, playbook_name, playbook::jsonb, input::jsonb, labels::jsonb
             FROM input
             ON CONFLICT (execution_id) DO NOTHING
             RETURNING execution_id, status, created_at
         ), first_events AS (
             INSERT INTO execution_events (execution_id, seq, kind, payload)
             SELECT execution_id, 1, 'execution_created', jsonb_build_object('status', status)
             FROM inserted
         )
         SELECT execution_id, status, created_at FROM inserted",
    )
    .bind(&ids)
    .bind(
        rows.iter()
            .map(|r| r.playbook_name.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.playbook.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.input.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.labels.as_str()).collect::<Vec<_>>())
    .fetch_all(pool)
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
        .fetch_all(pool)
        .await?;
        for row in &existing {
            committed.push(committed_from_row(row, false)?);
        }
    }
    Ok(committed)
}

fn committed_from_row(row: &sqlx::postgres::PgRow, created: bool) -> Result<Committed, Error> {
    Ok(Committed {
        execution_id: execution_id(row)?,
        status: status(row)?,
        created_at: rfc3339(row.try_get("created_at")?)?,
        created,
    })
}

/// Reads one execution.
pub async fn get_execution(
    pool: &PgPool,
    shard: ShardId,
    id: ExecutionId,
) -> Result<Option<ExecutionView>, Error> {
    let row = sqlx::query(
        "SELECT execution_id, status, playbook_name, input, labels, created_at, updated_at
         FROM executions WHERE execution_id = $1",
    )
    .bind(id.get())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let sqlx::types::Json(labels): sqlx::types::Json<Labels> = row.try_get("labels")?;
    Ok(Some(ExecutionView {
        execution_id: execution_id(&row)?,
        shard,
        status: status(&row)?,
        playbook_name: row.try_get("playbook_name")?,
        input: row.try_get("input")?,
        labels,
        created_at: rfc3339(row.try_get("created_at")?)?,
        updated_at: rfc3339(row.try_get("updated_at")?)?,
    }))
}

fn execution_id(row: &sqlx::postgres::PgRow) -> Result<ExecutionId, Error> {
    let raw: i64 = row.try_get("execution_id")?;
    ExecutionId::new(raw).map_err(|e| Error::Malformed(e.to_string()))
}

fn status(row: &sqlx::postgres::PgRow) -> Result<ExecutionStatus, Error> {
    let raw: String = row.try_get("status")?;
    ExecutionStatus::parse(&raw).ok_or_else(|| Error::Malformed(format!("status {raw:?}")))
}

fn rfc3339(at: OffsetDateTime) -> Result<String, Error> {
    at.format(&Rfc3339)
        .map_err(|e| Error::Malformed(e.to_string()))
}
