//! Topology epochs (wiki/spec.md §3.3): an append-only list of `{epoch, activate_at_ms, shard_count}`
//! plus the shards that were retired. An id is routed with the epoch in force at the id's own
//! timestamp, so appending an epoch never changes where an existing id lives.
//!
//! Changes are computed here, without IO: [`Topology::plan`] appends an epoch that activates at
//! least `grace_ms` in the future, [`Topology::retire`] retires a drained shard, and
//! [`Topology::check_successor`] is what every writer checks before a compare-and-set.
//! [`Topology::rewritten_epoch`] is what a server checks against the epochs it recorded.

use serde::{Deserialize, Serialize};

use crate::id::{ExecutionId, CUSTOM_EPOCH_UNIX_MS};
use crate::routing::{shard_of, ShardCount, ShardId};

/// How far in the future a new epoch activates unless the cluster was bootstrapped with
/// another grace. It is also how long a gateway may mint after its last confirmed read of the
/// topology.
pub const DEFAULT_GRACE_MS: i64 = 30_000;
/// The smallest grace a cluster may be bootstrapped with.
pub const MIN_GRACE_MS: i64 = 1_000;

/// One entry of the topology history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// What the operator said should happen to a retired shard's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RetiredData {
    /// The database stays; a server may keep serving reads of its executions.
    Kept,
    /// The operator deletes the database; its executions are gone.
    Discarded,
}

/// A shard taken out of service for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Retirement {
    pub shard: ShardId,
    pub retired_at_ms: i64,
    pub data: RetiredData,
}

/// The state of a shard at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// New executions route to it.
    Active,
    /// An epoch that is not in force yet will route new executions to it.
    Activating,
    /// No new executions route to it (now or once the pending epoch activates); it keeps
    /// serving the ones it has.
    Draining,
    /// Taken out of service by an operator.
    Retired,
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
    #[error("grace_ms must be at least {MIN_GRACE_MS}, not {0}")]
    Grace(i64),
    #[error("shard {0} is retired twice, or never existed")]
    Retirement(ShardId),
}

/// A change the topology refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("shard {0} was retired; a shard count that includes it again is not supported")]
    GrowsOverRetired(ShardId),
    #[error("shard {shard} is {state:?}, not draining; only a draining shard can be retired")]
    NotDraining { shard: ShardId, state: ShardState },
    #[error("shard {shard} stops receiving executions at {last_id_ms}; it can be retired from {earliest_ms} on (a grace later, when no submit can still be in flight)")]
    StillReceiving {
        shard: ShardId,
        last_id_ms: i64,
        earliest_ms: i64,
    },
    #[error("the new topology does not keep epoch {0} as it was (the history is append-only)")]
    RewritesEpoch(u64),
    #[error("epoch {epoch} activates at {activate_at_ms}, less than the grace of {grace_ms} ms after now ({now_ms})")]
    TooSoon {
        epoch: u64,
        activate_at_ms: i64,
        now_ms: i64,
        grace_ms: i64,
    },
    #[error("the grace may not change (it was {was} ms, the new document says {now} ms)")]
    GraceChanged { was: i64, now: i64 },
    #[error("the new topology drops or rewrites the retirement of shard {0}")]
    RewritesRetirement(ShardId),
    #[error(transparent)]
    Malformed(#[from] Error),
}

/// The validated topology history, as stored in the topology bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TopologyDocument", into = "TopologyDocument")]
pub struct Topology {
    epochs: Vec<Epoch>,
    grace_ms: i64,
    retired: Vec<Retirement>,
}

#[derive(Serialize, Deserialize)]
struct TopologyDocument {
    #[serde(default = "default_grace")]
    grace_ms: i64,
    epochs: Vec<Epoch>,
    #[serde(default)]
    retired: Vec<Retirement>,
}

fn default_grace() -> i64 {
    DEFAULT_GRACE_MS
}

impl TryFrom<TopologyDocument> for Topology {
    type Error = Error;

    fn try_from(document: TopologyDocument) -> Result<Self, Error> {
        Self::new(document.epochs, document.grace_ms, document.retired)
    }
}

impl From<Topology> for TopologyDocument {
    fn from(topology: Topology) -> Self {
        Self {
            grace_ms: topology.grace_ms,
            epochs: topology.epochs,
            retired: topology.retired,
        }
    }
}

/// The result of planning a shard count: the diff and, when something changes, the document
/// to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The shard count new executions get now (the latest epoch's, pending or not).
    pub current: ShardCount,
    pub desired: ShardCount,
    /// `None` when desired equals current: there is nothing to apply.
    pub next: Option<Topology>,
    /// Shards that start receiving executions at activation (they must be ready first).
    pub added: Vec<ShardId>,
    /// Shards that stop receiving executions at activation and keep serving what they have.
    pub draining: Vec<ShardId>,
}

impl Plan {
    /// When the planned epoch activates, if there is one.
    pub fn activate_at_ms(&self) -> Option<i64> {
        self.next.as_ref().map(|next| next.latest().activate_at_ms)
    }
}

impl Topology {
    pub fn new(epochs: Vec<Epoch>, grace_ms: i64, retired: Vec<Retirement>) -> Result<Self, Error> {
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
        if grace_ms < MIN_GRACE_MS {
            return Err(Error::Grace(grace_ms));
        }
        let topology = Self {
            epochs,
            grace_ms,
            retired: Vec::new(),
        };
        let ever = topology.max_shard_count();
        for (i, retirement) in retired.iter().enumerate() {
            let repeated = retired[..i].iter().any(|r| r.shard == retirement.shard);
            if repeated || !ever.contains(retirement.shard) {
                return Err(Error::Retirement(retirement.shard));
            }
        }
        Ok(Self {
            retired,
            ..topology
        })
    }

    /// The topology a new cluster starts with: one epoch covering every id ever minted.
    pub fn bootstrap(shard_count: ShardCount, grace_ms: i64) -> Result<Self, Error> {
        Self::new(
            vec![Epoch {
                epoch: 1,
                activate_at_ms: CUSTOM_EPOCH_UNIX_MS,
                shard_count,
            }],
            grace_ms,
            Vec::new(),
        )
    }

    pub fn epochs(&self) -> &[Epoch] {
        &self.epochs
    }

    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }

    pub fn retired(&self) -> &[Retirement] {
        &self.retired
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

    /// Every shard that has ever existed: `0 .. the largest shard count of any epoch`.
    pub fn max_shard_count(&self) -> ShardCount {
        self.epochs
            .iter()
            .map(|e| e.shard_count)
            .max_by_key(|count| count.get())
            .expect("a topology always holds at least one epoch (checked in new)")
    }

    /// The state of one shard at `now_ms`.
    pub fn shard_state(&self, shard: ShardId, now_ms: i64) -> ShardState {
        if self.retired.iter().any(|r| r.shard == shard) {
            ShardState::Retired
        } else if self.epoch_at(now_ms).shard_count.contains(shard) {
            if self.latest().shard_count.contains(shard) {
                ShardState::Active
            } else {
                ShardState::Draining
            }
        } else if self.latest().shard_count.contains(shard) {
            ShardState::Activating
        } else {
            ShardState::Draining
        }
    }

    /// Every shard that ever existed with its state at `now_ms`.
    pub fn shard_states(&self, now_ms: i64) -> Vec<(ShardId, ShardState)> {
        self.max_shard_count()
            .shards()
            .map(|shard| (shard, self.shard_state(shard, now_ms)))
            .collect()
    }

    /// Shards that hold or will receive executions: every shard not retired, plus retired
    /// shards whose data was kept (their executions stay readable).
    pub fn served_shards(&self) -> Vec<ShardId> {
        self.max_shard_count()
            .shards()
            .filter(|shard| {
                self.retired
                    .iter()
                    .all(|r| r.shard != *shard || r.data == RetiredData::Kept)
            })
            .collect()
    }

    /// Plans the change to `desired` shards at `now_ms`: a new epoch activating `lead_ms` or
    /// the grace from now, whichever is longer (or just after a pending epoch, if that is
    /// later still).
    pub fn plan(
        &self,
        desired: ShardCount,
        now_ms: i64,
        lead_ms: i64,
    ) -> Result<Plan, ChangeError> {
        let latest = self.latest();
        let current = latest.shard_count;
        let mut plan = Plan {
            current,
            desired,
            next: None,
            added: Vec::new(),
            draining: Vec::new(),
        };
        if desired == current {
            return Ok(plan);
        }
        if let Some(retired) = self.retired.iter().find(|r| desired.contains(r.shard)) {
            return Err(ChangeError::GrowsOverRetired(retired.shard));
        }
        let activate_at_ms = (now_ms + self.grace_ms.max(lead_ms)).max(latest.activate_at_ms + 1);
        let mut epochs = self.epochs.clone();
        epochs.push(Epoch {
            epoch: latest.epoch + 1,
            activate_at_ms,
            shard_count: desired,
        });
        plan.next = Some(Self::new(epochs, self.grace_ms, self.retired.clone())?);
        plan.added = desired.shards().filter(|s| !current.contains(*s)).collect();
        plan.draining = current.shards().filter(|s| !desired.contains(*s)).collect();
        Ok(plan)
    }

    /// Retires a draining shard, recording what happens to its data. Whether it still has
    /// unfinished executions is for the caller to find out from its server first.
    pub fn retire(
        &self,
        shard: ShardId,
        data: RetiredData,
        now_ms: i64,
    ) -> Result<Self, ChangeError> {
        let state = self.shard_state(shard, now_ms);
        if state != ShardState::Draining || !self.max_shard_count().contains(shard) {
            return Err(ChangeError::NotDraining { shard, state });
        }
        // The first epoch of the run that excludes the shard up to the latest one.
        let stopped_at = self
            .epochs
            .iter()
            .rev()
            .take_while(|e| !e.shard_count.contains(shard))
            .last()
            .map_or(i64::MAX, |e| e.activate_at_ms);
        let earliest_ms = stopped_at.saturating_add(self.grace_ms);
        if now_ms < earliest_ms {
            return Err(ChangeError::StillReceiving {
                shard,
                last_id_ms: stopped_at,
                earliest_ms,
            });
        }
        let mut retired = self.retired.clone();
        retired.push(Retirement {
            shard,
            retired_at_ms: now_ms,
            data,
        });
        Ok(Self::new(self.epochs.clone(), self.grace_ms, retired)?)
    }

    /// Whether `next` may replace `self` at `now_ms`: it keeps every epoch and retirement as
    /// they were, keeps the grace, and every epoch it appends activates at least the grace
    /// from now (so no gateway holding a fresh view of `self` can have minted under it).
    pub fn check_successor(&self, next: &Topology, now_ms: i64) -> Result<(), ChangeError> {
        if next.grace_ms != self.grace_ms {
            return Err(ChangeError::GraceChanged {
                was: self.grace_ms,
                now: next.grace_ms,
            });
        }
        for (i, epoch) in self.epochs.iter().enumerate() {
            if next.epochs.get(i) != Some(epoch) {
                return Err(ChangeError::RewritesEpoch(epoch.epoch));
            }
        }
        for epoch in &next.epochs[self.epochs.len()..] {
            if epoch.activate_at_ms < now_ms + self.grace_ms {
                return Err(ChangeError::TooSoon {
                    epoch: epoch.epoch,
                    activate_at_ms: epoch.activate_at_ms,
                    now_ms,
                    grace_ms: self.grace_ms,
                });
            }
        }
        for (i, retirement) in self.retired.iter().enumerate() {
            if next.retired.get(i) != Some(retirement) {
                return Err(ChangeError::RewritesRetirement(retirement.shard));
            }
        }
        Ok(())
    }

    /// The first of `recorded` (epochs a server has seen) that was already in force at
    /// `now_ms` and that this topology drops or changes. Ids may have been minted under such an
    /// epoch, so a server must refuse a topology that rewrites it.
    pub fn rewritten_epoch(&self, recorded: &[Epoch], now_ms: i64) -> Option<Epoch> {
        recorded.iter().copied().find(|seen| {
            seen.activate_at_ms <= now_ms && self.epochs.get(index_of(seen.epoch)) != Some(seen)
        })
    }
}

fn index_of(epoch: u64) -> usize {
    usize::try_from(epoch.saturating_sub(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests;
