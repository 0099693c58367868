//! Quotas per tenant and per execution (issue 27): a tenant at `tenant_max_executions_in_flight`
//! is refused new submits with 429 `tenant_quota_exceeded` while another tenant's go through,
//! and submits again once its executions finish; the step results of one execution together
//! stay under `execution_results_max_bytes`, so it stays readable; no attempt of any tenant's
//! step runs longer than `max_step_timeout_ms`.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{assert_problem, hello_request, id_of, Api, Cluster, Token, Worker};

const TOKENS: [Token; 2] = [
    Token::new("a", "tenant-a", &["submit", "read"], "token-a"),
    Token::new("b", "tenant-b", &["submit", "read"], "token-b"),
];

/// Submits [`hello_request`] as `api`'s tenant with Idempotency-Key `key`.
async fn submit_keyed(api: &Api, key: &str) -> (u16, Value) {
    let request = api
        .request(Method::POST, "/api/v1/executions")
        .header("Idempotency-Key", key)
        .json(&hello_request());
    Api::answer(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_quota_of_executions_in_flight_is_refused_and_others_are_not() {
    let cluster = Cluster::builder()
        .tokens(&TOKENS)
        .tune(|server, _| server.tenant_max_executions_in_flight = 2)
        .start()
        .await;
    let (a, b) = (cluster.with_token("token-a"), cluster.with_token("token-b"));

    // No worker yet: every execution stays in flight.
    let (status, first) = submit_keyed(&a, "a-first").await;
    assert_eq!(status, 201, "{first}");
    let second = a.submit(&hello_request()).await;

    // At its quota: A's next submit is refused, B's, sent at the same time, are stored.
    let hello = hello_request();
    let (refused, b1, b2) = tokio::join!(
        submit_keyed(&a, "a-refused"),
        b.post_json("/api/v1/executions", &hello),
        b.post_json("/api/v1/executions", &hello),
    );
    assert_problem(refused.0, &refused.1, 429, "tenant_quota_exceeded");
    let detail = refused.1["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("tenant_max_executions_in_flight") && detail.contains("tenant-a"),
        "{detail}"
    );
    assert_eq!((b1.0, b2.0), (201, 201), "{} {}", b1.1, b2.1);

    // A retried submit of a stored execution is answered as before, even at the quota; a
    // retried submit that was refused is refused again, and nothing of it was stored.
    let (status, replayed) = submit_keyed(&a, "a-first").await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(id_of(&replayed), id_of(&first));
    let (status, again) = submit_keyed(&a, "a-refused").await;
    assert_problem(status, &again, 429, "tenant_quota_exceeded");
    let (status, listed) = a.get_json("/api/v1/executions").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["executions"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );

    // Once A's executions finish, A submits again: the refused request under its key, then
    // a new one.
    let worker = Worker::start(cluster.nats.url());
    a.wait_for_success(id_of(&first)).await;
    a.wait_for_success(second).await;
    let (status, admitted) = submit_keyed(&a, "a-refused").await;
    assert_eq!(status, 200, "{admitted}");
    assert_eq!(id_of(&admitted), id_of(&refused.1));
    let third = a.submit(&hello_request()).await;
    a.wait_for_success(third).await;
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_takes_its_executions_results_over_the_cap_fails_its_step_and_the_execution_stays_readable(
) {
    let cluster = Cluster::builder()
        .tune(|server, _| server.execution_results_max_bytes = 4_000)
        .start()
        .await;
    let worker = Worker::start_with_shell(cluster.nats.url());
    // Each step prints 1,500 zeros: a result of a little over 1,500 bytes. The third takes the
    // execution's results over 4,000 bytes.
    let zeros = json!({"argv": ["printf", "%01500d", "0"]});
    let id = cluster
        .submit(&json!({
            "playbook": {"name": "results", "steps": [
                {"name": "one", "action": "shell", "with": zeros},
                {"name": "two", "action": "shell", "with": zeros, "needs": ["one"]},
                {"name": "three", "action": "shell", "with": zeros, "needs": ["two"]}
            ]}
        }))
        .await;
    let ended = cluster
        .wait_for_execution(id, "the execution to end", |body| {
            matches!(body["status"].as_str(), Some("failed" | "succeeded"))
        })
        .await;
    assert_eq!(ended["status"], "failed", "{ended}");
    let steps = ended["steps"].as_array().cloned().unwrap_or_default();
    let statuses: Vec<&str> = steps.iter().filter_map(|s| s["status"].as_str()).collect();
    assert_eq!(statuses, ["succeeded", "succeeded", "failed"], "{ended}");
    let error = steps[2]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("result_too_large: "), "{error}");
    assert!(
        error.contains("over execution_results_max_bytes (4000 bytes)"),
        "{error}"
    );
    let (status, view) = cluster.get_json(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(status, 200, "{view}");
    let metrics = reqwest::get(format!("{}/metrics", cluster.server_ops_url))
        .await
        .expect("server metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("noetl_server_results_too_large_total")
                && l.contains("limit=\"execution_results_max_bytes\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    worker.stop().await;
    cluster.stop().await;
}

/// A submit of one `sleep` step named `wait`, with `step`'s fields added.
fn sleep_request(step: Value, input: Value) -> Value {
    let mut wait = json!({"name": "wait", "action": "sleep"});
    if let (Some(wait), Some(fields)) = (wait.as_object_mut(), step.as_object()) {
        wait.extend(fields.clone());
    }
    json!({"playbook": {"name": "long", "steps": [wait]}, "input": input})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_attempt_runs_longer_than_max_step_timeout_ms_and_other_tenants_are_unaffected() {
    let cluster = Cluster::builder()
        .tokens(&TOKENS)
        .tune(|server, _| {
            server.max_step_timeout_ms = 1_500;
            server.default_step_timeout_ms = 1_500;
        })
        .start()
        .await;
    let worker = Worker::start(cluster.nats.url());
    let (a, b) = (cluster.with_token("token-a"), cluster.with_token("token-b"));
    let submit = |api: &Api, step: Value, input: Value| {
        let request = sleep_request(step, input);
        let api = api.clone();
        async move { api.post_json("/api/v1/executions", &request).await }
    };

    // A step's `timeout`, or a literal `with.ms`, over the setting: refused, naming the field
    // and the setting, while B's submit within it, sent at the same time, is stored and runs.
    let (timeout, literal, within) = tokio::join!(
        submit(&a, json!({"timeout": "2s", "with": {"ms": 10}}), json!({})),
        submit(&a, json!({"with": {"ms": 60_000}}), json!({})),
        submit(&b, json!({"timeout": "1s", "with": {"ms": 10}}), json!({})),
    );
    for ((status, problem), field) in [
        (timeout, "playbook.steps[0].timeout"),
        (literal, "playbook.steps[0].with.ms"),
    ] {
        assert_problem(status, &problem, 400, "invalid_playbook");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with(field) && detail.contains("1500 ms (max_step_timeout_ms)"),
            "{detail}"
        );
    }
    assert_eq!(within.0, 201, "{}", within.1);
    b.wait_for_success(id_of(&within.1)).await;
    let (status, listed) = a.get_json("/api/v1/executions").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["executions"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );

    // A templated `with.ms` is rendered by the server, so it is bounded by the attempt's
    // `timeout_ms`, which the worker enforces: the step fails at the setting.
    let (status, receipt) = submit(
        &a,
        json!({"with": {"ms": "{{ input.ms }}"}}),
        json!({"ms": 60_000}),
    )
    .await;
    assert_eq!(status, 201, "{receipt}");
    let ended = a
        .wait_for_execution(id_of(&receipt), "the long sleep to end", |body| {
            matches!(body["status"].as_str(), Some("failed" | "succeeded"))
        })
        .await;
    assert_eq!(ended["status"], "failed", "{ended}");
    let error = ended["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("timed out after 1500 ms"), "{error}");
    worker.stop().await;
    cluster.stop().await;
}
