//! The server's readiness: NATS connected and every served shard's database answering.

use noetl_bus::Client;
use noetl_contract::ShardId;
use noetl_service::ops::Readiness;
use serde_json::json;
use sqlx::PgPool;

pub async fn readiness(client: Client, shards: Vec<(ShardId, PgPool)>) -> Readiness {
    let nats = noetl_bus::is_connected(&client);
    let pings = shards.iter().map(|(shard, pool)| async move {
        (
            shard.to_string(),
            json!(crate::persistence::ping(pool).await),
        )
    });
    let answers: serde_json::Map<_, _> =
        futures::future::join_all(pings).await.into_iter().collect();
    let ready = nats && answers.values().all(|ok| ok == &json!(true));
    let mut details = serde_json::Map::new();
    details.insert("nats".to_owned(), json!(nats));
    details.insert("shards".to_owned(), json!(answers));
    Readiness { ready, details }
}
