//! Every render has a budget (wiki/limits.md, "Templates"): a hostile template is refused at
//! submit, or fails its step later, with its code; the shard server (a process of its own here)
//! keeps serving everyone else.

use serde_json::{json, Value};

use crate::harness::{assert_problem, hello_request, Api, Cluster, Worker};

/// Nested loops of 10^10 iterations: the fuel stops them.
const NESTED_LOOPS: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}";
/// `~` doubling a string in a namespace, 40 times: a terabyte.
const DOUBLING: &str = "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}";
/// A list wrapped in itself 100 000 times.
const DEEP_LOOP: &str = "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}";
/// 2 MB from one multiplication (minijinja allows up to 100 MB).
const REPEATED: &str = "{{ 'a' * 2100000 }}";
/// Over minijinja's own cap on a multiplication.
const REPEATED_HUGE: &str = "{{ 'a' * 10000000000 }}";
/// Loops that each run within the fuel, writing 1 MB of text.
const LONG_TEXT: &str = "{% for i in range(100000) %}0123456789{% endfor %}";
/// A string that grows twentyfold through `replace`, to 400 KB.
const REPLACED: &str = "{{ ('a' * 20000)|replace('a', 'bbbbbbbbbbbbbbbbbbbb') }}";
const NUL: &str = "{{ '\\x00' }}";

/// A literal list nested `levels` deep.
fn deep_literal(levels: usize) -> String {
    format!("{{{{ {}1{} }}}}", "[".repeat(levels), "]".repeat(levels))
}

/// A one-step playbook whose step renders `template` as `with.x` at submit.
fn first_step(template: &str) -> Value {
    json!({
        "playbook": {"name": "hostile", "steps": [
            {"name": "render", "action": "noop", "with": {"x": template}}
        ]}
    })
}

/// `template` rendered by a step that runs only after another succeeded: it is rendered when
/// the first step's report is applied, under the execution's row lock.
fn later_step(template: &str) -> Value {
    json!({
        "playbook": {"name": "hostile-later", "steps": [
            {"name": "first", "action": "noop"},
            {"name": "render", "action": "noop", "needs": ["first"],
             "with": {"x": template, "from": "{{ steps.first.result }}"}}
        ]}
    })
}

/// Submits `body`, expecting a 400 with `code` whose detail names the step and the field.
async fn refused(api: &Api, body: &Value, code: &str) {
    let (status, problem) = api.post_json("/api/v1/executions", body).await;
    assert_problem(status, &problem, 400, code);
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("render") && detail.contains("with.x"),
        "names the step and field: {problem}"
    );
}

/// A cluster whose server is a process of its own, and a worker.
async fn start() -> (Cluster, Worker) {
    let cluster = Cluster::builder().server_process().start().await;
    let worker = Worker::start(cluster.nats.url());
    (cluster, worker)
}

/// Runs a normal execution to success, checks the shard server process still answers, and
/// stops everything.
async fn finish(cluster: Cluster, worker: Worker) {
    let id = cluster.submit(&hello_request()).await;
    cluster.wait_for_success(id).await;
    let server = Api::new(cluster.server_ops_url.clone());
    assert_eq!(server.get_json("/healthz").await.0, 200, "the server lives");
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_templates_are_refused_at_submit_and_others_are_served() {
    let (cluster, worker) = start().await;

    for template in [NESTED_LOOPS, REPEATED, REPEATED_HUGE, LONG_TEXT, REPLACED] {
        // The hostile submit and another tenant's, at the same moment.
        let hostile = first_step(template);
        let normal = hello_request();
        let (_, (status, receipt)) = tokio::join!(
            refused(&cluster, &hostile, "template_budget_exceeded"),
            cluster.post_json("/api/v1/executions", &normal)
        );
        assert_eq!(status, 201, "{template}: the other submit: {receipt}");
    }
    refused(
        &cluster,
        &first_step(&deep_literal(40)),
        "template_budget_exceeded",
    )
    .await;
    refused(&cluster, &first_step(NUL), "unstorable_value").await;
    // What lets a value feed on itself is refused when the playbook is validated.
    // The input copied into one string a thousand times: linear, but a gigabyte.
    let copies = format!("{{{{ input.s{} }}}}", " ~ input.s".repeat(1000));
    for template in [DOUBLING, DEEP_LOOP, copies.as_str()] {
        let (status, problem) = cluster
            .post_json("/api/v1/executions", &first_step(template))
            .await;
        assert_problem(status, &problem, 400, "invalid_playbook");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("steps[0].with.x"),
            "{problem}"
        );
    }
    finish(cluster, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_step_over_its_budget_fails_with_the_code() {
    let (cluster, worker) = start().await;
    let deep = deep_literal(40);
    let cases = [
        (NESTED_LOOPS, "template_budget_exceeded"),
        (REPEATED, "template_budget_exceeded"),
        (REPEATED_HUGE, "template_budget_exceeded"),
        (LONG_TEXT, "template_budget_exceeded"),
        (deep.as_str(), "template_budget_exceeded"),
        (NUL, "unstorable_value"),
    ];
    let mut submitted = Vec::new();
    for (template, code) in cases {
        submitted.push((cluster.submit(&later_step(template)).await, template, code));
    }
    for (id, template, code) in submitted {
        let view = cluster
            .wait_for_execution(id, "the execution to fail", |body| {
                body["status"] == "failed"
            })
            .await;
        let step = &view["steps"][1];
        assert_eq!(step["status"], "failed", "{template}: {view}");
        let error = step["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("{code}: with.x")),
            "{template}: {error}"
        );
    }
    finish(cluster, worker).await;
}

/// A retry's backoff of 2^64-1 ms once made a delay PostgreSQL cannot store, so the report
/// that failed the first attempt could never commit. Such a backoff is refused at submit now
/// (over `MAX_BACKOFF_MS`, naming the field), and the longest one allowed is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_range_backoff_is_refused_and_the_longest_is_stored() {
    let (cluster, worker) = start().await;
    let mut body = json!({
        "playbook": {"name": "forever", "steps": [
            {"name": "fail", "action": "fail", "with": {"message": "{{ 'no' }}"},
             "retry": {"max_attempts": 2, "backoff": u64::MAX}}
        ]}
    });
    let (status, refused) = cluster.post_json("/api/v1/executions", &body).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (400, Some("invalid_playbook")),
        "{refused}"
    );
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("playbook.steps[0].retry.backoff")),
        "{refused}"
    );
    body["playbook"]["steps"][0]["retry"]["backoff"] =
        json!(noetl_contract::playbook::MAX_BACKOFF_MS);
    let id = cluster.submit(&body).await;
    cluster
        .wait_for_execution(id, "the first attempt's failure to be recorded", |body| {
            body["steps"][0]["attempt"] == 2
        })
        .await;
    let events = cluster.events(id).await;
    assert!(
        events.iter().any(|e| e["kind"] == "step_attempt_failed"),
        "{events:?}"
    );
    finish(cluster, worker).await;
}
