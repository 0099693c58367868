//! The server's readiness: NATS connected, an accepted topology (none refused since), and
//! every served shard's database answering.

use noetl_bus::Client;
use noetl_contract::ShardId;
use noetl_service::ops::Readiness;
use serde_json::json;
use sqlx::PgPool;

use crate::topology::Accepted;

pub async fn readiness(
    client: Client,
    shards: Vec<(ShardId, PgPool)>,
    accepted: Accepted,
) -> Readiness {
    let nats = noetl_bus::is_connected(&client);
    let pings = shards.iter().map(|(shard, pool)| async move {
        (
            shard.to_string(),
            json!(crate::persistence::ping(pool).await),
        )
    });
    let answers: serde_json::Map<_, _> =
        futures::future::join_all(pings).await.into_iter().collect();
    let topology = match (accepted.topology.borrow().as_ref(), accepted.rejected()) {
        (_, true) => "rejected",
        (Some(_), false) => "accepted",
        (None, false) => "pending",
    };
    let ready = nats && topology == "accepted" && answers.values().all(|ok| ok == &json!(true));
    let mut details = serde_json::Map::new();
    details.insert("nats".to_owned(), json!(nats));
    details.insert("topology".to_owned(), json!(topology));
    details.insert("shards".to_owned(), json!(answers));
    Readiness { ready, details }
}
