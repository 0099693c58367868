//! Executions that actually run: server orchestration, workers over JetStream, retries,
//! leases, cancellation and the event log, against real NATS and PostgreSQL.

use noetl_contract::ExecutionId;
use noetl_test_support::Process;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::harness::{binary, id_of, Cluster, Worker};

fn request(steps: Value) -> Value {
    json!({"playbook": {"name": "run", "steps": steps}, "input": {"who": "world"}})
}

fn is_terminal(body: &Value) -> bool {
    matches!(
        body["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

async fn submit(cluster: &Cluster, steps: Value) -> ExecutionId {
    cluster.submit(&request(steps)).await
}

/// A cluster of `shards` shards with a worker, running an execution of `steps`.
async fn running(shards: u32, steps: Value) -> (Cluster, Worker, ExecutionId) {
    let cluster = Cluster::builder().shards(shards).start().await;
    let worker = Worker::start(cluster.nats.url());
    let id = submit(&cluster, steps).await;
    (cluster, worker, id)
}

fn step<'a>(execution: &'a Value, name: &str) -> &'a Value {
    execution["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {execution}"))
}

fn at(step: &Value, field: &str) -> OffsetDateTime {
    let text = step[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {step}"));
    OffsetDateTime::parse(text, &Rfc3339).expect("RFC 3339 timestamp")
}

fn events_of<'a>(events: &'a [Value], kind: &str, step: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["payload"]["step"] == step)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_runs_its_branches_concurrently_and_joins_both_results() {
    let (cluster, worker, id) = running(
        2,
        json!([
            {"name": "a", "action": "noop"},
            {"name": "b", "action": "sleep", "needs": ["a"], "with": {"ms": 400}},
            {"name": "c", "action": "sleep", "needs": ["a"], "with": {"ms": 400}},
            {"name": "d", "action": "noop", "needs": ["b", "c"], "with": {
                "total": "{{ steps.b.result.slept_ms + steps.c.result.slept_ms }}",
                "text": "b={{ steps.b.result.slept_ms }} c={{ steps.c.result.slept_ms }} for {{ input.who }}"
            }}
        ]),
    )
    .await;
    let done = cluster
        .wait_for_execution(id, "the diamond to end", is_terminal)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    for name in ["a", "b", "c", "d"] {
        assert_eq!(step(&done, name)["status"], "succeeded", "{done}");
        assert_eq!(step(&done, name)["attempt"], 1);
    }
    let (b, c) = (step(&done, "b"), step(&done, "c"));
    assert!(
        at(b, "started_at") < at(c, "finished_at") && at(c, "started_at") < at(b, "finished_at"),
        "b and c overlap: {b} {c}"
    );
    let events = cluster.events(id).await;
    let d_dispatched = events_of(&events, "step_dispatched", "d");
    assert_eq!(d_dispatched.len(), 1);
    assert_eq!(
        d_dispatched[0]["payload"]["with"],
        json!({"total": 800, "text": "b=400 c=400 for world"})
    );
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gapless sequence"
    );
    assert_eq!(
        events.last().map(|e| e["kind"].clone()),
        Some(json!("execution_succeeded"))
    );
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_succeed_within_the_budget_and_fail_beyond_it() {
    let cluster = Cluster::builder().start().await;
    let worker = Worker::start(cluster.nats.url());
    let flaky = |max_attempts: u32| {
        json!([
            {"name": "flaky", "action": "fail", "with": {"until_attempt": 3},
             "retry": {"max_attempts": max_attempts, "backoff": "20ms"}},
            {"name": "d", "action": "noop", "needs": ["flaky"]}
        ])
    };
    let enough = submit(&cluster, flaky(3)).await;
    let short = submit(&cluster, flaky(2)).await;

    let done = cluster
        .wait_for_execution(enough, "three attempts", is_terminal)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(step(&done, "flaky")["attempt"], 3);
    let events = cluster.events(enough).await;
    assert_eq!(events_of(&events, "step_dispatched", "flaky").len(), 3);
    assert_eq!(events_of(&events, "step_attempt_failed", "flaky").len(), 2);
    assert_eq!(events_of(&events, "step_succeeded", "flaky").len(), 1);

    let done = cluster
        .wait_for_execution(short, "two attempts", is_terminal)
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(step(&done, "flaky")["status"], "failed");
    assert_eq!(step(&done, "flaky")["attempt"], 2);
    assert_eq!(step(&done, "d")["status"], "skipped");
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_during_a_long_step_ends_the_execution_and_later_steps_never_start() {
    let steps = json!([
        {"name": "long", "action": "sleep", "with": {"ms": 60000}},
        {"name": "after", "action": "noop", "needs": ["long"]}
    ]);
    let (cluster, worker, id) = running(2, steps).await;
    cluster
        .wait_for_execution(id, "the long step to run", |b| {
            step(b, "long")["status"] == "running"
        })
        .await;
    let (status, cancelled) = cluster
        .post_json(&format!("/api/v1/executions/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(step(&cancelled, "long")["status"], "cancelled");
    assert_eq!(step(&cancelled, "after")["status"], "cancelled");
    let (status, again) = cluster
        .post_json(&format!("/api/v1/executions/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, again["status"].clone()),
        (200, json!("cancelled")),
        "idempotent"
    );

    // The worker learns at its next heartbeat and stops; it must not report a result that
    // revives the step, and "after" must never be dispatched.
    worker.stop().await;
    let events = cluster.events(id).await;
    assert!(
        events_of(&events, "step_dispatched", "after").is_empty(),
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "execution_cancelled")
            .count(),
        1
    );
    let (_, fetched) = cluster.get_json(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(fetched["status"], "cancelled");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_worker_was_killed_is_redispatched_after_its_lease() {
    let cluster = Cluster::builder().start().await;
    let mut doomed = Process::spawn(binary("noetl-worker", cluster.nats.url(), "127.0.0.1:0"));
    let id = submit(
        &cluster,
        json!([{"name": "slow", "action": "sleep", "with": {"ms": 3000},
                                      "retry": {"max_attempts": 3}}]),
    )
    .await;
    cluster
        .wait_for_execution(id, "the slow step to run", |b| {
            step(b, "slow")["status"] == "running"
        })
        .await;
    doomed.kill();

    let worker = Worker::start(cluster.nats.url());
    let done = cluster
        .wait_for_execution(id, "the step to be re-run", is_terminal)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        step(&done, "slow")["attempt"],
        2,
        "attempt 1 died with its worker"
    );
    let events = cluster.events(id).await;
    assert_eq!(
        events_of(&events, "step_succeeded", "slow").len(),
        1,
        "one recorded result"
    );
    let lost = events_of(&events, "step_attempt_failed", "slow");
    assert_eq!(lost.len(), 1);
    assert!(lost[0]["payload"]["error"]
        .as_str()
        .unwrap_or_default()
        .contains("lease"));
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_replays_then_follows_until_the_terminal_state() {
    let (cluster, worker, id) = running(
        1,
        json!([
            {"name": "one", "action": "sleep", "with": {"ms": 300}},
            {"name": "two", "action": "noop", "needs": ["one"]}
        ]),
    )
    .await;
    let body = cluster
        .http
        .get(cluster.url(&format!("/api/v1/executions/{id}/stream")))
        .send()
        .await
        .expect("stream answers")
        .text()
        .await
        .expect("the stream ends at the terminal state");
    let kinds: Vec<&str> = body
        .lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"execution_created"), "{body}");
    assert_eq!(
        &kinds[kinds.len() - 2..],
        ["execution_succeeded", "end"],
        "{body}"
    );
    assert!(kinds.contains(&"step_started"), "{body}");
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_playbooks_are_refused_naming_the_step_and_nothing_is_stored() {
    let cluster = Cluster::builder().shards(2).start().await;
    let cases = [
        (
            json!([{"name": "a", "action": "noop", "needs": ["b"]}, {"name": "b", "action": "noop", "needs": ["a"]}]),
            "cycle",
        ),
        (
            json!([{"name": "a", "action": "noop", "needs": ["ghost"]}]),
            "steps[0].needs[0]",
        ),
        (
            json!([{"name": "a", "action": "noop"}, {"name": "a", "action": "noop"}]),
            "steps[1].name",
        ),
        (json!([{"name": "a", "action": "warp"}]), "steps[0].action"),
        (
            json!([{"name": "a", "action": "noop", "with": {"url": "{{ input.x "}}]),
            "steps[0].with.url",
        ),
    ];
    for (steps, expected) in cases {
        let (status, body) = cluster
            .post_json("/api/v1/executions", &request(steps))
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["code"], "invalid_playbook");
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(expected),
            "{body}"
        );
    }
    let stored = cluster.stored_ids().await;
    assert!(stored.values().all(Vec::is_empty), "{stored:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playbook_submitted_as_yaml_runs() {
    let cluster = Cluster::builder().start().await;
    let worker = Worker::start(cluster.nats.url());
    let yaml = "playbook:\n  name: from-yaml\n  steps:\n    - name: greet\n      action: noop\n      timeout: 5s\n      retry: {max_attempts: 2, backoff: 10ms}\ninput:\n  who: yaml\n";
    let response = cluster
        .http
        .post(cluster.url("/api/v1/executions"))
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(response.status().as_u16(), 201);
    let id = id_of(&response.json::<Value>().await.expect("JSON answer"));
    let done = cluster
        .wait_for_execution(id, "the YAML playbook to run", is_terminal)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["playbook_name"], "from-yaml");
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_fails_at_run_time_fails_its_step_with_the_reason() {
    let cluster = Cluster::builder().start().await;
    let id = submit(
        &cluster,
        json!([{"name": "first", "action": "noop", "with": {"x": "{{ input.missing }}"}},
               {"name": "second", "action": "noop", "needs": ["first"]}]),
    )
    .await;
    let (status, done) = cluster.get_json(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        done["status"], "failed",
        "ends at once, no worker needed: {done}"
    );
    let first = step(&done, "first");
    assert_eq!(first["status"], "failed");
    assert!(
        first["error"]
            .as_str()
            .unwrap_or_default()
            .contains("with.x"),
        "{first}"
    );
    assert!(first["finished_at"].is_string(), "{first}");
    assert_eq!(step(&done, "second")["status"], "skipped");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_holding_nul_characters_is_stored_with_replacement_characters() {
    // PostgreSQL stores no U+0000 in jsonb or text; an HTTP body (or a program's output) may
    // hold one, and the report must still be recorded rather than retried forever.
    let app = axum::Router::new().route("/nul", axum::routing::get(|| async { "a\0b" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/nul", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cluster = Cluster::builder().start().await;
    let worker = Worker::allowing_loopback(cluster.nats.url());
    let id = submit(
        &cluster,
        json!([{"name": "fetch", "action": "http", "with": {"url": url}}]),
    )
    .await;
    let execution = cluster
        .wait_for_execution(id, "the fetch to end", is_terminal)
        .await;
    assert_eq!(execution["status"], "succeeded", "{execution}");
    assert_eq!(
        step(&execution, "fetch")["result"]["body"],
        "a\u{FFFD}b",
        "{execution}"
    );
    worker.stop().await;
    cluster.stop().await;
}
