//! The invariants, read straight from the shard databases and the client's log.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use noetl_contract::{shard_of, ExecutionId, ShardCount, ShardId};
use serde::Serialize;
use sqlx::PgPool;

use crate::load::{Ack, KEY_LABEL};

const TERMINAL: &str = "('succeeded', 'failed', 'cancelled')";

/// Counts over the whole history of the run; a fault's share is the growth across it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Duplicates {
    /// Executions with more than one terminal event.
    pub terminal_twice: u64,
    /// (execution, step, attempt) with more than one recorded outcome.
    pub result_twice: u64,
    /// Idempotency keys with more than one execution in the databases, or given to the client
    /// with two different ids.
    pub key_twice: u64,
    /// Parents with more than one child ([`crate::children::Family::duplicated`]).
    pub children_twice: u64,
    /// Loop items whose success was recorded twice ([`crate::loops::Loops::duplicated`]).
    pub items_twice: u64,
}

impl Duplicates {
    pub fn total(self) -> u64 {
        self.terminal_twice
            + self.result_twice
            + self.key_twice
            + self.children_twice
            + self.items_twice
    }
}

pub async fn duplicates(
    pools: &[PgPool],
    keys_answered_twice: usize,
) -> anyhow::Result<Duplicates> {
    let mut found = Duplicates::default();
    let mut keys: HashMap<String, u64> = HashMap::new();
    for pool in pools {
        let terminal: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT execution_id FROM execution_events
               WHERE kind IN ('execution_succeeded', 'execution_failed', 'execution_cancelled')
               GROUP BY execution_id HAVING count(*) > 1) twice",
        )
        .fetch_one(pool)
        .await
        .context("failed to count terminal events")?;
        let results: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM execution_events
               WHERE kind IN ('step_succeeded', 'step_attempt_failed', 'step_failed')
               GROUP BY execution_id, payload->>'step', payload->>'attempt'
               HAVING count(*) > 1) twice",
        )
        .fetch_one(pool)
        .await
        .context("failed to count step results")?;
        let shard_keys: Vec<String> =
            sqlx::query_scalar("SELECT labels->>$1 FROM executions WHERE labels ? $1")
                .bind(KEY_LABEL)
                .fetch_all(pool)
                .await
                .context("failed to read idempotency keys")?;
        found.terminal_twice += u64::try_from(terminal).unwrap_or_default();
        found.result_twice += u64::try_from(results).unwrap_or_default();
        for key in shard_keys {
            *keys.entry(key).or_default() += 1;
        }
    }
    found.key_twice = keys.values().filter(|n| **n > 1).count() as u64 + keys_answered_twice as u64;
    Ok(found)
}

/// Rows (executions, outbox commands) in a database other than the one `route(id)` names.
/// The chaos cluster has one topology epoch, so `route(id)` is `shard_of(id, N)`.
pub async fn misrouted(pools: &[PgPool], count: ShardCount) -> anyhow::Result<u64> {
    let mut misrouted = 0;
    for (shard, pool) in count.shards().zip(pools) {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT execution_id FROM executions UNION ALL SELECT execution_id FROM outbox",
        )
        .fetch_all(pool)
        .await
        .context("failed to read execution ids")?;
        misrouted += ids
            .into_iter()
            .filter(|raw| ExecutionId::new(*raw).map_or(true, |id| shard_of(id, count) != shard))
            .count() as u64;
    }
    Ok(misrouted)
}

/// Executions minted before `before` (an id bound) that have not ended yet.
pub async fn unfinished_before(pools: &[PgPool], before: i64) -> anyhow::Result<u64> {
    let mut unfinished = 0;
    for pool in pools {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM executions WHERE execution_id < $1 AND status NOT IN {TERMINAL}"
        ))
        .bind(before)
        .fetch_one(pool)
        .await
        .context("failed to count unfinished executions")?;
        unfinished += u64::try_from(n).unwrap_or_default();
    }
    Ok(unfinished)
}

/// Of the executions the client was told about, those not terminal in their shard (missing,
/// or still running), and how many of the rest ended `failed`.
pub async fn lost(
    pools: &[PgPool],
    count: ShardCount,
    acks: &[Ack],
) -> anyhow::Result<(Vec<ExecutionId>, u64)> {
    let mut by_shard: HashMap<ShardId, HashSet<i64>> = HashMap::new();
    for ack in acks {
        by_shard
            .entry(shard_of(ack.execution_id, count))
            .or_default()
            .insert(ack.execution_id.get());
    }
    let mut lost = Vec::new();
    let mut failed = 0;
    for (shard, pool) in count.shards().zip(pools) {
        let Some(ids) = by_shard.get(&shard) else {
            continue;
        };
        let wanted: Vec<i64> = ids.iter().copied().collect();
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT execution_id, status FROM executions WHERE execution_id = ANY($1)",
        )
        .bind(&wanted)
        .fetch_all(pool)
        .await
        .context("failed to read execution states")?;
        let status: HashMap<i64, String> = rows.into_iter().collect();
        for id in wanted {
            match status.get(&id).map(String::as_str) {
                Some("succeeded" | "cancelled") => {}
                Some("failed") => failed += 1,
                _ => lost.extend(ExecutionId::new(id).ok()),
            }
        }
    }
    Ok((lost, failed))
}
