//! Listing across shards: first-page latency of `GET /api/v1/executions` while every shard
//! holds many executions.
//!
//! The executions are loaded straight into the shard databases (ids minted over the past days,
//! each in the database `shard_of` names), in chunks of one `INSERT … SELECT FROM UNNEST`, not
//! through the API: what is measured is the listing, not the loading.

use std::time::{Duration, Instant};

use anyhow::Context;
use noetl_contract::{shard_of, ExecutionId, IdGenerator, NodeId, ShardCount};
use serde::Serialize;
use sqlx::PgPool;

use crate::{load, Phase};

const CHUNK: usize = 50_000;

#[derive(Debug, Serialize)]
pub struct ListReport {
    pub rows_per_shard: usize,
    pub load_seconds: f64,
    pub phases: Vec<Phase>,
}

/// Stores about `per_shard × shards` executions: 1% failed, the rest succeeded. Their ids carry
/// `node`, so loads with different nodes never collide.
pub async fn bulk_load(pools: &[PgPool], per_shard: usize, node: u32) -> anyhow::Result<()> {
    let count = ShardCount::new(u32::try_from(pools.len())?)?;
    let total = per_shard * pools.len();
    let mut generator = IdGenerator::new(NodeId::try_from(node)?);
    // One id every 10 ms, ending a minute ago.
    let start = noetl_bus::unix_now_ms() - 60_000 - total as i64 * 10;
    let mut by_shard: Vec<Vec<i64>> =
        vec![Vec::with_capacity(per_shard + per_shard / 10); pools.len()];
    for i in 0..total {
        let id: ExecutionId = generator.next_id(start + i as i64 * 10)?;
        by_shard[shard_of(id, count).get() as usize].push(id.get());
    }
    for (pool, ids) in pools.iter().zip(by_shard) {
        for chunk in ids.chunks(CHUNK) {
            sqlx::query(
                "INSERT INTO executions (execution_id, playbook_name, playbook, status, labels)
                 SELECT id, 'bulk', '{}'::jsonb,
                        CASE WHEN n % 100 = 0 THEN 'failed' ELSE 'succeeded' END,
                        '{}'::jsonb
                 FROM UNNEST($1::bigint[]) WITH ORDINALITY AS t(id, n)",
            )
            .bind(chunk)
            .execute(pool)
            .await
            .context("bulk insert")?;
        }
    }
    settle(pools).await
}

/// Brings the shards to the state a shard that grew over months would be in: vacuumed and
/// analysed (autovacuum would have done it as the rows arrived; after a bulk load it would
/// instead scan millions of rows during the next measurement), with a checkpoint behind it (the
/// load's WAL would otherwise trigger one mid-measurement, and full-page images after it).
/// Growth settles its empty checkpoint too, so every checkpoint starts from the same state.
pub async fn settle(pools: &[PgPool]) -> anyhow::Result<()> {
    for pool in pools {
        sqlx::raw_sql("VACUUM (ANALYZE) executions, execution_steps, execution_events, outbox")
            .execute(pool)
            .await
            .context("vacuum before measuring")?;
        sqlx::raw_sql("CHECKPOINT")
            .execute(pool)
            .await
            .context("checkpoint before measuring")?;
    }
    Ok(())
}

/// Loads the shards, then measures first pages (unfiltered, and filtered by a rare status).
pub async fn run(
    http: &reqwest::Client,
    gateway: &str,
    pools: &[PgPool],
    per_shard: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<ListReport> {
    eprintln!(
        "loading {per_shard} executions into each of {} shards…",
        pools.len()
    );
    let started = Instant::now();
    bulk_load(pools, per_shard, 1_001).await?;
    let load_seconds = started.elapsed().as_secs_f64();
    let mut phases = Vec::new();
    for (name, query) in [
        ("list first page (limit 100)", "limit=100"),
        ("list first page, status=failed", "limit=100&status=failed"),
    ] {
        eprintln!("measuring {name} for {} s…", duration.as_secs());
        let url = format!("{gateway}/api/v1/executions?{query}");
        let http = http.clone();
        phases.push(
            load(name, concurrency, duration, None, move || {
                let request = http.get(&url);
                async move {
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {
                            r.json::<serde_json::Value>().await.is_ok_and(|body| {
                                body["partial"] == false
                                    && body["executions"]
                                        .as_array()
                                        .is_some_and(|e| e.len() == 100)
                            })
                        }
                        _ => false,
                    }
                }
            })
            .await,
        );
    }
    Ok(ListReport {
        rows_per_shard: per_shard,
        load_seconds,
        phases,
    })
}
