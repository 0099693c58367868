//! Faults while executions run: the server SIGKILLed mid-run, then nats-server down for 10 s.
//! Every execution still reaches exactly one terminal state and records each result once.

use std::time::Duration;

use noetl_contract::{shard_of, ExecutionId};
use serde_json::json;
use sqlx::PgPool;

use crate::harness::{eventually, Cluster, Worker};

/// Terminal executions and running steps, read straight from every shard database.
async fn progress(pools: &[PgPool]) -> (i64, i64) {
    let mut terminal = 0;
    let mut running = 0;
    for pool in pools {
        terminal += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM executions WHERE status IN ('succeeded', 'failed', 'cancelled')",
        )
        .fetch_one(pool)
        .await
        .expect("count terminal");
        // On a worker now: started (a heartbeat after the starting check, one second into the
        // step, recorded its start) and not finished.
        running += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM execution_steps
             WHERE status IN ('dispatched', 'running') AND started_at IS NOT NULL",
        )
        .fetch_one(pool)
        .await
        .expect("count running");
    }
    (terminal, running)
}

async fn wait_for_progress(pools: &[PgPool], what: &str, done: impl Fn(i64, i64) -> bool) {
    eventually(what, Duration::from_secs(120), || async {
        let (terminal, running) = progress(pools).await;
        if done(terminal, running) {
            Ok(())
        } else {
            Err(format!("{terminal} terminal, {running} running"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_end_exactly_once_across_a_server_kill_and_a_nats_outage() {
    let mut cluster = Cluster::builder().shards(2).server_process().start().await;
    let worker = Worker::start(cluster.nats.url());
    let pools = cluster.pools().await;

    // Sleeps longer than the worker's first beat, so running steps are seen as started.
    let chain = json!({"playbook": {"name": "chain", "steps": [
        {"name": "one", "action": "sleep", "with": {"ms": 1500}, "retry": {"max_attempts": 5}},
        {"name": "two", "action": "sleep", "with": {"ms": 1500}, "needs": ["one"], "retry": {"max_attempts": 5}},
        {"name": "three", "action": "noop", "needs": ["two"], "retry": {"max_attempts": 5}}
    ]}});
    let mut ids: Vec<ExecutionId> = Vec::new();
    for _ in 0..40 {
        ids.push(cluster.submit(&chain).await);
    }

    // Kill the server while steps run, then bring it back.
    wait_for_progress(&pools, "steps to run", |_, running| running > 0).await;
    cluster.kill_server();
    cluster.restart_server();
    // NATS down for 10 s while work is in flight, then back on the same port and store.
    wait_for_progress(&pools, "steps to run again", |_, running| running > 0).await;
    cluster.nats.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.nats.restart();

    let total = ids.len() as i64;
    wait_for_progress(&pools, "every execution to end", |terminal, _| {
        terminal == total
    })
    .await;
    for id in &ids {
        let pool = &pools[shard_of(*id, cluster.shard_count).get() as usize];
        let (status, running): (String, i64) = sqlx::query_as(
            "SELECT e.status, (SELECT count(*) FROM execution_steps s
                               WHERE s.execution_id = e.execution_id AND s.status IN ('running', 'dispatched'))
             FROM executions e WHERE e.execution_id = $1",
        )
        .bind(id.get())
        .fetch_one(pool)
        .await
        .expect("read execution");
        assert_eq!(status, "succeeded", "execution {id}");
        assert_eq!(running, 0, "execution {id} has no step left in flight");
        let terminal_events: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM execution_events WHERE execution_id = $1
             AND kind IN ('execution_succeeded', 'execution_failed', 'execution_cancelled')",
        )
        .bind(id.get())
        .fetch_one(pool)
        .await
        .expect("count terminal events");
        assert_eq!(terminal_events, 1, "execution {id} ended exactly once");
        let most_results: Option<i64> = sqlx::query_scalar(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM execution_events
             WHERE execution_id = $1 AND kind = 'step_succeeded' GROUP BY payload->>'step') AS per_step",
        )
        .bind(id.get())
        .fetch_one(pool)
        .await
        .expect("count results");
        assert_eq!(
            most_results,
            Some(1),
            "execution {id} recorded each result once"
        );
    }
    worker.stop().await;
    cluster.stop().await;
}
