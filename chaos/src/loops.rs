//! The invariants of the loops ([`Shape::Looped`]), read from the shard databases: no item's
//! result recorded twice, and a loop that succeeded holds one result per item, in a list.

use std::collections::HashMap;

use anyhow::Context;
use noetl_contract::{shard_of, ExecutionId, ShardCount, ShardId};
use sqlx::PgPool;

use crate::load::{Ack, Shape, LOOP_ITEMS, LOOP_STEP};

/// What the check of the looped executions found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loops {
    /// Looped executions that succeeded without one result per item.
    pub lost: Vec<ExecutionId>,
    /// Items whose success was recorded more than once.
    pub duplicated: u64,
}

pub async fn check(pools: &[PgPool], count: ShardCount, acks: &[Ack]) -> anyhow::Result<Loops> {
    let mut looped: HashMap<ShardId, Vec<i64>> = HashMap::new();
    for ack in acks.iter().filter(|a| a.shape == Shape::Looped) {
        looped
            .entry(shard_of(ack.execution_id, count))
            .or_default()
            .push(ack.execution_id.get());
    }
    let mut found = Loops::default();
    for (shard, pool) in count.shards().zip(pools) {
        let ids = looped.get(&shard).cloned().unwrap_or_default();
        if ids.is_empty() {
            continue;
        }
        let twice: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM execution_events
               WHERE execution_id = ANY($1) AND kind = 'item_succeeded'
               GROUP BY execution_id, payload->>'step', payload->>'item'
              HAVING count(*) > 1) AS twice",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await
        .context("failed to count the items recorded twice")?;
        found.duplicated += u64::try_from(twice).unwrap_or_default();
        let short: Vec<i64> = sqlx::query_scalar(
            "SELECT e.execution_id FROM executions e
               JOIN execution_steps s ON s.execution_id = e.execution_id AND s.name = $2
              WHERE e.execution_id = ANY($1) AND e.status = 'succeeded'
                AND CASE WHEN jsonb_typeof(s.result) = 'array'
                         THEN jsonb_array_length(s.result) <> $3 ELSE true END",
        )
        .bind(&ids)
        .bind(LOOP_STEP)
        .bind(i32::try_from(LOOP_ITEMS).unwrap_or(i32::MAX))
        .fetch_all(pool)
        .await
        .context("failed to read the loops' results")?;
        found
            .lost
            .extend(short.into_iter().filter_map(|id| ExecutionId::new(id).ok()));
    }
    Ok(found)
}
