//! The topology document in the `noetl_topology` JetStream key-value bucket.
//!
//! The first server to start creates it (create-if-absent, so racing servers agree on one
//! document); gateways and servers follow it with a [`Follower`]; `noetlctl` changes it with
//! [`read`] and [`write`] (compare-and-set on the revision it read).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use noetl_contract::subject::{TOPOLOGY_BUCKET, TOPOLOGY_KEY};
use noetl_contract::Topology;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{unix_now_ms, Client, Error};

const RETRY_DELAY: Duration = Duration::from_millis(500);

async fn bucket(client: &Client) -> Result<kv::Store, Error> {
    crate::kv_bucket(
        client,
        TOPOLOGY_BUCKET,
        "noetl-dispatch cluster topology (epochs)",
        64,
        None,
    )
    .await
}

/// Returns the cluster's topology, creating it from `bootstrap` when there is none yet.
pub async fn ensure(client: &Client, bootstrap: &Topology) -> Result<Topology, Error> {
    let store = bucket(client).await?;
    let body = serde_json::to_vec(bootstrap).map_err(|e| Error::Transport(e.to_string()))?;
    match store.create(TOPOLOGY_KEY, Bytes::from(body)).await {
        Ok(_) => Ok(bootstrap.clone()),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => read(client)
            .await?
            .map(|(topology, _)| topology)
            .ok_or_else(|| Error::Transport("the topology was deleted".to_owned())),
        Err(e) => Err(Error::Transport(format!("creating the topology: {e}"))),
    }
}

/// The current document and its revision (for [`write`]), or `None` when no server has
/// created one yet.
pub async fn read(client: &Client) -> Result<Option<(Topology, u64)>, Error> {
    let store = bucket(client).await?;
    match read_entry(&store).await? {
        Some((revision, value)) => Ok(Some((crate::decode(TOPOLOGY_KEY, &value)?, revision))),
        None => Ok(None),
    }
}

async fn read_entry(store: &kv::Store) -> Result<Option<(u64, Bytes)>, Error> {
    let entry = store
        .entry(TOPOLOGY_KEY)
        .await
        .map_err(|e| Error::Transport(format!("reading the topology: {e}")))?;
    Ok(entry
        .filter(|entry| entry.operation == kv::Operation::Put)
        .map(|entry| (entry.revision, entry.value)))
}

/// Replaces the document read at `revision` with `next`; [`Error::Conflict`] when someone
/// else wrote in between. Checking that `next` is a valid successor is the caller's job
/// (`Topology::check_successor`), done against the document of that same revision.
pub async fn write(client: &Client, next: &Topology, revision: u64) -> Result<u64, Error> {
    let store = bucket(client).await?;
    let body = serde_json::to_vec(next).map_err(|e| Error::Transport(e.to_string()))?;
    store
        .update(TOPOLOGY_KEY, Bytes::from(body), revision)
        .await
        .map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => Error::Conflict(format!(
                "the topology changed after revision {revision} was read; read it again"
            )),
            _ => Error::Transport(format!("writing the topology: {e}")),
        })
}

/// A process's view of the topology: the latest valid document, and when it was last
/// confirmed by a read that reached the bucket.
#[derive(Debug, Clone)]
pub struct Follower {
    receiver: watch::Receiver<Option<Topology>>,
    confirmed_at_ms: Arc<AtomicI64>,
}

impl Follower {
    /// Changes of the document, for those that react to them.
    pub fn receiver(&self) -> watch::Receiver<Option<Topology>> {
        self.receiver.clone()
    }

    pub fn current(&self) -> Option<Topology> {
        self.receiver.borrow().clone()
    }

    /// Unix milliseconds at which the last successful read of the bucket was sent (0: never).
    /// The document read then was the latest as of that instant or later.
    pub fn confirmed_at_ms(&self) -> i64 {
        self.confirmed_at_ms.load(Ordering::Acquire)
    }
}

/// How often the document is read directly, besides the watch: each read confirms the view
/// (the gateway's minting rule needs that), and a watch that stalls without an error (seen
/// under heavy load) cannot leave a process on a stale view. A tenth of the grace, so several
/// reads can fail before a gateway has to stop minting.
fn reread_every(topology: Option<&Topology>) -> Duration {
    let grace_ms = topology.map_or(2_000, |t| t.grace_ms() / 10);
    Duration::from_millis(u64::try_from(grace_ms.clamp(100, 2_000)).unwrap_or(2_000))
}

/// Follows the document until `cancel`. Malformed documents are logged and skipped; a broken
/// watch is re-established.
pub fn watch(client: Client, cancel: CancellationToken) -> Follower {
    let (sender, receiver) = watch::channel(None);
    let confirmed_at_ms = Arc::new(AtomicI64::new(0));
    let confirmed = confirmed_at_ms.clone();
    tokio::spawn(async move {
        let mut view = View {
            sender,
            revision: 0,
        };
        while !cancel.is_cancelled() {
            if let Err(e) = follow(&client, &mut view, &confirmed, &cancel).await {
                tracing::warn!(error = %e, "topology watch interrupted; retrying");
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(RETRY_DELAY) => {}
            }
        }
    });
    Follower {
        receiver,
        confirmed_at_ms,
    }
}

/// The follower's side of the channel, with the revision it holds: a watch update still in
/// flight may arrive after a direct read of a newer revision, and must not replace it.
struct View {
    sender: watch::Sender<Option<Topology>>,
    revision: u64,
}

async fn follow(
    client: &Client,
    view: &mut View,
    confirmed_at_ms: &AtomicI64,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let store = bucket(client).await?;
    let mut updates = store
        .watch_with_history(TOPOLOGY_KEY)
        .await
        .map_err(|e| Error::Transport(format!("watching the topology: {e}")))?;
    let mut reread = tokio::time::interval(reread_every(view.sender.borrow().as_ref()));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = reread.tick() => {
                let sent_at_ms = unix_now_ms();
                if let Some(document) = read_entry(&store).await? {
                    if view.offer(document) {
                        confirmed_at_ms.fetch_max(sent_at_ms, Ordering::AcqRel);
                    }
                }
                let every = reread_every(view.sender.borrow().as_ref());
                if every != reread.period() {
                    reread = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                }
            }
            entry = updates.next() => {
                let Some(entry) = entry else {
                    return Err(Error::Transport("topology watch ended".to_owned()));
                };
                let entry = entry.map_err(|e| Error::Transport(e.to_string()))?;
                if entry.operation == kv::Operation::Put {
                    view.offer((entry.revision, entry.value));
                }
            }
        }
    }
}

impl View {
    /// Hands a document to the watchers when it is valid, not older than what they hold, and
    /// differs from it; returns whether it was valid and current.
    fn offer(&mut self, (revision, value): (u64, Bytes)) -> bool {
        if revision < self.revision {
            return false;
        }
        match crate::decode::<Topology>(TOPOLOGY_KEY, &value) {
            Ok(topology) => {
                self.revision = revision;
                self.sender.send_if_modified(|current| {
                    if current.as_ref() == Some(&topology) {
                        return false;
                    }
                    let latest = topology.latest();
                    tracing::info!(revision, epoch = latest.epoch, activate_at_ms = latest.activate_at_ms, shard_count = %latest.shard_count, "topology updated");
                    *current = Some(topology);
                    true
                });
                true
            }
            Err(e) => {
                tracing::error!(revision, error = %e, "ignoring malformed topology document");
                false
            }
        }
    }
}
