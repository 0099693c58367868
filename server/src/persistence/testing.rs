//! What the unit tests of the server share: fresh shard databases and outbox rows.

use noetl_contract::command::StepCommand;
use noetl_contract::shards::{ShardDsn, ShardMap};
use noetl_contract::step::{Attempt, StepIndex};
use noetl_contract::{ExecutionId, ShardId};
use noetl_test_support::Postgres;
use sqlx::{PgConnection, PgExecutor, PgPool};

use super::{migrate, pool, OutboxRow};

/// A migrated shard database on a PostgreSQL of its own, stopped when this is dropped.
pub struct TestShard {
    pub dsn: ShardDsn,
    pub pool: PgPool,
    _postgres: Postgres,
}

impl TestShard {
    /// With a pool of `connections` (fewer than a test uses blocks it).
    pub async fn start(connections: u32) -> Self {
        let postgres = Postgres::start();
        postgres.create_database("shard");
        let map = ShardMap::parse(&postgres.url("shard")).expect("valid DSN");
        let dsn = map.get(ShardId::new(0)).expect("one shard").clone();
        let pool = pool(&dsn, connections).expect("pool");
        migrate(&pool).await.expect("migrate");
        Self {
            dsn,
            pool,
            _postgres: postgres,
        }
    }
}

/// Runs `statements` (no parameters), as a test sets its database up.
pub async fn execute<'a>(executor: impl PgExecutor<'a>, statements: &'a str) {
    sqlx::raw_sql(statements)
        .execute(executor)
        .await
        .unwrap_or_else(|e| panic!("{statements}: {e}"));
}

/// The plan `explain` (an `EXPLAIN` statement) prints, as one string.
pub async fn explained(connection: &mut PgConnection, explain: &str) -> String {
    let lines: Vec<String> = sqlx::query_scalar(explain)
        .fetch_all(connection)
        .await
        .unwrap_or_else(|e| panic!("{explain}: {e}"));
    lines.join("\n")
}

/// The first attempt of step `step` of execution `execution`, after `delay_ms`.
pub fn outbox_row(execution: i64, step: u32, delay_ms: i64) -> OutboxRow {
    OutboxRow {
        pool: "default".to_owned(),
        command: super::Outgoing::Step(StepCommand {
            execution_id: ExecutionId::new(execution).expect("valid id"),
            shard: ShardId::new(0),
            step_index: StepIndex::new(step),
            step: format!("s{step}"),
            attempt: Attempt::FIRST,
            action: "noop".to_owned(),
            with: serde_json::json!({}),
            timeout_ms: 1_000,
            lease_ms: 1_000,
            token: None,
        }),
        delay_ms,
    }
}
