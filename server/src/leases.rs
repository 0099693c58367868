//! The lease scanner of one shard: an in-flight attempt whose lease ran out is presumed lost
//! (its worker died, or its command never arrived) and handed back to the engine, which retries
//! it within the step's budget or fails the step. Every few scans it also samples the shard's
//! backlog gauges (outbox, pending commands).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::orchestrate::Orchestrator;
use crate::persistence;

const SCAN_EVERY: Duration = Duration::from_millis(500);
const SCAN_LIMIT: i64 = 256;
/// Scans between two samples of the backlog gauges.
const SAMPLE_EVERY_SCANS: u32 = 10;

/// Scans until `cancel`.
pub async fn run(orchestrator: Orchestrator, cancel: CancellationToken) {
    let shard = orchestrator.shard();
    for scan in 0_u32.. {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(SCAN_EVERY) => {}
        }
        if scan % SAMPLE_EVERY_SCANS == 0 {
            sample_backlog(&orchestrator).await;
        }
        let pool = orchestrator.pool();
        let scanned = async {
            let mut expired: Vec<_> = persistence::expired_leases(pool, SCAN_LIMIT)
                .await?
                .into_iter()
                .map(|(id, step, attempt)| (id, step, attempt, None))
                .collect();
            let items = persistence::expired_item_leases(pool, SCAN_LIMIT).await?;
            expired.extend(
                items
                    .into_iter()
                    .map(|(id, step, attempt, item)| (id, step, attempt, Some(item))),
            );
            Ok::<_, persistence::Error>(expired)
        };
        let expired = match scanned.await {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!(%shard, error = %e, "lease scan failed");
                continue;
            }
        };
        for (id, step, attempt, item) in expired {
            match orchestrator.expire(id, step, attempt, item).await {
                Ok(crate::orchestrate::Applied::Changed(_)) => {
                    tracing::info!(%shard, execution_id = %id, step = step.get(), attempt = attempt.get(), ?item, "lease expired");
                    metrics::counter!("noetl_server_lease_expiries_total", "shard" => shard.to_string())
                        .increment(1);
                }
                // The attempt reported or was superseded between the scan and the lock.
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%shard, execution_id = %id, error = %e, "applying a lease expiry failed")
                }
            }
        }
    }
}

async fn sample_backlog(orchestrator: &Orchestrator) {
    let shard = orchestrator.shard().to_string();
    match persistence::backlog(orchestrator.pool()).await {
        Ok((outbox, pending)) => {
            metrics::gauge!("noetl_server_outbox_backlog", "shard" => shard.clone())
                .set(outbox as f64);
            metrics::gauge!("noetl_server_pending_commands", "shard" => shard).set(pending as f64);
        }
        Err(e) => tracing::warn!(%shard, error = %e, "sampling the backlog failed"),
    }
}
