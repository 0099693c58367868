//! Shard routing (wiki/spec.md §3.2): the only place in the code base that computes a shard.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh64::xxh64;

use crate::id::ExecutionId;

/// Index of a shard: position in `NOETL_SHARDS`, token in subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(u32);

impl ShardId {
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Number of shards in an epoch; never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct ShardCount(NonZeroU32);

/// A shard count of zero was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard count must be at least 1")]
pub struct ZeroShards;

impl ShardCount {
    pub fn new(count: u32) -> Result<Self, ZeroShards> {
        NonZeroU32::new(count).map(Self).ok_or(ZeroShards)
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// Every shard of this count, in order.
    pub fn shards(self) -> impl Iterator<Item = ShardId> {
        (0..self.get()).map(ShardId)
    }

    pub fn contains(self, shard: ShardId) -> bool {
        shard.0 < self.get()
    }
}

impl TryFrom<u32> for ShardCount {
    type Error = ZeroShards;

    fn try_from(count: u32) -> Result<Self, ZeroShards> {
        Self::new(count)
    }
}

impl From<ShardCount> for u32 {
    fn from(count: ShardCount) -> u32 {
        count.get()
    }
}

impl fmt::Display for ShardCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `xxh64(id as little-endian i64, seed 0) % count`.
pub fn shard_of(id: ExecutionId, count: ShardCount) -> ShardId {
    let hash = xxh64(&id.get().to_le_bytes(), 0);
    // The remainder is below `count`, itself a u32, so the narrowing cannot lose bits.
    ShardId((hash % u64::from(count.get())) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors;
    use proptest::prelude::*;

    fn id(raw: i64) -> ExecutionId {
        ExecutionId::new(raw).expect("non-negative id")
    }

    fn count(n: u32) -> ShardCount {
        ShardCount::new(n).expect("non-zero count")
    }

    #[test]
    fn pinned_vectors_from_the_spec() {
        assert_eq!(shard_of(id(325), count(8)), ShardId(4));
        assert_eq!(shard_of(id(42), count(4)), ShardId(3));
        assert_eq!(
            shard_of(id(320_816_801_799_737_344), count(16)),
            ShardId(14)
        );
    }

    #[test]
    fn shared_routing_vectors() {
        let vectors = test_vectors::routing();
        assert!(vectors.len() > 100, "the vector file should be complete");
        for v in vectors {
            assert_eq!(
                shard_of(v.execution_id, v.shard_count),
                v.shard,
                "id {} over {} shards",
                v.execution_id,
                v.shard_count
            );
        }
    }

    #[test]
    fn zero_shards_is_not_a_count() {
        assert_eq!(ShardCount::new(0), Err(ZeroShards));
        assert!(serde_json::from_str::<ShardCount>("0").is_err());
    }

    #[test]
    fn consecutive_ids_spread_evenly_over_sixteen_shards() {
        let shards = count(16);
        let mut buckets = [0u32; 16];
        let start = 320_816_801_799_737_344i64;
        for raw in start..start + 10_000 {
            buckets[shard_of(id(raw), shards).get() as usize] += 1;
        }
        let mean = 10_000.0 / 16.0;
        for (shard, n) in buckets.iter().enumerate() {
            let deviation = (f64::from(*n) - mean).abs() / mean;
            assert!(deviation <= 0.2, "shard {shard} got {n} ids, mean {mean}");
        }
    }

    proptest! {
        #[test]
        fn shard_is_below_the_count(raw in 0..=i64::MAX, n in 1u32..=4096) {
            prop_assert!(shard_of(id(raw), count(n)).get() < n);
        }

        #[test]
        fn one_shard_always_routes_to_zero(raw in 0..=i64::MAX) {
            prop_assert_eq!(shard_of(id(raw), count(1)), ShardId(0));
        }
    }
}
