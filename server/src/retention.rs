//! The retention purge: on a timer, each shard deletes its terminal executions older than
//! their tenant's retention, in batches of one transaction each, so no pass holds many locks
//! or a long transaction. Replicas of a shard purge side by side: a batch skips the rows
//! another holds (`FOR UPDATE SKIP LOCKED`).

use std::collections::BTreeMap;
use std::time::Duration;

use noetl_contract::ShardId;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::persistence::{self, Tenants};

/// How long terminal executions are kept, and how the purge goes about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// `retention_ms`: for every tenant without one of its own.
    pub default: Duration,
    /// `tenant_retention_ms`: per tenant.
    pub tenants: BTreeMap<String, Duration>,
    /// `retention_interval_ms`: the pause between two passes.
    pub interval: Duration,
    /// `retention_batch`: executions deleted per transaction.
    pub batch: i64,
}

/// Purges `pool` (shard `shard`) every `retention.interval` until `cancel`.
pub async fn run(shard: ShardId, pool: PgPool, retention: Retention, cancel: CancellationToken) {
    let others: Vec<String> = retention.tenants.keys().cloned().collect();
    loop {
        for (tenant, age) in &retention.tenants {
            drain(
                shard,
                &pool,
                Tenants::One(tenant),
                *age,
                &retention,
                &cancel,
            )
            .await;
        }
        let all_but = Tenants::AllBut(&others);
        drain(
            shard,
            &pool,
            all_but,
            retention.default,
            &retention,
            &cancel,
        )
        .await;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(retention.interval) => {}
        }
    }
}

/// Deletes batches until one comes back short (nothing older is left, or the rest is held).
async fn drain(
    shard: ShardId,
    pool: &PgPool,
    tenants: Tenants<'_>,
    age: Duration,
    retention: &Retention,
    cancel: &CancellationToken,
) {
    while !cancel.is_cancelled() {
        let started = std::time::Instant::now();
        match persistence::purge_batch(pool, tenants, age, retention.batch).await {
            Ok(purged) => {
                metrics::counter!("noetl_server_executions_purged_total", "shard" => shard.to_string())
                    .increment(purged);
                metrics::histogram!("noetl_server_purge_batch_seconds", "shard" => shard.to_string())
                    .record(started.elapsed().as_secs_f64());
                if purged > 0 {
                    tracing::debug!(%shard, purged, "purged executions past their retention");
                }
                if i64::try_from(purged).unwrap_or(i64::MAX) < retention.batch {
                    return;
                }
            }
            Err(e) => {
                // The next pass tries again.
                tracing::warn!(%shard, error = %e, "the retention purge failed");
                return;
            }
        }
    }
}
