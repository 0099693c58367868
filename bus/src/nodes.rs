//! Node-id leases (wiki/spec.md §3.1): a gateway mints ids only under a node id it holds a lease on,
//! so two live gateways never share one.
//!
//! A lease is a key `node.{id}` in the `noetl_nodes` key-value bucket, whose values expire
//! [`NodeLeases::ttl`] after they were last written. A gateway takes a key with
//! create-if-absent, renews it with compare-and-set on the revision it wrote, and counts the
//! lease valid only until a safe margin before the value could have expired since its last
//! renewal was sent. A renewal that finds another revision means the key expired and someone
//! else took it: the lease is lost at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use noetl_contract::subject::{node_lease_key, NODES_BUCKET};
use noetl_contract::{ExecutionId, IdGenerator, NodeId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Client, Error};

/// How a gateway picks its node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChoice {
    /// Exactly this id; while another gateway holds it, this one does not mint.
    Fixed(NodeId),
    /// Any free id.
    Any,
}

/// Lease settings.
#[derive(Debug, Clone, Copy)]
pub struct NodeLeases {
    pub choice: NodeChoice,
    /// How long a lease outlives its last renewal in the bucket.
    pub ttl: Duration,
}

/// The lease a process holds, shared between the renewing task and the minting code.
#[derive(Debug, Clone, Default)]
pub struct NodeLease {
    held: Arc<Mutex<Option<Held>>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    node: NodeId,
    valid_until: Instant,
}

impl NodeLease {
    /// The node id this process may mint under right now, if any.
    pub fn current(&self) -> Option<NodeId> {
        let held = *self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.filter(|h| Instant::now() < h.valid_until)
            .map(|h| h.node)
    }

    /// The next id of `ids` at `now_unix_ms`, under the node id this lease holds (`ids` is reset
    /// for a new node id); `None` while no lease is held.
    pub fn next_id(
        &self,
        ids: &Mutex<Option<IdGenerator>>,
        now_unix_ms: i64,
    ) -> Option<Result<ExecutionId, noetl_contract::id::Error>> {
        let node = self.current()?;
        let mut ids = ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generator = match ids.as_mut() {
            Some(generator) if generator.node() == node => generator,
            _ => ids.insert(IdGenerator::new(node)),
        };
        Some(generator.next_id(now_unix_ms))
    }

    fn set(&self, held: Option<Held>) {
        *self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = held;
    }
}

async fn bucket(client: &Client, ttl: Duration) -> Result<kv::Store, Error> {
    crate::kv_bucket(
        client,
        NODES_BUCKET,
        "noetl-dispatch gateway node-id leases",
        1,
        Some(ttl),
    )
    .await
}

/// Starts acquiring and renewing a lease until `cancel`, then gives it up (deletes the key,
/// so a restarted gateway can take the same id at once). The returned handle says which node
/// id may be used at any instant.
pub fn hold(
    client: Client,
    leases: NodeLeases,
    holder: String,
    cancel: CancellationToken,
) -> NodeLease {
    let lease = NodeLease::default();
    let shared = lease.clone();
    tokio::spawn(async move {
        let mut renewing: Option<(NodeId, u64)> = None;
        // Renew three times per ttl; count a lease valid for three quarters of the ttl after
        // its renewal was sent, so a renewal that is late or lost leaves a margin.
        let every = leases.ttl / 3;
        let validity = leases.ttl * 3 / 4;
        loop {
            let sent = Instant::now();
            let outcome = match renewing {
                Some((node, revision)) => renew(&client, leases.ttl, node, revision, &holder).await,
                None => acquire(&client, leases, &holder).await,
            };
            renewing = match outcome {
                Ok((node, revision)) => {
                    if shared.current() != Some(node) {
                        tracing::info!(%node, "holding the node-id lease");
                    }
                    shared.set(Some(Held {
                        node,
                        valid_until: sent + validity,
                    }));
                    Some((node, revision))
                }
                Err(Error::Conflict(reason)) => {
                    shared.set(None);
                    tracing::error!(%reason, "no node-id lease; not minting ids");
                    None
                }
                Err(e) => {
                    // Transient: keep the lease until its validity runs out, try again.
                    tracing::warn!(error = %e, "failed to renew the node-id lease; retrying");
                    renewing
                }
            };
            // The next attempt is due `every` after this one was sent, not after it returned:
            // validity counts from the send, so a slow call (a JetStream stream created on a
            // loaded host can take seconds) must not push the renewal past the lease's end.
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(sent + every) => {}
            }
        }
        shared.set(None);
        if let Some((node, revision)) = renewing {
            if let Ok(store) = bucket(&client, leases.ttl).await {
                let _ = store
                    .delete_expect_revision(node_lease_key(node), Some(revision))
                    .await;
            }
        }
    });
    lease
}

async fn acquire(
    client: &Client,
    leases: NodeLeases,
    holder: &str,
) -> Result<(NodeId, u64), Error> {
    let store = bucket(client, leases.ttl).await?;
    let candidates: Vec<NodeId> = match leases.choice {
        NodeChoice::Fixed(node) => vec![node],
        NodeChoice::Any => {
            // Start at a different place in each process, so gateways starting together do
            // not all race for node 0.
            let start = std::process::id() % (u32::from(NodeId::MAX) + 1);
            (0..=u32::from(NodeId::MAX))
                .map(|i| (start + i) % (u32::from(NodeId::MAX) + 1))
                .filter_map(|raw| NodeId::try_from(raw).ok())
                .collect()
        }
    };
    for node in candidates {
        match store
            .create(node_lease_key(node), Bytes::from(holder.to_owned()))
            .await
        {
            Ok(revision) => return Ok((node, revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::Transport(format!("taking node id {node}: {e}"))),
        }
    }
    Err(Error::Conflict(match leases.choice {
        NodeChoice::Fixed(node) => format!("node id {node} is leased by another gateway"),
        NodeChoice::Any => "every node id is leased by another gateway".to_owned(),
    }))
}

async fn renew(
    client: &Client,
    ttl: Duration,
    node: NodeId,
    revision: u64,
    holder: &str,
) -> Result<(NodeId, u64), Error> {
    let store = bucket(client, ttl).await?;
    match store
        .update(
            node_lease_key(node),
            Bytes::from(holder.to_owned()),
            revision,
        )
        .await
    {
        Ok(revision) => Ok((node, revision)),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(Error::Conflict(
            format!("the lease on node id {node} expired and was taken or removed"),
        )),
        Err(e) => Err(Error::Transport(format!("renewing node id {node}: {e}"))),
    }
}
