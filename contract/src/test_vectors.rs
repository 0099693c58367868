//! The shared vectors of wiki/spec.md §8 (`testdata/contract.json`, copied from `shared/vectors`),
//! parsed for the unit tests of this crate.

use serde::Deserialize;

use crate::id::ExecutionId;
use crate::routing::{ShardCount, ShardId};
use crate::topology::{Epoch, Topology};

const CONTRACT_JSON: &str = include_str!("../testdata/contract.json");

#[derive(Debug, Deserialize)]
pub struct RoutingVector {
    pub execution_id: ExecutionId,
    pub shard_count: ShardCount,
    pub shard: ShardId,
}

#[derive(Debug, Deserialize)]
pub struct SnowflakeVector {
    pub execution_id: ExecutionId,
    pub unix_ms: i64,
    pub node: u32,
    pub sequence: u16,
}

#[derive(Debug, Deserialize)]
struct TopologyVectors {
    epochs: Vec<Epoch>,
    cases: Vec<RoutingVector>,
}

#[derive(Debug, Deserialize)]
struct Vectors {
    routing: Vec<RoutingVector>,
    snowflake: Vec<SnowflakeVector>,
    topology: TopologyVectors,
}

fn vectors() -> Vectors {
    serde_json::from_str(CONTRACT_JSON).expect("testdata/contract.json is well formed")
}

pub fn routing() -> Vec<RoutingVector> {
    vectors().routing
}

pub fn snowflake() -> Vec<SnowflakeVector> {
    vectors().snowflake
}

pub fn topology() -> (Topology, Vec<RoutingVector>) {
    let TopologyVectors { epochs, cases } = vectors().topology;
    (
        Topology::new(epochs, crate::topology::DEFAULT_GRACE_MS, Vec::new())
            .expect("the shared topology is valid"),
        cases,
    )
}
