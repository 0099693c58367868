//! Loops through the API (wiki/playbooks.md, "Loops"): a parallel loop never has more than
//! `max_in_flight` items in flight and its result is in item order, a sequential loop runs one
//! item at a time, a list over `max_loop_items` is refused (at submit) or fails its step (later),
//! and a loop resumes after its server is killed without running recorded items again; against
//! real NATS, PostgreSQL and processes.
//!
//! How many items are in flight is read from the event log, in its order (the order of the
//! decisions): an item is in flight from its `item_dispatched` to its `item_succeeded`,
//! `item_failed` or `item_attempt_failed`.

use std::collections::HashMap;

use noetl_contract::step::{Attempt, AttemptToken, TOKEN_BYTES};
use noetl_contract::ShardId;
use serde_json::{json, Value};

use crate::harness::{
    assert_forgery_refused, assert_problem, eventually, forged, Cluster, Worker, DEADLINE,
};

/// A playbook whose step `each` sleeps `{{ it }}` ms for each item of `input.items`.
fn looping(looped: Value, items: &[u64]) -> Value {
    json!({
        "playbook": {"name": "loops", "steps": [
            {"name": "each", "action": "sleep", "with": {"ms": "{{ it }}"}, "loop": looped},
            {"name": "after", "action": "noop", "needs": ["each"]}
        ]},
        "input": {"items": items}
    })
}

/// The most items in flight at once, and the dispatches of each item, from the event log.
fn in_flight(events: &[Value]) -> (usize, HashMap<u64, usize>) {
    let (mut now, mut most) = (0usize, 0usize);
    let mut dispatches: HashMap<u64, usize> = HashMap::new();
    for event in events {
        let item = event["payload"]["item"].as_u64();
        match event["kind"].as_str() {
            Some("item_dispatched") => {
                now += 1;
                most = most.max(now);
                *dispatches.entry(item.expect("an item")).or_default() += 1;
            }
            Some("item_succeeded" | "item_failed" | "item_attempt_failed") => {
                now = now.checked_sub(1).expect("an item ends after its dispatch");
            }
            _ => {}
        }
    }
    (most, dispatches)
}

fn step<'a>(execution: &'a Value, name: &str) -> &'a Value {
    execution["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {execution}"))
}

/// `(k * 7) % 13`: small sleeps, different enough from one item to the next that a result out
/// of item order shows.
fn sleeps(count: u64) -> Vec<u64> {
    (0..count).map(|k| (k * 7) % 13).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_loop_of_1000_items_keeps_50_in_flight_and_its_result_is_in_item_order() {
    let cluster = Cluster::builder().shards(2).start().await;
    let worker = Worker::start(cluster.nats.url());
    let items = sleeps(1_000);
    let id = cluster
        .submit(&looping(
            json!({"in": "{{ input.items }}", "iterator": "it", "max_in_flight": 50}),
            &items,
        ))
        .await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{}", done["steps"]);
    let each = step(&done, "each");
    let expected: Vec<Value> = items.iter().map(|ms| json!({"slept_ms": ms})).collect();
    assert_eq!(each["result"], Value::Array(expected));
    assert_eq!(
        each["loop"],
        json!({"total": 1000, "next": 1000, "succeeded": 1000, "failed": 0, "in_flight": 0})
    );
    assert_eq!(step(&done, "after")["status"], "succeeded");

    let events = cluster.events(id).await;
    let (most, dispatches) = in_flight(&events);
    // The loop starts with 50 dispatched at once, and never goes over.
    assert_eq!(most, 50);
    assert_eq!(dispatches.len(), 1_000);
    assert!(
        dispatches.values().all(|&n| n == 1),
        "one dispatch per item"
    );
    let started: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "loop_started")
        .collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["payload"]["items"], 1000);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "loop_succeeded")
            .count(),
        1
    );
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_loop_runs_one_item_at_a_time() {
    let cluster = Cluster::builder().shards(1).start().await;
    let worker = Worker::start(cluster.nats.url());
    let items = sleeps(12);
    let looped = json!({"in": "{{ input.items }}", "iterator": "it", "mode": "sequential"});
    // A dry run shows the loop as written.
    let (status, plan) = cluster
        .post_json(
            "/api/v1/executions?dry_run=true",
            &looping(looped.clone(), &items),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["plan"][0]["loop"], looped, "{plan}");
    let id = cluster.submit(&looping(looped, &items)).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{}", done["steps"]);
    let (most, dispatches) = in_flight(&cluster.events(id).await);
    assert_eq!(most, 1);
    assert_eq!(dispatches.len(), 12);
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_over_10001_items_is_refused_at_submit_and_fails_later_with_loop_too_large() {
    let cluster = Cluster::builder().shards(1).start().await;
    let worker = Worker::start(cluster.nats.url());
    let items = vec![0; 10_001];
    let looped = json!({"in": "{{ input.items }}", "iterator": "it"});
    let (status, body) = cluster
        .post_json("/api/v1/executions", &looping(looped.clone(), &items))
        .await;
    assert_problem(status, &body, 400, "loop_too_large");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("10001 items"),
        "{body}"
    );

    // A loop that starts after another step fails with the code instead.
    let later = json!({
        "playbook": {"name": "loops", "steps": [
            {"name": "first", "action": "noop"},
            {"name": "each", "action": "noop", "needs": ["first"], "loop": looped}
        ]},
        "input": {"items": items}
    });
    let id = cluster.submit(&later).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "failed");
    let each = step(&done, "each");
    assert_eq!(each["status"], "failed");
    assert!(
        each["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("loop_too_large"),
        "{each}"
    );
    // At the limit, a loop runs.
    let id = cluster.submit(&looping(looped, &[0; 200])).await;
    assert_eq!(cluster.wait_for_end(id).await["status"], "succeeded");
    worker.stop().await;
    cluster.stop().await;
}

/// A `playbook` step with a `loop` is refused at submit, naming the loop: each item would start
/// a child whose return names no item. Nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playbook_step_cannot_loop() {
    let cluster = Cluster::builder().shards(1).start().await;
    let submit = json!({
        "playbook": {"name": "looping-children", "steps": [
            {"name": "each", "action": "playbook",
             "with": {"playbook": {"name": "one", "steps": [{"name": "s", "action": "noop"}]}},
             "loop": {"in": "{{ input.items }}", "iterator": "it"}}
        ]},
        "input": {"items": [1, 2]}
    });
    let (status, body) = cluster.post_json("/api/v1/executions", &submit).await;
    assert_problem(status, &body, 400, "invalid_playbook");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("playbook.steps[0].loop"), "{body}");
    let (status, listed) = cluster.get_json("/api/v1/executions").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["executions"],
        json!([]),
        "nothing is stored: {listed}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_resumes_after_its_server_is_killed_without_running_recorded_items_again() {
    let mut cluster = Cluster::builder().shards(1).server_process().start().await;
    let worker = Worker::start(cluster.nats.url());
    let items = vec![150; 40];
    let id = cluster
        .submit(&looping(
            json!({"in": "{{ input.items }}", "iterator": "it", "max_in_flight": 4}),
            &items,
        ))
        .await;
    let recorded = eventually("items recorded before the kill", DEADLINE, || async {
        let events = cluster.events(id).await;
        let done: Vec<u64> = events
            .iter()
            .filter(|e| e["kind"] == "item_succeeded")
            .filter_map(|e| e["payload"]["item"].as_u64())
            .collect();
        if done.len() >= 8 {
            Ok(done)
        } else {
            Err(format!("{} items recorded", done.len()))
        }
    })
    .await;
    cluster.kill_server();
    cluster.restart_server();
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{}", done["steps"]);
    assert_eq!(
        step(&done, "each")["result"].as_array().map(Vec::len),
        Some(40)
    );
    let (most, dispatches) = in_flight(&cluster.events(id).await);
    assert!(most <= 4, "{most} in flight");
    assert_eq!(dispatches.len(), 40);
    for item in recorded {
        assert_eq!(
            dispatches[&item], 1,
            "item {item} was recorded, and dispatched again"
        );
    }
    worker.stop().await;
    cluster.stop().await;
}

/// What a 10,000-item loop writes, measured by its shard database: the WAL it generates and the
/// size of its items' table, per item. Both stay flat per item: an item's result is one row,
/// and the step's counters a fixed-size update, where rewriting a growing list of results per
/// item would write `n / 2` entries per item on average (here 5,000, over 30 KB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_of_10000_items_writes_a_bounded_amount_per_item() {
    const ITEMS: usize = 10_000;
    let cluster = Cluster::builder().shards(1).start().await;
    let worker = Worker::start(cluster.nats.url());
    let pool = cluster.pool(0).await;
    let wal = || async {
        sqlx::query_scalar::<_, i64>("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint")
            .fetch_one(&pool)
            .await
            .expect("the WAL position")
    };
    let before = wal().await;
    let body = json!({
        "playbook": {"name": "loops", "steps": [
            {"name": "each", "action": "noop",
             "loop": {"in": "{{ input.items }}", "iterator": "it", "max_in_flight": 64}}
        ]},
        "input": {"items": vec![0; ITEMS]}
    });
    let id = cluster.submit(&body).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(
        step(&done, "each")["result"].as_array().map(Vec::len),
        Some(ITEMS)
    );
    let wal_per_item = (wal().await - before) / ITEMS as i64;
    let table_per_item: i64 =
        sqlx::query_scalar("SELECT pg_total_relation_size('loop_items') / $1::bigint")
            .bind(ITEMS as i64)
            .fetch_one(&pool)
            .await
            .expect("the table's size");
    eprintln!("a {ITEMS}-item loop: {wal_per_item} bytes of WAL and {table_per_item} bytes of loop_items per item");
    assert!(
        wal_per_item < 8 * 1024,
        "{wal_per_item} bytes of WAL per item"
    );
    assert!(
        table_per_item < 1024,
        "{table_per_item} bytes of loop_items per item"
    );
    worker.stop().await;
    cluster.stop().await;
}

/// A stolen worker credential forges a result and heartbeats for a loop item without the item
/// attempt's token, and with a wrong one: none is recorded, each is answered as stale (`stop`);
/// a result for the loop step without an item is stale too. Then a real worker runs the loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_reports_without_the_items_token_are_refused() {
    let cluster = Cluster::builder().shards(1).start().await;
    // No worker yet: the items wait, dispatched.
    let id = cluster
        .submit(&looping(
            json!({"in": "{{ input.items }}", "iterator": "it"}),
            &[1, 2],
        ))
        .await;
    let stored: Vec<u8> = sqlx::query_scalar(
        "SELECT attempt_token FROM loop_items WHERE execution_id = $1 AND item = 0",
    )
    .bind(id.get())
    .fetch_one(&cluster.pool(0).await)
    .await
    .expect("item 0 was dispatched with a token");
    let mut flipped = AttemptToken::from_slice(&stored)
        .expect("16 bytes")
        .expose()
        .to_owned();
    flipped[TOKEN_BYTES - 1] ^= 1;
    let wrong = AttemptToken::from_bytes(flipped);
    let client = crate::harness::connect(cluster.nats.url()).await;
    for (token, item) in [(None, Some(0)), (Some(wrong), Some(0)), (None, None)] {
        let (report, beat) = forged(id, Attempt::FIRST, token, item, false);
        assert_forgery_refused(&client, ShardId::new(0), &report, &beat).await;
    }
    let kinds = cluster.event_kinds(id).await;
    assert!(!kinds.contains(&json!("item_started")), "{kinds:?}");
    assert!(!kinds.contains(&json!("item_succeeded")), "{kinds:?}");

    let worker = Worker::start(cluster.nats.url());
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{}", done["steps"]);
    assert_eq!(
        step(&done, "each")["result"],
        json!([{"slept_ms": 1}, {"slept_ms": 2}])
    );
    worker.stop().await;
    cluster.stop().await;
}

/// Cancelling an execution whose loop items run stops them: the worker, all of whose slots the
/// items take, learns it at its next heartbeat and frees them, so another execution runs (its
/// items would sleep 2 minutes, past the wait); no item of the cancelled loop ends, and the
/// loop shows no place freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_loop_stops_its_items() {
    let cluster = Cluster::builder().shards(1).start().await;
    let worker = Worker::start_with(cluster.nats.url(), |settings| settings.concurrency = 3);
    let id = cluster
        .submit(&looping(
            json!({"in": "{{ input.items }}", "iterator": "it", "max_in_flight": 3}),
            &[120_000; 5],
        ))
        .await;
    eventually("three items running", DEADLINE, || async {
        let started = cluster
            .event_kinds(id)
            .await
            .iter()
            .filter(|k| *k == "item_started")
            .count();
        if started == 3 {
            Ok(())
        } else {
            Err(format!("{started} items started"))
        }
    })
    .await;
    let (status, cancelled) = cluster
        .post_json(&format!("/api/v1/executions/{id}/cancel"), &json!({}))
        .await;
    assert_eq!((status, &cancelled["status"]), (200, &json!("cancelled")));
    assert_eq!(step(&cancelled, "each")["status"], "cancelled");

    let other = cluster
        .submit(&json!({"playbook": {"name": "after", "steps": [{"name": "s", "action": "noop"}]}}))
        .await;
    cluster.wait_for_success(other).await;
    let kinds = cluster.event_kinds(id).await;
    assert!(!kinds.contains(&json!("item_succeeded")), "{kinds:?}");
    assert!(!kinds.contains(&json!("item_failed")), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "item_dispatched").count(), 3);
    worker.stop().await;
    cluster.stop().await;
}
