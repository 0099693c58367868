//! The topology document in the `noetl_topology` JetStream key-value bucket.
//!
//! The first server to start creates it (create-if-absent, so racing servers agree on one
//! document); gateways and servers watch it.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use noetl_contract::subject::{TOPOLOGY_BUCKET, TOPOLOGY_KEY};
use noetl_contract::Topology;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Client, Error};

const RETRY_DELAY: Duration = Duration::from_millis(500);

async fn bucket(client: &Client) -> Result<kv::Store, Error> {
    crate::kv_bucket(
        client,
        TOPOLOGY_BUCKET,
        "noetl-dispatch cluster topology (epochs)",
        64,
    )
    .await
}

/// Returns the cluster's topology, creating it from `bootstrap` when there is none yet.
pub async fn ensure(client: &Client, bootstrap: &Topology) -> Result<Topology, Error> {
    let store = bucket(client).await?;
    let body = serde_json::to_vec(bootstrap).map_err(|e| Error::Transport(e.to_string()))?;
    match store.create(TOPOLOGY_KEY, Bytes::from(body)).await {
        Ok(_) => Ok(bootstrap.clone()),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let entry = store
                .get(TOPOLOGY_KEY)
                .await
                .map_err(|e| Error::Transport(format!("reading the topology: {e}")))?
                .ok_or_else(|| Error::Transport("the topology was deleted".to_owned()))?;
            crate::decode(TOPOLOGY_KEY, &entry)
        }
        Err(e) => Err(Error::Transport(format!("creating the topology: {e}"))),
    }
}

/// Keeps a watch channel holding the latest valid topology (`None` until one is seen).
/// Malformed documents are logged and skipped; a broken watch is re-established.
pub fn watch(client: Client, cancel: CancellationToken) -> watch::Receiver<Option<Topology>> {
    let (sender, receiver) = watch::channel(None);
    tokio::spawn(async move {
        while !cancel.is_cancelled() {
            if let Err(e) = follow(&client, &sender, &cancel).await {
                tracing::warn!(error = %e, "topology watch interrupted; retrying");
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
    });
    receiver
}

/// How often the document is also read directly, so a watch that stalls without an error
/// (seen under heavy load) cannot leave a process on a stale view, or with none.
const REREAD_EVERY: Duration = Duration::from_secs(2);

async fn follow(
    client: &Client,
    sender: &watch::Sender<Option<Topology>>,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let store = bucket(client).await?;
    let mut updates = store
        .watch_with_history(TOPOLOGY_KEY)
        .await
        .map_err(|e| Error::Transport(format!("watching the topology: {e}")))?;
    let mut reread = tokio::time::interval(REREAD_EVERY);
    loop {
        let document = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = reread.tick() => {
                let entry = store
                    .entry(TOPOLOGY_KEY)
                    .await
                    .map_err(|e| Error::Transport(format!("reading the topology: {e}")))?;
                match entry {
                    Some(entry) if entry.operation == kv::Operation::Put => (entry.revision, entry.value),
                    _ => continue,
                }
            }
            entry = updates.next() => {
                let Some(entry) = entry else {
                    return Err(Error::Transport("topology watch ended".to_owned()));
                };
                let entry = entry.map_err(|e| Error::Transport(e.to_string()))?;
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                (entry.revision, entry.value)
            }
        };
        offer(sender, document);
    }
}

/// Hands a document to the watchers when it is valid and differs from what they hold.
fn offer(sender: &watch::Sender<Option<Topology>>, (revision, value): (u64, Bytes)) {
    match crate::decode::<Topology>(TOPOLOGY_KEY, &value) {
        Ok(topology) => {
            sender.send_if_modified(|current| {
                if current.as_ref() == Some(&topology) {
                    return false;
                }
                tracing::info!(revision, epochs = topology.epochs().len(), shard_count = %topology.latest().shard_count, "topology updated");
                *current = Some(topology);
                true
            });
        }
        Err(e) => {
            tracing::error!(revision, error = %e, "ignoring malformed topology document");
        }
    }
}
