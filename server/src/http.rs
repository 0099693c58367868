//! The server's readiness: NATS connected, an accepted topology (none refused since), every
//! served shard subscribed, and every served shard's database committing a write (a
//! read-only one is not ready).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use noetl_bus::Client;
use noetl_contract::ShardId;
use serde_json::json;
use sqlx::PgPool;

use crate::topology::Accepted;

/// What the readiness check looks at.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub client: Client,
    pub shards: Vec<(ShardId, PgPool)>,
    pub accepted: Accepted,
    /// Shards whose subscriptions are in place (each counts itself in and out).
    pub subscribed: Arc<AtomicUsize>,
}

impl Readiness {
    pub async fn check(self) -> noetl_service::ops::Readiness {
        let nats = noetl_bus::is_connected(&self.client);
        let pings = self.shards.iter().map(|(shard, pool)| async move {
            (
                shard.to_string(),
                json!(crate::persistence::can_write(pool).await),
            )
        });
        let answers: serde_json::Map<_, _> =
            futures::future::join_all(pings).await.into_iter().collect();
        let topology = match (
            self.accepted.topology.borrow().as_ref(),
            self.accepted.rejected(),
        ) {
            (_, true) => "rejected",
            (Some(_), false) => "accepted",
            (None, false) => "pending",
        };
        let subscribed = self.subscribed.load(Ordering::Acquire) == self.shards.len();
        let ready = nats
            && topology == "accepted"
            && subscribed
            && answers.values().all(|ok| ok == &json!(true));
        let mut details = serde_json::Map::new();
        details.insert("nats".to_owned(), json!(nats));
        details.insert("topology".to_owned(), json!(topology));
        details.insert("subscribed".to_owned(), json!(subscribed));
        details.insert("shards".to_owned(), json!(answers));
        noetl_service::ops::Readiness { ready, details }
    }
}
