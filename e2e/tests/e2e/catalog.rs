//! The catalog per tenant and bounded playbooks (issue 27): one tenant never lists, reads or
//! overwrites another's playbooks, and runs by name only its own; a tenant's catalog has a
//! quota; YAML aliases cannot blow a small body up; durations and `needs` are bounded.

use reqwest::Method;
use serde_json::{json, Value};

use noetl_contract::subject::CATALOG_BUCKET;

use crate::harness::{assert_problem, connect, hello_request, id_of, Api, Cluster, Token, Worker};

const TOKENS: [Token; 2] = [
    Token::new("a", "tenant-a", &["submit", "read", "admin"], "token-a"),
    Token::new("b", "tenant-b", &["submit", "read", "admin"], "token-b"),
];

/// A one-step playbook `name` whose step is called `step`.
fn playbook(name: &str, step: &str) -> Value {
    json!({"name": name, "steps": [{"name": step, "action": "noop"}]})
}

/// A playbook `large` of a little over `bytes` bytes (a note in its step's `with`).
fn large_playbook(bytes: usize) -> Value {
    let mut large = playbook("large", "s");
    large["steps"][0]["with"] = json!({"note": "x".repeat(bytes)});
    large
}

/// Publishes `playbook` as `api`'s tenant, expecting 201: the version it got.
async fn publish(api: &Api, playbook: &Value) -> u64 {
    let (status, published) = api.post_json("/api/v1/playbooks", playbook).await;
    assert_eq!(status, 201, "{published}");
    published["version"].as_u64().unwrap_or_default()
}

/// Publishing `playbook` as `api`'s tenant is refused for its quota, naming `setting`.
async fn assert_catalog_full(api: &Api, playbook: &Value, setting: &str) {
    let (status, body) = api.post_json("/api/v1/playbooks", playbook).await;
    assert_problem(status, &body, 409, "catalog_quota_exceeded");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(setting), "{body}");
}

/// Submits `request` as `api`'s tenant and waits for the execution to end: its last view.
async fn run_to_the_end(api: &Api, request: &Value) -> Value {
    let id = api.submit(request).await;
    api.wait_for_end(id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_sees_reads_or_overwrites_another_tenants_playbooks() {
    let cluster = Cluster::builder().tokens(&TOKENS).start().await;
    let worker = Worker::start(cluster.nats.url());
    let a = cluster.with_token("token-a");
    let b = cluster.with_token("token-b");

    assert_eq!(publish(&a, &playbook("nightly", "a-step")).await, 1);

    // B: A's playbook is not there, however B asks.
    let (status, listed) = b.get_json("/api/v1/playbooks").await;
    assert_eq!(
        (status, &listed["playbooks"]),
        (200, &json!([])),
        "{listed}"
    );
    for path in [
        "/api/v1/playbooks/nightly",
        "/api/v1/playbooks/nightly/versions/1",
    ] {
        let (status, body) = b.get_json(path).await;
        assert_problem(status, &body, 404, "playbook_not_found");
        assert!(!body.to_string().contains("a-step"), "{body}");
    }
    let by_name = json!({"playbook": {"name": "nightly"}, "input": {"who": "b"}});
    let (status, body) = b.post_json("/api/v1/executions", &by_name).await;
    assert_problem(status, &body, 404, "playbook_not_found");

    // B publishing the same name makes B's own playbook, version 1, and leaves A's alone.
    assert_eq!(publish(&b, &playbook("nightly", "b-step")).await, 1);
    let (_, listed) = a.get_json("/api/v1/playbooks").await;
    assert_eq!(
        listed["playbooks"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(
        listed["playbooks"][0]["latest_version"],
        json!(1),
        "{listed}"
    );
    for (caller, step) in [(&a, "a-step"), (&b, "b-step")] {
        let (status, latest) = caller.get_json("/api/v1/playbooks/nightly").await;
        assert_eq!(status, 200, "{latest}");
        assert_eq!(latest["playbook"]["steps"][0]["name"], step, "{latest}");
    }

    // Keys of the single namespace before tenants are nobody's: never listed nor read.
    let client = connect(cluster.nats.url()).await;
    let bucket = noetl_bus::kv_bucket(&client, CATALOG_BUCKET, "legacy", 1, None)
        .await
        .expect("the catalog's bucket");
    let legacy = "6c6567616379"; // "legacy", hex-encoded as the old keys were
    let entry = json!({"name": "legacy", "version": 1, "created_at_ms": 0,
                       "playbook": playbook("legacy", "old-step")});
    for (key, value) in [
        (
            format!("latest.{legacy}"),
            json!({"version": 1, "updated_at_ms": 0}),
        ),
        (format!("pb.{legacy}.1"), entry),
    ] {
        let value = serde_json::to_vec(&value).expect("JSON");
        bucket.put(key, value.into()).await.expect("a legacy key");
    }
    let (_, listed) = a.get_json("/api/v1/playbooks").await;
    assert!(!listed.to_string().contains("legacy"), "{listed}");
    let (status, body) = a.get_json("/api/v1/playbooks/legacy").await;
    assert_problem(status, &body, 404, "playbook_not_found");

    // A's run by name runs A's version with A's input.
    let by_name = json!({"playbook": {"name": "nightly"}, "input": {"who": "a"}});
    let done = run_to_the_end(&a, &by_name).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["playbook_version"], json!(1), "{done}");
    assert_eq!(done["input"], json!({"who": "a"}), "{done}");
    let steps: Vec<&str> = done["steps"]
        .as_array()
        .map(|steps| steps.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(steps, vec!["a-step"], "{done}");
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_catalog_refuses_publishing_with_its_code_and_other_tenants_do_not_notice() {
    let cluster = Cluster::builder()
        .tokens(&TOKENS)
        .tune(|_, gateway| {
            gateway.catalog_max_versions = 3;
            gateway.catalog_max_bytes = 4_000;
        })
        .start()
        .await;
    let a = cluster.with_token("token-a");
    let b = cluster.with_token("token-b");

    // Bytes: one version over what is left.
    assert_catalog_full(&a, &large_playbook(5_000), "catalog_max_bytes").await;

    // Versions: the fourth of any names.
    for (name, version) in [("one", 1), ("two", 1), ("one", 2)] {
        assert_eq!(publish(&a, &playbook(name, "s")).await, version);
    }
    assert_catalog_full(&a, &playbook("three", "s"), "catalog_max_versions").await;
    let (_, listed) = a.get_json("/api/v1/playbooks").await;
    let names: Vec<&str> = listed["playbooks"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["one", "two"], "{listed}");

    // B's catalog is its own, with its own quota.
    assert_eq!(publish(&b, &playbook("three", "s")).await, 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playbook_too_large_for_nats_is_refused_and_the_gateway_keeps_its_connection() {
    let cluster = Cluster::builder()
        .tokens(&TOKENS)
        .tune(|_, gateway| gateway.body_limit_bytes = 4 * 1024 * 1024)
        .start()
        .await;
    let a = cluster.with_token("token-a");
    let b = cluster.with_token("token-b");
    // Under the body limit, over NATS's default max_payload (1 MiB) once stored.
    let (status, body) = a
        .post_json("/api/v1/playbooks", &large_playbook(1_500_000))
        .await;
    assert_problem(status, &body, 413, "payload_too_large");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("max_payload"), "{body}");
    // Nothing was stored or counted, and the gateway's NATS connection still serves everyone.
    let (status, listed) = a.get_json("/api/v1/playbooks").await;
    assert_eq!(
        (status, &listed["playbooks"]),
        (200, &json!([])),
        "{listed}"
    );
    assert_eq!(publish(&b, &playbook("small", "s")).await, 1);
    cluster.stop().await;
}

/// A YAML body whose `input.b` is `width` aliases of a list of `width` scalars: about
/// `5 * width` bytes that expand to `width * width` nodes.
fn quadratic_laughs(width: usize) -> String {
    format!(
        "playbook:\n  name: laughs\n  steps:\n    - name: a\n      action: noop\ninput:\n  a: &a [{}]\n  b: [{}]\n",
        vec!["x"; width].join(","),
        vec!["*a"; width].join(",")
    )
}

async fn post_yaml(api: &Api, path: &str, body: String) -> (u16, Value) {
    let request = api
        .request(Method::POST, path)
        .header("content-type", "application/yaml")
        .body(body);
    Api::answer(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_aliases_that_blow_a_body_up_are_refused_and_the_gateway_still_serves() {
    let cluster = Cluster::builder().tokens(&TOKENS).start().await;
    let a = cluster.with_token("token-a");
    let b = cluster.with_token("token-b");
    let bomb = quadratic_laughs(10_000);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let (status, body) = post_yaml(&a, "/api/v1/executions", bomb).await;
    assert_problem(status, &body, 400, "yaml_expansion_limit");
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("alias")),
        "{body}"
    );
    // The same shape as a playbook to publish (in a step's `with`).
    let nested = "name: laughs\nsteps:\n  - name: a\n    action: noop\n    with:\n      a: &a ["
        .to_owned()
        + &vec!["x"; 10_000].join(",")
        + "]\n      b: ["
        + &vec!["*a"; 10_000].join(",")
        + "]\n";
    let (status, body) = post_yaml(&a, "/api/v1/playbooks", nested).await;
    assert_problem(status, &body, 400, "yaml_expansion_limit");

    // A few aliases still read as YAML always did, and everyone is served.
    let (status, body) = post_yaml(&a, "/api/v1/executions", quadratic_laughs(3)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = b.post_json("/api/v1/executions", &hello_request()).await;
    assert_eq!(status, 201, "{body}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_durations_and_duplicate_needs_are_refused_naming_the_field() {
    let cluster = Cluster::builder().tokens(&TOKENS).start().await;
    let worker = Worker::start(cluster.nats.url());
    let a = cluster.with_token("token-a");
    let cases = [
        (
            json!([{"name": "s", "action": "noop", "timeout": u64::MAX}]),
            "playbook.steps[0].timeout",
        ),
        (
            json!([{"name": "s", "action": "noop", "timeout": "8760h"}]),
            "playbook.steps[0].timeout",
        ),
        (
            json!([{"name": "s", "action": "fail", "retry": {"max_attempts": 100, "backoff": u64::MAX}}]),
            "playbook.steps[0].retry.backoff",
        ),
        (
            json!([{"name": "s", "action": "sleep", "with": {"ms": u64::MAX}}]),
            "playbook.steps[0].with.ms",
        ),
        (
            json!([{"name": "s", "action": "noop"}, {"name": "t", "action": "noop", "needs": ["s", "s"]}]),
            "playbook.steps[1].needs[1]",
        ),
    ];
    for (steps, field) in cases {
        let request = json!({"playbook": {"name": "bounded", "steps": steps}});
        let (status, body) = a.post_json("/api/v1/executions", &request).await;
        assert_problem(status, &body, 400, "invalid_playbook");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(field), "{field}: {body}");
        // Publishing it is refused the same way.
        let (status, body) = a.post_json("/api/v1/playbooks", &request["playbook"]).await;
        assert_problem(status, &body, 400, "invalid_playbook");
    }
    let (_, listed) = a.get_json("/api/v1/playbooks").await;
    assert_eq!(listed["playbooks"], json!([]), "{listed}");

    // A sleep whose template renders past the bound fails its step, not the worker.
    let request = json!({
        "playbook": {"name": "long-sleep", "steps": [
            {"name": "s", "action": "sleep", "with": {"ms": "{{ input.ms }}"}}
        ]},
        "input": {"ms": "18446744073709551615"}
    });
    let done = run_to_the_end(&a, &request).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("over the limit"), "{done}");
    let (status, body) = a.post_json("/api/v1/executions", &hello_request()).await;
    assert_eq!(status, 201, "{body}");
    a.wait_for_success(id_of(&body)).await;
    worker.stop().await;
    cluster.stop().await;
}
