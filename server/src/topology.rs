//! Accepting topology documents (wiki/spec.md §3.3): every document the bucket offers is checked
//! against the epochs recorded in the served shard databases before the shards route with it.
//!
//! A document that drops or rewrites an epoch already in force is refused loudly (error log,
//! `noetl_server_topology_rejected_total`, `/readyz` false) and the shards keep the last
//! accepted one; an accepted document's epochs are recorded in every served database first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use noetl_contract::topology::Epoch;
use noetl_contract::Topology;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::persistence;

const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What the shards route with, and whether the latest offered document was refused.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub topology: watch::Receiver<Option<Topology>>,
    rejected: Arc<AtomicBool>,
}

impl Accepted {
    /// Whether the bucket holds a document this server refused.
    pub fn rejected(&self) -> bool {
        self.rejected.load(Ordering::Acquire)
    }
}

/// Checks every document `offered` against the databases in `pools` until `cancel`.
pub fn accept(
    mut offered: watch::Receiver<Option<Topology>>,
    pools: Vec<PgPool>,
    cancel: CancellationToken,
) -> Accepted {
    let (sender, topology) = watch::channel(None);
    let rejected = Arc::new(AtomicBool::new(false));
    let flag = rejected.clone();
    tokio::spawn(async move {
        loop {
            let document = offered.borrow_and_update().clone();
            if let Some(document) = document {
                // A database that does not answer is retried: a document is never accepted
                // unchecked.
                loop {
                    match check_and_record(&document, &pools).await {
                        Ok(None) => {
                            flag.store(false, Ordering::Release);
                            metrics::gauge!("noetl_topology_epoch")
                                .set(document.latest().epoch as f64);
                            sender.send_replace(Some(document));
                            break;
                        }
                        Ok(Some(seen)) => {
                            flag.store(true, Ordering::Release);
                            metrics::counter!("noetl_server_topology_rejected_total").increment(1);
                            tracing::error!(
                                epoch = seen.epoch,
                                recorded_activate_at_ms = seen.activate_at_ms,
                                recorded_shard_count = %seen.shard_count,
                                "refusing a topology document that drops or rewrites an epoch already in force; \
                                 routing stays on the last accepted topology until the document is repaired"
                            );
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "failed to check the topology against the shard databases; retrying");
                        }
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(RETRY_DELAY) => {}
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = offered.changed() => if changed.is_err() { return },
            }
        }
    });
    Accepted { topology, rejected }
}

/// `Some(epoch)` when `document` rewrites an in-force epoch recorded in one of the databases;
/// otherwise records its epochs everywhere and returns `None`.
async fn check_and_record(
    document: &Topology,
    pools: &[PgPool],
) -> Result<Option<Epoch>, persistence::Error> {
    let now_ms = noetl_bus::unix_now_ms();
    for pool in pools {
        let recorded = persistence::recorded_epochs(pool).await?;
        if let Some(seen) = document.rewritten_epoch(&recorded, now_ms) {
            return Ok(Some(seen));
        }
    }
    for pool in pools {
        persistence::record_epochs(pool, document.epochs(), now_ms).await?;
    }
    Ok(None)
}
