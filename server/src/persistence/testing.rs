//! What the unit tests of the server share: fresh shard databases and outbox rows.

use noetl_contract::command::StepCommand;
use noetl_contract::shards::{ShardDsn, ShardMap};
use noetl_contract::step::{Attempt, StepIndex};
use noetl_contract::{ExecutionId, ShardId};
use noetl_test_support::Postgres;
use sqlx::PgPool;

use super::{migrate, pool, OutboxRow};

/// A fresh database on `pg`, as the DSN of a one-shard map.
pub fn shard_dsn(pg: &Postgres, database: &str) -> ShardDsn {
    pg.create_database(database);
    let map = ShardMap::parse(&pg.url(database)).expect("valid DSN");
    map.get(ShardId::new(0)).expect("one shard").clone()
}

/// A fresh, migrated shard database on `pg`: its DSN and a pool of two connections.
pub async fn migrated_shard(pg: &Postgres, database: &str) -> (ShardDsn, PgPool) {
    let dsn = shard_dsn(pg, database);
    let pool = pool(&dsn, 2).expect("pool");
    migrate(&pool).await.expect("migrate");
    (dsn, pool)
}

/// The first attempt of step `step` of execution `execution`, after `delay_ms`.
pub fn outbox_row(execution: i64, step: u32, delay_ms: i64) -> OutboxRow {
    OutboxRow {
        pool: "default".to_owned(),
        command: StepCommand {
            execution_id: ExecutionId::new(execution).expect("valid id"),
            shard: ShardId::new(0),
            step_index: StepIndex::new(step),
            step: format!("s{step}"),
            attempt: Attempt::FIRST,
            action: "noop".to_owned(),
            with: serde_json::json!({}),
            timeout_ms: 1_000,
            lease_ms: 1_000,
        },
        delay_ms,
    }
}
