//! The worker's readiness: connected to NATS, which is all a worker needs to take commands.

use noetl_bus::Client;
use noetl_service::ops::Readiness;
use serde_json::json;

pub async fn readiness(client: Client) -> Readiness {
    let nats = noetl_bus::is_connected(&client);
    let mut details = serde_json::Map::new();
    details.insert("nats".to_owned(), json!(nats));
    Readiness {
        ready: nats,
        details,
    }
}
