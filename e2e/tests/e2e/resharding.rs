//! Changing the shard count of a live cluster (wiki/spec.md §3.3): under continuous submits, grow
//! 2 → 4, then shrink 4 → 3. No submit fails except with the documented `topology_stale`, and
//! afterwards every execution is in exactly the database that `route(id)` names, every one
//! finished, and those submitted before a change are still readable.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use noetl_contract::{ExecutionId, ShardCount, ShardId};
use noetl_ctl::topology::{self, Applied};
use serde_json::json;
use sqlx::PgPool;

use crate::harness::{connect, eventually, hello_request, Api, Cluster, Worker, DEADLINE};

/// Short, so each change activates within seconds.
const GRACE_MS: i64 = 3_000;
/// Client tasks and the pause between one task's submits: about 670 submits/s offered, with
/// enough clients that a submit latency up to the pause keeps the rate.
const CLIENTS: usize = 16;
const PACE: Duration = Duration::from_millis(24);

/// What one submit was answered.
struct Answer {
    status: u16,
    code: Option<String>,
    id: Option<ExecutionId>,
}

async fn submit_until(api: Api, stop: Arc<AtomicBool>, answered: Arc<AtomicUsize>) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Acquire) {
        pace.tick().await;
        let (status, body) = api.post_json("/api/v1/executions", &hello_request()).await;
        answers.push(Answer {
            status,
            code: body["code"].as_str().map(str::to_owned),
            id: body["execution_id"].as_str().and_then(|id| id.parse().ok()),
        });
        answered.fetch_add(1, Ordering::AcqRel);
    }
    answers
}

/// Applies a change as soon as the shards it adds are ready (apply refuses until then).
async fn apply_when_ready(client: &noetl_bus::Client, shards: u32) -> i64 {
    let desired = ShardCount::new(shards).expect("non-zero");
    eventually(
        &format!("the change to {shards} shards to apply"),
        DEADLINE,
        || async {
            match topology::apply(client, desired, 0, false).await {
                Ok(Applied::Written(planned)) => Ok(planned
                    .plan
                    .activate_at_ms()
                    .expect("a written plan activates")),
                Ok(Applied::NoChange(_)) => panic!("the topology already had {shards} shards"),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

/// Waits until `more` further submits were answered after `activate_at_ms` passed.
async fn load_past(activate_at_ms: i64, answered: &AtomicUsize, more: usize) {
    eventually("the new epoch to be in force", DEADLINE, || async {
        let left = activate_at_ms - noetl_bus::unix_now_ms();
        if left < 0 {
            Ok(())
        } else {
            Err(format!("{left} ms to go"))
        }
    })
    .await;
    let start = answered.load(Ordering::Acquire);
    eventually("submits under the new epoch", DEADLINE, || async {
        let done = answered.load(Ordering::Acquire) - start;
        if done >= more {
            Ok(())
        } else {
            Err(format!("{done} of {more}"))
        }
    })
    .await;
}

async fn stored(pool: &PgPool) -> Vec<(ExecutionId, String)> {
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT execution_id, status FROM executions")
        .fetch_all(pool)
        .await
        .expect("read executions");
    rows.into_iter()
        .map(|(id, status)| (ExecutionId::new(id).expect("stored ids are valid"), status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shard_count_changes_under_load_without_a_misrouted_or_lost_execution() {
    // The cluster as it starts: a server for shards 0 and 1 (of four databases), a gateway, a
    // worker.
    let mut cluster = Cluster::builder()
        .shards(2)
        .databases(4)
        .grace_ms(GRACE_MS)
        .start()
        .await;
    let client = connect(cluster.nats.url()).await;
    let worker = Worker::start(cluster.nats.url());

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(submit_until(
                Api::clone(&cluster),
                stop.clone(),
                answered.clone(),
            ))
        })
        .collect();
    load_past(0, &answered, 1_000).await;

    // Grow: a second server for the new shards 2 and 3 (NOETL_SHARDS lists all four), then the
    // epoch, applied as soon as both answer.
    cluster.add_server(&[2, 3]);
    let grown_at = apply_when_ready(&client, 4).await;
    load_past(grown_at, &answered, 2_000).await;

    // Shrink: shard 3 drains; it keeps serving what it has.
    let shrunk_at = apply_when_ready(&client, 3).await;
    load_past(shrunk_at, &answered, 2_000).await;

    stop.store(true, Ordering::Release);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.expect("a client task"));
    }
    let elapsed = started.elapsed();
    let accepted: Vec<ExecutionId> = answers
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| a.id.expect("a 201 names its execution"))
        .collect();
    let stale = answers
        .iter()
        .filter(|a| a.status == 503 && a.code.as_deref() == Some("topology_stale"))
        .count();
    let failed: Vec<String> = answers
        .iter()
        .filter(|a| {
            a.status != 201 && !(a.status == 503 && a.code.as_deref() == Some("topology_stale"))
        })
        .map(|a| format!("{} {:?}", a.status, a.code))
        .collect();
    println!(
        "{} submits in {:.1} s ({:.0}/s offered load): {} created, {stale} topology_stale",
        answers.len(),
        elapsed.as_secs_f64(),
        answers.len() as f64 / elapsed.as_secs_f64(),
        accepted.len()
    );
    assert!(failed.is_empty(), "submits failed: {failed:?}");

    // Every execution finishes, wherever it lives.
    let mut pools = Vec::new();
    for shard in 0..4 {
        pools.push(cluster.pool(shard).await);
    }
    eventually("every execution to finish", DEADLINE * 2, || async {
        let mut unfinished = 0;
        for pool in &pools {
            unfinished += stored(pool)
                .await
                .iter()
                .filter(|(_, status)| status != "succeeded")
                .count();
        }
        if unfinished == 0 {
            Ok(())
        } else {
            Err(format!("{unfinished} not succeeded yet"))
        }
    })
    .await;

    // Each execution is in exactly the database its route names, with the final topology.
    let (topology, _) = noetl_bus::topology::read(&client)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(topology.epochs().len(), 3);
    let mut seen = HashSet::new();
    let mut per_shard = [0usize; 4];
    for (shard, pool) in pools.iter().enumerate() {
        for (id, _) in stored(pool).await {
            let route = topology.route(id);
            assert_eq!(
                route.shard,
                ShardId::new(shard as u32),
                "execution {id} is misrouted"
            );
            assert!(seen.insert(id), "execution {id} is stored twice");
            if shard == 3 {
                assert!(
                    id.unix_ms() < shrunk_at,
                    "shard 3 got {id} after it started draining"
                );
            }
            if shard >= 2 {
                assert!(
                    id.unix_ms() >= grown_at,
                    "shard {shard} got {id} before it was added"
                );
            }
            per_shard[shard] += 1;
        }
    }
    let created: HashSet<ExecutionId> = accepted.iter().copied().collect();
    assert_eq!(created.len(), accepted.len(), "an id was handed out twice");
    assert_eq!(seen, created, "stored executions differ from the 201s");
    assert!(
        per_shard.iter().all(|n| *n > 0),
        "every shard got executions: {per_shard:?}"
    );
    println!("executions per shard: {per_shard:?}");

    // Executions from before the changes read back through the gateway.
    for id in accepted.iter().take(20) {
        let (status, body) = cluster.get_json(&format!("/api/v1/executions/{id}")).await;
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("succeeded")),
            "{body}"
        );
    }

    worker.stop().await;
    cluster.stop().await;
}
