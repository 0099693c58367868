//! State shared by the handlers: the dispatcher, the topology view, the node-id lease, the
//! id generator and the count of open event streams. [`AppState::mint`] is where the minting rule of wiki/spec.md §3.3 lives.

use std::sync::Mutex;

use noetl_bus::nodes::NodeLease;
use noetl_bus::topology::Follower;
use noetl_contract::topology::RetiredData;
use noetl_contract::{ExecutionId, IdGenerator, Route, Topology};

use crate::dispatch::Dispatcher;
use crate::limits::StreamQuota;
use crate::problem::{Code, Problem};

#[derive(Debug)]
pub struct AppState {
    pub dispatcher: Dispatcher,
    pub topology: Follower,
    pub lease: NodeLease,
    /// The generator of the node id currently leased (replaced when the lease moves).
    pub ids: Mutex<Option<IdGenerator>>,
    /// The event streams open on this gateway, per tenant.
    pub streams: StreamQuota,
}

impl AppState {
    /// Routes an id with the current topology view (full history, so old ids keep their shard).
    pub fn route(&self, id: ExecutionId) -> Result<Route, Problem> {
        let topology = self.topology.current().ok_or_else(topology_unavailable)?;
        let route = topology.route(id);
        let discarded = topology
            .retired()
            .iter()
            .any(|r| r.shard == route.shard && r.data == RetiredData::Discarded);
        if discarded {
            return Err(Problem::new(
                Code::ExecutionRetired,
                format!(
                    "execution {id} lived on shard {}, which was retired with its data discarded",
                    route.shard
                ),
            ));
        }
        Ok(route)
    }

    /// Whether the view is fresh enough to route an id minted at `unix_ms`: the last confirmed
    /// read of the topology was less than the grace before it. Any epoch written after that
    /// read activates at least a grace after it was written, so it cannot apply to the id.
    /// A tenth of the grace is kept back for clock skew between this gateway and whoever
    /// wrote the epoch.
    pub fn fresh_for(&self, topology: &Topology, unix_ms: i64) -> bool {
        let grace = topology.grace_ms();
        self.topology.confirmed_at_ms() + grace - grace / 10 > unix_ms
    }

    /// Mints a fresh id and routes it, or refuses (503) when that could misroute or collide.
    pub fn mint(&self) -> Result<(ExecutionId, Route), Problem> {
        // Refuse before minting, so no id is spent that cannot be routed.
        let topology = self.topology.current().ok_or_else(topology_unavailable)?;
        let id = self
            .lease
            .next_id(&self.ids, noetl_bus::unix_now_ms())
            .ok_or_else(|| {
                Problem::new(
                    Code::NodeLeaseUnavailable,
                    "the gateway holds no node-id lease (its node id is held by another gateway, or NATS is unreachable); retry, or use another gateway",
                )
            })?
            .map_err(|e| Problem::new(Code::ClockBehind, e.to_string()))?;
        if !self.fresh_for(&topology, id.unix_ms()) {
            metrics::counter!("noetl_gateway_stale_topology_refusals_total").increment(1);
            return Err(Problem::new(
                Code::TopologyStale,
                "the gateway could not confirm the cluster topology within the grace period (is NATS reachable?); retry shortly",
            ));
        }
        Ok((id, self.route(id)?))
    }
}

fn topology_unavailable() -> Problem {
    Problem::new(
        Code::TopologyUnavailable,
        "the gateway has not read the cluster topology yet (is a server running?)",
    )
}
