//! The `child-1` scenario's own measurement: the dispatch latency of a child execution, from
//! the commit of its parent's submit (the transaction that also wrote the child's start into the
//! parent's outbox) to the start of the child's first step on its own shard: the relay's pass,
//! the request to the child's shard and its group commit, then the child's own dispatch. Parent
//! and child are read from their own shard databases and joined here by the parent's id.

use std::collections::HashMap;

use hdrhistogram::Histogram;

use crate::cluster::Cluster;

/// The name of the child playbook of the parent playbook `name`.
pub fn child_name(name: &str) -> String {
    format!("{name}-child")
}

/// The children's dispatch latencies (microseconds) of the parents of playbook `name`.
pub async fn dispatch(cluster: &Cluster, name: &str) -> anyhow::Result<Histogram<u64>> {
    let mut committed: HashMap<i64, f64> = HashMap::new();
    let mut started: Vec<(i64, f64)> = Vec::new();
    for pool in &cluster.pools {
        let parents: Vec<(i64, f64)> = sqlx::query_as(
            "SELECT e.execution_id,
                    EXTRACT(EPOCH FROM pg_xact_commit_timestamp(ev.xmin))::float8
             FROM executions e
             JOIN execution_events ev ON ev.execution_id = e.execution_id AND ev.seq = 1
             WHERE e.playbook_name = $1",
        )
        .bind(name)
        .fetch_all(pool)
        .await?;
        committed.extend(parents);
        let children: Vec<(i64, f64)> = sqlx::query_as(
            "SELECT e.parent_id, EXTRACT(EPOCH FROM s.started_at)::float8
             FROM executions e JOIN execution_steps s
               ON s.execution_id = e.execution_id AND s.step_index = 0
             WHERE e.playbook_name = $1 AND e.parent_id IS NOT NULL AND s.started_at IS NOT NULL",
        )
        .bind(child_name(name))
        .fetch_all(pool)
        .await?;
        started.extend(children);
    }
    let mut dispatch = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for (parent, at) in started {
        if let Some(commit) = committed.get(&parent) {
            dispatch.saturating_record(((at - commit) * 1e6).max(1.0) as u64);
        }
    }
    Ok(dispatch)
}
