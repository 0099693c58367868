//! NoETL playbooks through the API (wiki/playbooks.md, "NoETL playbooks"): each example of
//! examples/noetl/ runs to its expected end, sent as the whole YAML body, as a submit's
//! `playbook`, or published and run by reference; every construct we do not run is refused
//! with a 400 naming its path; against real processes.

use noetl_contract::ExecutionId;
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{assert_problem, describe, Api, Cluster, Worker};

/// The text of examples/noetl/`name`.
fn example_text(name: &str) -> String {
    let path = format!("{}/../examples/noetl/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// examples/noetl/`name` as a JSON value.
fn example_value(name: &str) -> Value {
    yaml_serde::from_str(&example_text(name)).expect("the example is YAML")
}

/// POSTs `body` as YAML to `path`.
async fn post_yaml(api: &Api, path: &str, body: &str) -> (u16, Value) {
    Api::answer(
        api.request(Method::POST, path)
            .header("content-type", "application/yaml")
            .body(body.to_owned()),
    )
    .await
}

/// Submits a NoETL document as the whole YAML body.
async fn submit_yaml(api: &Api, body: &str) -> ExecutionId {
    let (status, receipt) = post_yaml(api, "/api/v1/executions", body).await;
    assert_eq!(status, 201, "{receipt}");
    crate::harness::id_of(&receipt)
}

/// The steps of an execution, `name=status`.
fn statuses(execution: &Value) -> Vec<String> {
    execution["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    format!(
                        "{}={}",
                        s["name"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A loopback server answering `/status.json` with `{"healthy": true}`; its base URL.
async fn serve() -> String {
    let app = axum::Router::new().route(
        "/status.json",
        axum::routing::get(|| async { axum::Json(json!({"healthy": true})) }),
    );
    crate::harness::serve_loopback(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_noetl_example_runs_to_its_expected_end() {
    let cluster = Cluster::builder().start().await;
    let worker = Worker::start_with_shell(cluster.nats.url());

    // The whole body, as YAML.
    let id = submit_yaml(&cluster, &example_text("chain.yaml")).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        statuses(&done),
        [
            "start=succeeded",
            "prepare=succeeded",
            "settle=succeeded",
            "end=succeeded"
        ]
    );

    // As the `playbook` of a JSON submit, with the input overriding the workload.
    let id = cluster
        .submit(&json!({"playbook": example_value("exclusive.yaml"), "input": {"amount": 5}}))
        .await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        statuses(&done),
        [
            "start=succeeded",
            "large=skipped",
            "medium=skipped",
            "small=succeeded"
        ]
    );
    let id = submit_yaml(&cluster, &example_text("exclusive.yaml")).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(
        statuses(&done),
        [
            "start=succeeded",
            "large=skipped",
            "medium=succeeded",
            "small=skipped"
        ]
    );

    // An inclusive fan-out joined once by `end`.
    let id = submit_yaml(&cluster, &example_text("fanout.yaml")).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        statuses(&done),
        [
            "start=succeeded",
            "east=succeeded",
            "west=succeeded",
            "north=skipped",
            "end=succeeded"
        ]
    );
    let events = cluster.events(id).await;
    let end_runs = events
        .iter()
        .filter(|e| e["kind"] == "step_succeeded" && e["payload"]["step"] == "end")
        .count();
    assert_eq!(end_runs, 1, "{events:?}");

    // A shell step behind a condition, both ways.
    let id = submit_yaml(&cluster, &example_text("guarded_shell.yaml")).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        statuses(&done),
        ["start=succeeded", "report=succeeded", "skip_report=skipped"]
    );
    assert_eq!(
        done["steps"][1]["result"]["stdout"], "report for nightly\n",
        "{done}"
    );
    let id = cluster
        .submit(
            &json!({"playbook": example_value("guarded_shell.yaml"), "input": {"report": false}}),
        )
        .await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(
        statuses(&done),
        ["start=succeeded", "report=skipped", "skip_report=succeeded"]
    );

    // A loop: the items' results in item order, read by the next step.
    let id = submit_yaml(&cluster, &example_text("loop.yaml")).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["steps"][1]["result"],
        json!([{"slept_ms": 4}, {"slept_ms": 4}, {"slept_ms": 5}]),
        "{done}"
    );
    assert_eq!(done["steps"][1]["loop"]["succeeded"], 3, "{done}");
    assert_eq!(
        done["steps"][2]["result"],
        json!({"slept_ms": 13}),
        "{done}"
    );

    // `noetlctl submit --wait` takes such a file as a playbook.
    let gateway_url = cluster.base_url.clone();
    let file = format!(
        "{}/../examples/noetl/chain.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = tokio::task::spawn_blocking(move || {
        crate::harness::noetlctl(
            "--gateway-url",
            &gateway_url,
            &["submit", "--wait", "--timeout", "60s", &file],
        )
    })
    .await
    .expect("noetlctl");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    // An http fetch of a loopback server, published to the catalog first and run by name,
    // by the one worker allowed to reach loopback.
    worker.stop().await;
    let loopback = Worker::allowing_loopback(cluster.nats.url());
    let (status, published) =
        post_yaml(&cluster, "/api/v1/playbooks", &example_text("fetch.yaml")).await;
    assert_eq!(status, 201, "{published}");
    assert_eq!(published["name"], "noetl-fetch");
    let (status, stored) = cluster.get_json("/api/v1/playbooks/noetl-fetch").await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(
        stored["playbook"]["steps"][1]["with"]["url"], "{{ input.url }}",
        "one model inside"
    );
    let url = format!("{}/status.json", serve().await);
    let id = cluster
        .submit(&json!({"playbook": {"name": "noetl-fetch"}, "input": {"url": url}}))
        .await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        statuses(&done),
        [
            "start=succeeded",
            "fetch=succeeded",
            "healthy=succeeded",
            "unhealthy=skipped"
        ]
    );

    loopback.stop().await;
    cluster.stop().await;
}

/// `workflow[0]` of a minimal document with `change` made to it.
fn with_start(change: Value) -> Value {
    let mut start = json!({"step": "start"});
    for (key, value) in change.as_object().expect("a mapping") {
        start[key] = value.clone();
    }
    json!({"apiVersion": "noetl.io/v2", "kind": "Playbook", "metadata": {"name": "refused"},
           "workflow": [start]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unsupported_construct_is_a_400_naming_it() {
    let cluster = Cluster::builder().start().await;
    let cases = [
        (
            with_start(
                json!({"loop": {"in": "{{ workload.items }}", "iterator": "item", "mode": "async"}}),
            ),
            "workflow[0].loop.mode",
        ),
        (
            with_start(json!({"case": [{"when": "{{ true }}", "then": {}}]})),
            "workflow[0].case",
        ),
        (with_start(json!({"vars": {"a": 1}})), "workflow[0].vars"),
        (with_start(json!({"set": {"a": 1}})), "workflow[0].set"),
        (
            with_start(json!({"tool": {"kind": "playbook", "path": "child", "poll_interval": 1}})),
            "workflow[0].tool.poll_interval",
        ),
        (
            with_start(json!({"tool": {"kind": "postgres", "query": "select 1"}})),
            "workflow[0].tool.kind",
        ),
        (
            with_start(json!({"tool": {"kind": "shell", "cmds": ["ls"]}})),
            "workflow[0].tool.cmds",
        ),
        (
            with_start(json!({"tool": {"kind": "http", "url": "{{ secret.token }}"}})),
            "workflow[0].tool.url",
        ),
        (
            with_start(json!({"surprise": true})),
            "workflow[0].surprise",
        ),
    ];
    for (document, path) in &cases {
        // As a whole body, as a submit's playbook, on publish and in a dry run.
        let yaml = yaml_serde::to_string(document).expect("YAML");
        let (status, body) = post_yaml(&cluster, "/api/v1/executions", &yaml).await;
        assert_problem(status, &body, 400, "invalid_playbook");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(&format!("{path}: ")), "{detail}");
        let (status, body) = cluster
            .post_json(
                "/api/v1/executions?dry_run=true",
                &json!({"playbook": document}),
            )
            .await;
        assert_problem(status, &body, 400, "invalid_playbook");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with(&format!("playbook.{path}: ")),
            "{detail}"
        );
        let (status, body) = cluster.post_json("/api/v1/playbooks", document).await;
        assert_problem(status, &body, 400, "invalid_playbook");
    }
    // A dry run of a valid one shows the translated plan.
    let (status, plan) = post_yaml(
        &cluster,
        "/api/v1/executions?dry_run=true",
        &example_text("fanout.yaml"),
    )
    .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["playbook_name"], "noetl-fanout");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noetl_bodies_meet_the_same_limits_as_ours() {
    let cluster = Cluster::builder()
        .tune(|_, gateway| gateway.body_limit_bytes = 64 * 1024)
        .start()
        .await;
    // Aliases that multiply, in the workload.
    let mut bomb =
        example_text("chain.yaml").replace("workload:\n", "workload:\n  l0: &l0 [lol]\n");
    for level in 1..=9 {
        let aliases = vec![format!("*l{}", level - 1); 10].join(", ");
        bomb = bomb.replace(
            "  pause_ms: 5\n",
            &format!("  l{level}: &l{level} [{aliases}]\n  pause_ms: 5\n"),
        );
    }
    let (status, body) = post_yaml(&cluster, "/api/v1/executions", &bomb).await;
    assert_problem(status, &body, 400, "yaml_expansion_limit");
    // Over the body limit.
    let padding = format!("workload:\n  padding: {}\n", "x".repeat(70 * 1024));
    let large = example_text("chain.yaml").replace("workload:\n", &padding);
    let (status, body) = post_yaml(&cluster, "/api/v1/playbooks", &large).await;
    assert_problem(status, &body, 413, "payload_too_large");
    // More steps than a playbook may have.
    let steps: Vec<Value> = (0..=noetl_contract::playbook::MAX_STEPS)
        .map(|i| json!({"step": if i == 0 { "start".to_owned() } else { format!("s{i}") }}))
        .collect();
    let document = json!({"apiVersion": "noetl.io/v2", "kind": "Playbook",
                          "metadata": {"name": "many"}, "workflow": steps});
    let (status, body) = cluster.post_json("/api/v1/executions", &document).await;
    assert_problem(status, &body, 400, "invalid_playbook");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("workflow: "),
        "{body}"
    );
    // A template that is refused after translation, named where NoETL wrote it.
    let (status, body) = cluster
        .post_json(
            "/api/v1/executions",
            &with_start(json!({"tool": {"kind": "sleep", "ms": "{% set x = 1 %}{{ x }}"}})),
        )
        .await;
    assert_problem(status, &body, 400, "invalid_playbook");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("workflow[0].tool.ms: "),
        "{body}"
    );
    cluster.stop().await;
}
