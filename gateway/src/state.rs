//! State shared by the handlers: the dispatcher, the topology view and the id generator.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use noetl_contract::{ExecutionId, IdGenerator, Route, Topology};
use tokio::sync::watch;

use crate::dispatch::Dispatcher;
use crate::problem::{Code, Problem};

#[derive(Debug)]
pub struct AppState {
    pub dispatcher: Dispatcher,
    pub topology: watch::Receiver<Option<Topology>>,
    pub ids: Mutex<IdGenerator>,
}

impl AppState {
    /// Routes an id with the current topology view.
    pub fn route(&self, id: ExecutionId) -> Result<Route, Problem> {
        self.topology
            .borrow()
            .as_ref()
            .map(|topology| topology.route(id))
            .ok_or_else(topology_unavailable)
    }

    /// Mints a fresh id and routes it.
    pub fn mint(&self) -> Result<(ExecutionId, Route), Problem> {
        // Refuse before minting, so no id is spent without a topology to route it.
        if self.topology.borrow().is_none() {
            return Err(topology_unavailable());
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let id = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next_id(now_ms)
            .map_err(|e| Problem::new(Code::ClockBehind, e.to_string()))?;
        Ok((id, self.route(id)?))
    }
}

fn topology_unavailable() -> Problem {
    Problem::new(
        Code::TopologyUnavailable,
        "the gateway has not read the cluster topology yet (is a server running?)",
    )
}
