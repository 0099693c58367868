//! Topology epochs (SPEC §3.3): an append-only list of `{epoch, activate_at_ms, shard_count}`.
//! An id is routed with the epoch in force at the id's own timestamp, so appending an epoch
//! never changes where an existing id lives.

use serde::{Deserialize, Serialize};

use crate::id::{ExecutionId, CUSTOM_EPOCH_UNIX_MS};
use crate::routing::{shard_of, ShardCount, ShardId};

/// One entry of the topology history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    pub epoch: u64,
    /// Unix milliseconds from which ids are routed with this epoch's shard count.
    pub activate_at_ms: i64,
    pub shard_count: ShardCount,
}

/// Where an id lives and which epoch said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub shard: ShardId,
    pub shard_count: ShardCount,
    pub epoch: u64,
}

/// A topology history that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a topology needs at least one epoch")]
    Empty,
    #[error("the first epoch must be number 1 and activate at or before 2024-01-01T00:00:00Z")]
    FirstEpoch,
    #[error("epoch {epoch} must be numbered {expected} and activate after the epoch before it")]
    OutOfOrder { epoch: u64, expected: u64 },
}

/// The validated topology history, as stored in the topology bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TopologyDocument", into = "TopologyDocument")]
pub struct Topology {
    epochs: Vec<Epoch>,
}

#[derive(Serialize, Deserialize)]
struct TopologyDocument {
    epochs: Vec<Epoch>,
}

impl TryFrom<TopologyDocument> for Topology {
    type Error = Error;

    fn try_from(document: TopologyDocument) -> Result<Self, Error> {
        Self::new(document.epochs)
    }
}

impl From<Topology> for TopologyDocument {
    fn from(topology: Topology) -> Self {
        Self {
            epochs: topology.epochs,
        }
    }
}

impl Topology {
    pub fn new(epochs: Vec<Epoch>) -> Result<Self, Error> {
        let first = epochs.first().ok_or(Error::Empty)?;
        if first.epoch != 1 || first.activate_at_ms > CUSTOM_EPOCH_UNIX_MS {
            return Err(Error::FirstEpoch);
        }
        for pair in epochs.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            if after.epoch != before.epoch + 1 || after.activate_at_ms <= before.activate_at_ms {
                return Err(Error::OutOfOrder {
                    epoch: after.epoch,
                    expected: before.epoch + 1,
                });
            }
        }
        Ok(Self { epochs })
    }

    /// The topology a new cluster starts with: one epoch covering every id ever minted.
    pub fn bootstrap(shard_count: ShardCount) -> Self {
        Self {
            epochs: vec![Epoch {
                epoch: 1,
                activate_at_ms: CUSTOM_EPOCH_UNIX_MS,
                shard_count,
            }],
        }
    }

    pub fn epochs(&self) -> &[Epoch] {
        &self.epochs
    }

    /// The newest epoch: the one new shards are provisioned for.
    pub fn latest(&self) -> Epoch {
        *self
            .epochs
            .last()
            .expect("a topology always holds at least one epoch (checked in new)")
    }

    /// The epoch in force at `unix_ms`: the last one whose activation is at or before it.
    pub fn epoch_at(&self, unix_ms: i64) -> Epoch {
        let in_force = self.epochs.partition_point(|e| e.activate_at_ms <= unix_ms);
        // The first epoch activates at or before the custom epoch and no id is older than that,
        // so for ids `in_force >= 1`; clamp for arbitrary instants.
        self.epochs[in_force.saturating_sub(1)]
    }

    /// Routes an id with the epoch in force at the id's own timestamp.
    pub fn route(&self, id: ExecutionId) -> Route {
        let epoch = self.epoch_at(id.unix_ms());
        Route {
            shard: shard_of(id, epoch.shard_count),
            shard_count: epoch.shard_count,
            epoch: epoch.epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors;

    fn count(n: u32) -> ShardCount {
        ShardCount::new(n).expect("non-zero")
    }

    #[test]
    fn shared_topology_vectors_route_with_the_epoch_at_the_id_timestamp() {
        let (topology, cases) = test_vectors::topology();
        assert_eq!(topology.epochs().len(), 3);
        assert!(!cases.is_empty());
        for case in cases {
            let route = topology.route(case.execution_id);
            assert_eq!(
                (route.shard_count, route.shard),
                (case.shard_count, case.shard),
                "id {}",
                case.execution_id
            );
        }
    }

    #[test]
    fn bootstrap_routes_like_plain_shard_of() {
        let topology = Topology::bootstrap(count(4));
        let id = ExecutionId::new(42).expect("valid");
        assert_eq!(topology.route(id).shard, shard_of(id, count(4)));
        assert_eq!(topology.route(id).epoch, 1);
    }

    #[test]
    fn malformed_histories_are_rejected() {
        assert_eq!(Topology::new(vec![]), Err(Error::Empty));
        let first = Epoch {
            epoch: 1,
            activate_at_ms: CUSTOM_EPOCH_UNIX_MS,
            shard_count: count(2),
        };
        let late_first = Epoch {
            activate_at_ms: CUSTOM_EPOCH_UNIX_MS + 1,
            ..first
        };
        assert_eq!(Topology::new(vec![late_first]), Err(Error::FirstEpoch));
        let not_later = Epoch { epoch: 2, ..first };
        assert!(matches!(
            Topology::new(vec![first, not_later]),
            Err(Error::OutOfOrder { epoch: 2, .. })
        ));
        let json = r#"{"epochs":[{"epoch":1,"activate_at_ms":1704067200000,"shard_count":0}]}"#;
        assert!(serde_json::from_str::<Topology>(json).is_err());
    }
}
