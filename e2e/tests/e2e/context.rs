//! Execution variables through the API (wiki/playbooks.md, "Execution variables"): a step's
//! `set` writes `ctx` when it succeeds, a later step's `with` and an arc's `when` read it (in a
//! later transaction, so from what was stored), each write is a `ctx_set` event, a `set` that
//! would take `ctx` over its bound fails its step with `ctx_too_large`, and a bad `set` is
//! refused at submit naming its path, and `ctx` outlives a restart of the server; against real
//! processes.

use serde_json::{json, Value};

use crate::harness::{assert_problem, Cluster, Worker};

fn step<'a>(execution: &'a Value, name: &str) -> &'a Value {
    execution["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("step {name} in {execution}"))
}

/// `login` sets two variables from its result and the input; `call`, two steps later, reads
/// them in its `with` and routes on one.
fn chain() -> Value {
    json!({"playbook": {"name": "ctx-chain", "steps": [
        {"name": "login", "action": "sleep", "with": {"ms": 1},
         "set": {"token": "tok-{{ result.slept_ms }}-{{ input.user }}", "n": "{{ input.n * 2 }}"}},
        {"name": "pause", "action": "noop", "needs": ["login"]},
        {"name": "call", "action": "noop", "needs": ["pause"],
         "with": {"auth": "Bearer {{ ctx.token }}", "n": "{{ ctx.n }}"},
         "next": {"mode": "exclusive", "arcs": [
             {"step": "big", "when": "ctx.n > 5"},
             {"step": "small"}
         ]}},
        {"name": "big", "action": "noop"},
        {"name": "small", "action": "noop"}
    ]}, "input": {"user": "ann", "n": 5}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_sets_ctx_and_later_templates_read_it() {
    let cluster = Cluster::builder().start().await;
    let worker = Worker::start(cluster.nats.url());

    let id = cluster.submit(&chain()).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(step(&done, "big")["status"], "succeeded", "{done}");
    assert_eq!(step(&done, "small")["status"], "skipped", "{done}");
    assert_eq!(
        done["ctx"],
        json!({"n": 10, "token": "tok-1-ann"}),
        "{done}"
    );
    let events = cluster.events(id).await;
    let writes: Vec<(Value, Value, Value)> = events
        .iter()
        .filter(|e| e["kind"] == "ctx_set")
        .map(|e| {
            let p = &e["payload"];
            (p["step"].clone(), p["name"].clone(), p["value"].clone())
        })
        .collect();
    assert_eq!(
        writes,
        [
            (json!("login"), json!("n"), json!(10)),
            (json!("login"), json!("token"), json!("tok-1-ann")),
        ],
        "{events:?}"
    );
    let call = events
        .iter()
        .find(|e| e["kind"] == "step_dispatched" && e["payload"]["step"] == "call")
        .expect("call dispatched");
    assert_eq!(
        call["payload"]["with"],
        json!({"auth": "Bearer tok-1-ann", "n": 10})
    );

    // A `set` that would take ctx over 64 KiB fails its step with the code; nothing is written.
    let big = json!({"playbook": {"name": "ctx-big", "steps": [
        {"name": "small", "action": "noop", "set": {"a": "x"}},
        {"name": "huge", "action": "noop", "needs": ["small"],
         "set": {"b": "{{ 'x' * 70000 }}"}},
        {"name": "after", "action": "noop", "needs": ["huge"]}
    ]}});
    let id = cluster.submit(&big).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "failed", "{done}");
    let huge = step(&done, "huge");
    assert_eq!(huge["status"], "failed");
    assert!(
        huge["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("ctx_too_large: ")),
        "{huge}"
    );
    assert_eq!(step(&done, "after")["status"], "skipped");
    let events = cluster.events(id).await;
    let names: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "ctx_set")
        .map(|e| &e["payload"]["name"])
        .collect();
    assert_eq!(names, [&json!("a")], "{events:?}");

    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_set_is_refused_naming_its_path() {
    let cluster = Cluster::builder().start().await;
    let too_many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("v{i}"), json!("x"))).collect();
    let cases = [
        (json!({"1st": "x"}), "playbook.steps[0].set.1st"),
        (json!({"t": "{{ result. }}"}), "playbook.steps[0].set.t"),
        (
            json!({"t": "{{ ctx ~ namespace() }}"}),
            "playbook.steps[0].set.t",
        ),
        (Value::Object(too_many), "playbook.steps[0].set"),
    ];
    for (set, path) in cases {
        let mut body = chain();
        body["playbook"]["steps"][0]["set"] = set;
        let (status, problem) = cluster.post_json("/api/v1/executions", &body).await;
        assert_problem(status, &problem, 400, "invalid_playbook");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(&format!("{path}:")), "{path}: {problem}");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctx_survives_a_restart_of_the_server() {
    let mut cluster = Cluster::builder().server_process().start().await;
    let worker = Worker::start(cluster.nats.url());
    let body = json!({"playbook": {"name": "ctx-restart", "steps": [
        {"name": "login", "action": "noop", "set": {"token": "{{ input.user }}-t"}},
        {"name": "wait", "action": "sleep", "needs": ["login"], "with": {"ms": 3000}},
        {"name": "call", "action": "noop", "needs": ["wait"],
         "with": {"auth": "Bearer {{ ctx.token }}"}}
    ]}, "input": {"user": "bo"}});
    let id = cluster.submit(&body).await;
    // Once `login` succeeded, its `set` is stored: the server that wrote it goes away.
    cluster
        .wait_for_execution(id, "login to succeed", |body| {
            body["steps"][0]["status"] == "succeeded"
        })
        .await;
    cluster.kill_server();
    cluster.restart_server();
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["ctx"], json!({"token": "bo-t"}));
    let events = cluster.events(id).await;
    let call = events
        .iter()
        .find(|e| e["kind"] == "step_dispatched" && e["payload"]["step"] == "call")
        .expect("call dispatched");
    assert_eq!(call["payload"]["with"], json!({"auth": "Bearer bo-t"}));
    worker.stop().await;
    cluster.stop().await;
}
