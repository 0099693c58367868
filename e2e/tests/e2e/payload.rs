//! Payload sizes on every hop (issue 27): NATS closes the connection of a client that sends a
//! message over its `max_payload`, so nothing is sent over it. A command too large to publish
//! fails its execution with `command_too_large` and goes to the dead letters, a result too large
//! fails its step with `result_too_large`, a submit that grows over the limit once encoded is
//! 413; no connection is dropped and other work flows. NATS runs with a small `max_payload`
//! here, so the messages stay under the template budgets.

use serde_json::{json, Value};

use crate::harness::{assert_problem, eventually, hello_request, Api, Cluster, Worker, DEADLINE};

/// NATS's `max_payload` in these tests.
const MAX_PAYLOAD: usize = 64 * 1024;

/// The client id NATS gave the connection named `name` (waiting until it connected): a
/// reconnect gets a new one.
async fn connection_id(cluster: &Cluster, name: &str) -> u64 {
    let monitor = cluster
        .nats_monitor_url
        .as_deref()
        .expect("NATS monitoring");
    eventually(
        &format!("one NATS connection named {name}*"),
        DEADLINE,
        || async {
            let connz: Value = reqwest::get(format!("{monitor}/connz?limit=1000"))
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let matching: Vec<u64> = connz["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name)))
                .filter_map(|c| c["cid"].as_u64())
                .collect();
            match matching[..] {
                [cid] => Ok(cid),
                _ => Err(connz.to_string()),
            }
        },
    )
    .await
}

async fn wait_until_ended(cluster: &Cluster, id: noetl_contract::ExecutionId) -> Value {
    cluster
        .wait_for_execution(id, "the execution to end", |body| {
            matches!(body["status"].as_str(), Some("failed" | "succeeded"))
        })
        .await
}

/// An execution's event stream, read until it ends.
async fn whole_stream(cluster: &Cluster, id: noetl_contract::ExecutionId) -> String {
    cluster
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/executions/{id}/stream"),
        )
        .send()
        .await
        .expect("the stream starts")
        .text()
        .await
        .expect("the stream ends")
}

fn step<'a>(execution: &'a Value, name: &str) -> &'a Value {
    execution["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {execution}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_over_max_payload_is_dead_lettered_and_fails_its_execution_with_command_too_large(
) {
    let cluster = Cluster::builder()
        .nats_max_payload(MAX_PAYLOAD)
        .start()
        .await;
    let worker = Worker::start(cluster.nats.url());
    let server = connection_id(&cluster, "noetl-server").await;

    // Renders to 70,000 bytes: over max_payload, well under any template budget.
    let big = cluster
        .submit(&json!({
            "playbook": {"name": "big", "steps": [
                {"name": "big", "action": "noop", "with": {"blob": "{{ 'a' * 70000 }}"}},
                {"name": "after", "action": "noop", "needs": ["big"]}
            ]}
        }))
        .await;
    let ended = wait_until_ended(&cluster, big).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    let error = step(&ended, "big")["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("command_too_large: "), "{ended}");
    assert!(error.contains(&format!("({MAX_PAYLOAD} bytes)")), "{error}");
    assert_eq!(step(&ended, "after")["status"], "skipped", "{ended}");

    let pool = cluster.pool(0).await;
    let (dead, size): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(max(size_bytes), 0) FROM outbox_dead_letters
         WHERE execution_id = $1",
    )
    .bind(big.get())
    .fetch_one(&pool)
    .await
    .expect("read the dead letters");
    assert_eq!(dead, 1, "one dead letter");
    assert!(size > MAX_PAYLOAD as i64, "{size}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE execution_id = $1")
        .bind(big.get())
        .fetch_one(&pool)
        .await
        .expect("read the outbox");
    assert_eq!(left, 0, "the relay no longer republishes it");

    // The relay keeps publishing other executions, on the same connection.
    let hello = cluster.submit(&hello_request()).await;
    cluster.wait_for_success(hello).await;
    assert_eq!(
        connection_id(&cluster, "noetl-server").await,
        server,
        "the server's NATS connection was never dropped"
    );
    let metrics = reqwest::get(format!("{}/metrics", cluster.server_ops_url))
        .await
        .expect("server metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("noetl_server_commands_dead_lettered_total") && l.ends_with(" 1")
        ),
        "{metrics}"
    );

    // Its event log holds the rendered `with`: a page of it is over max_payload, so the shard
    // answers a small error instead of a reply NATS would refuse.
    let (status, page) = cluster
        .get_json(&format!("/api/v1/executions/{big}/events"))
        .await;
    assert_problem(status, &page, 413, "payload_too_large");
    let (status, small) = cluster
        .get_json(&format!("/api/v1/executions/{big}/events?limit=2"))
        .await;
    assert_eq!(status, 200, "a smaller page is read: {small}");
    // Its stream sends what fits, then ends with an `error` event instead of polling forever.
    let stream = whole_stream(&cluster, big).await;
    assert!(stream.contains("event: execution_started"), "{stream}");
    assert!(stream.contains("event: error"), "{stream}");
    assert!(stream.contains("payload_too_large"), "{stream}");
    assert!(!stream.contains("event: end"), "{stream}");
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_max_payload_or_the_step_cap_fails_its_step_with_result_too_large() {
    let cluster = Cluster::builder()
        .nats_max_payload(MAX_PAYLOAD)
        .tune(|server, _| server.step_result_max_bytes = 8 * 1024)
        .start()
        .await;
    let worker = Worker::start_with_shell(cluster.nats.url());
    let worker_connection = connection_id(&cluster, "noetl-worker").await;
    let zeros = |bytes: u32| json!({"argv": ["head", "-c", bytes.to_string(), "/dev/zero"]});

    // 60,000 NUL bytes are 360,000 bytes of JSON (`\u0000`): a report over max_payload. 3,000
    // are 18,000: under max_payload, over the shard's step_result_max_bytes.
    let id = cluster
        .submit(&json!({
            "playbook": {"name": "results", "steps": [
                {"name": "huge", "action": "shell", "with": zeros(60_000)},
                {"name": "large", "action": "shell", "with": zeros(3_000)},
                {"name": "small", "action": "shell", "with": zeros(10)},
                {"name": "after", "action": "noop", "needs": ["huge"]}
            ]}
        }))
        .await;
    let ended = wait_until_ended(&cluster, id).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    let huge = step(&ended, "huge");
    assert_eq!(huge["status"], "failed", "{ended}");
    let error = huge["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("result_too_large: "), "{error}");
    assert!(error.contains("NATS max_payload"), "{error}");
    let large = step(&ended, "large")["error"].as_str().unwrap_or_default();
    assert!(large.starts_with("result_too_large: "), "{ended}");
    assert!(
        large.contains("step_result_max_bytes (8192 bytes)"),
        "{large}"
    );
    assert_eq!(step(&ended, "small")["status"], "succeeded", "{ended}");
    assert_eq!(step(&ended, "after")["status"], "skipped", "{ended}");

    // The worker's connection survived, and it goes on taking work.
    let hello = cluster.submit(&hello_request()).await;
    cluster.wait_for_success(hello).await;
    assert_eq!(
        connection_id(&cluster, "noetl-worker").await,
        worker_connection
    );
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_that_grows_over_max_payload_once_encoded_is_413_and_drops_no_connection() {
    let cluster = Cluster::builder()
        .nats_max_payload(MAX_PAYLOAD)
        .start()
        .await;
    let gateway = connection_id(&cluster, "noetl-gateway").await;
    // 8,000 × `9e15,` is 40 KB of body; each number is re-encoded as `9000000000000000.0`,
    // which makes the request to the shard about 150 KB.
    let numbers = vec!["9e15"; 8_000].join(",");
    let body = format!(
        r#"{{"playbook": {{"name": "numbers", "steps": [{{"name": "a", "action": "noop"}}]}},
            "input": {{"numbers": [{numbers}]}}}}"#
    );
    assert!(body.len() < MAX_PAYLOAD, "{}", body.len());
    let (status, problem) = Api::answer(
        cluster
            .request(reqwest::Method::POST, "/api/v1/executions")
            .header("content-type", "application/json")
            .body(body),
    )
    .await;
    assert_problem(status, &problem, 413, "payload_too_large");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("max_payload")),
        "{problem}"
    );

    // The same for a playbook published to the catalog (a key-value write).
    let playbook = format!(
        r#"{{"name": "numbers", "steps": [{{"name": "a", "action": "noop",
            "with": {{"numbers": [{numbers}]}}}}]}}"#
    );
    let (status, problem) = Api::answer(
        cluster
            .request(reqwest::Method::POST, "/api/v1/playbooks")
            .header("content-type", "application/json")
            .body(playbook),
    )
    .await;
    assert_problem(status, &problem, 413, "payload_too_large");

    let hello = cluster.submit(&hello_request()).await;
    let worker = Worker::start(cluster.nats.url());
    cluster.wait_for_success(hello).await;
    assert_eq!(connection_id(&cluster, "noetl-gateway").await, gateway);
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_whose_shard_keeps_failing_ends_with_an_error_event() {
    let mut cluster = Cluster::builder().server_process().start().await;
    // No worker: the execution stays running, so its stream stays open.
    let id = cluster.submit(&hello_request()).await;
    let mut response = cluster
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/executions/{id}/stream"),
        )
        .send()
        .await
        .expect("the stream starts");
    let mut seen = String::new();
    while !seen.contains("event: step_dispatched") {
        let chunk = response.chunk().await.expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("not ended yet")));
    }
    cluster.kill_server();
    let rest = tokio::time::timeout(DEADLINE, response.text())
        .await
        .expect("the stream ends instead of polling forever")
        .expect("the stream ends cleanly");
    assert!(rest.contains("event: error"), "{rest}");
    assert!(rest.contains("shard_unavailable"), "{rest}");
    assert!(!rest.contains("event: end"), "{rest}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_the_shard_never_records_is_given_up_after_report_deadline_ms() {
    let mut cluster = Cluster::builder().server_process().start().await;
    let worker = Worker::start_with(cluster.nats.url(), |settings| {
        settings.report_deadline_ms = 1_000;
    });
    let id = cluster
        .submit(&json!({
            "playbook": {"name": "slow", "steps": [
                {"name": "nap", "action": "sleep", "with": {"ms": 1500}}
            ]}
        }))
        .await;
    cluster
        .wait_for_execution(id, "the step to be running", |body| {
            step(body, "nap")["status"] == "running"
        })
        .await;
    // The step finishes with no shard to report to: the report is retried, then given up.
    cluster.kill_server();
    let metrics = noetl_service::install_metrics();
    eventually("the worker to give the report up", DEADLINE, || async {
        let rendered = metrics.render();
        match rendered
            .lines()
            .any(|l| l.starts_with("noetl_worker_reports_total") && l.contains("given_up"))
        {
            true => Ok(()),
            false => Err(rendered),
        }
    })
    .await;
    // Its slot is free again: the worker stops at once, with nothing in hand.
    worker.stop().await;
    cluster.stop().await;
}

/// A worker (it holds the attempt's token) reports a result over the shard's
/// `step_result_max_bytes` (under NATS `max_payload`): the shard stores a small
/// `result_too_large` failure instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_over_step_result_max_bytes_sent_over_nats_is_stored_as_result_too_large() {
    use noetl_contract::command::{ReportAck, StepOutcome, StepReport};
    use noetl_contract::step::{Attempt, StepIndex};
    use noetl_contract::subject::{self, ShardRequest};

    let cluster = Cluster::builder()
        .tune(|server, _| server.step_result_max_bytes = 8 * 1024)
        .start()
        .await;
    // No worker: the step waits, dispatched, for a report.
    let id = cluster
        .submit(&json!({"playbook": {"name": "forged", "steps": [
            {"name": "one", "action": "noop"}
        ]}}))
        .await;
    let report = StepReport {
        execution_id: id,
        step_index: StepIndex::new(0),
        attempt: Attempt::new(1),
        outcome: StepOutcome::Succeeded {
            result: json!({"blob": "b".repeat(20_000)}),
        },
        started_at_ms: noetl_bus::unix_now_ms(),
        finished_at_ms: noetl_bus::unix_now_ms(),
        worker: "stolen".to_owned(),
        // A worker that received the command: it knows the attempt's token.
        token: cluster.attempt_token(id, 0).await,
        item: None,
    };
    let shard = noetl_contract::shard_of(id, cluster.shard_count);
    let client = crate::harness::connect(cluster.nats.url()).await;
    let ack: ReportAck = noetl_bus::request(
        &client,
        subject::shard_request(ShardRequest::Result, shard, id),
        &report,
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("the shard answers");
    assert_eq!(ack, ReportAck::Recorded);
    let ended = wait_until_ended(&cluster, id).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    let one = step(&ended, "one");
    assert!(one["result"].is_null(), "{ended}");
    let error = one["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("result_too_large: "), "{error}");
    assert!(
        error.contains("step_result_max_bytes (8192 bytes)"),
        "{error}"
    );
    cluster.stop().await;
}

/// Finding 4 of issue 27: results that together outgrow `max_payload` make the execution's
/// reply too large. It is refused with 413 at once (not 503 after a timeout, forever), smaller
/// pages of its events read, and its stream pages by size and ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_whose_results_outgrow_max_payload_reads_as_413_and_its_stream_ends() {
    let cluster = Cluster::builder()
        .nats_max_payload(MAX_PAYLOAD)
        .start()
        .await;
    let worker = Worker::start_with_shell(cluster.nats.url());
    // Four results of 20,000 bytes each: each fits, together they do not.
    let twenty_k = json!({"argv": ["printf", "%020000d", "0"]});
    let steps: Vec<Value> = (0..4)
        .map(|n| json!({"name": format!("s{n}"), "action": "shell", "with": twenty_k}))
        .collect();
    let id = cluster
        .submit(&json!({"playbook": {"name": "wide", "steps": steps}}))
        .await;
    let events = format!("/api/v1/executions/{id}/events");
    // Once every step succeeded, the execution (and its default page of events) is too large.
    let (status, problem) = eventually("the execution to outgrow a reply", DEADLINE, || async {
        match cluster.get_json(&format!("/api/v1/executions/{id}")).await {
            (413, problem) => Ok((413, problem)),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert_problem(status, &problem, 413, "payload_too_large");
    let (status, problem) = cluster.get_json(&events).await;
    assert_problem(status, &problem, 413, "payload_too_large");
    let (status, page) = cluster.get_json(&format!("{events}?limit=3")).await;
    assert_eq!(status, 200, "{page}");

    let stream = whole_stream(&cluster, id).await;
    assert_eq!(
        stream.matches("event: step_succeeded").count(),
        4,
        "{stream}"
    );
    assert!(stream.contains("event: end\ndata: succeeded"), "{stream}");
    assert!(!stream.contains("event: error"), "{stream}");
    worker.stop().await;
    cluster.stop().await;
}
