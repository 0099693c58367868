//! Conditional routing through the API (wiki/playbooks.md, "Branches"): an exclusive branch
//! takes only its first matching arc and skips the others, an inclusive one takes every
//! matching arc and runs their join once, a bad `when` is refused at submit, and one that fails
//! at run time fails its step; against real processes.

use serde_json::{json, Value};

use crate::harness::{assert_problem, example, Cluster, Worker};

fn statuses(execution: &Value) -> Vec<(String, String)> {
    execution["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    let field = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                    (field("name"), field("status"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn count(events: &[Value], kind: &str, step: &str) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["payload"]["step"] == step)
        .count()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// An exclusive branch whose first two arcs both match.
fn exclusive() -> Value {
    json!({"playbook": {"name": "exclusive", "steps": [
        {"name": "route", "action": "noop", "next": {"mode": "exclusive", "arcs": [
            {"step": "first", "when": "{{ input.n > 1 }}"},
            {"step": "second", "when": "input.n > 0"},
            {"step": "fallback"}
        ]}},
        {"name": "first", "action": "noop"},
        {"name": "second", "action": "noop"},
        {"name": "fallback", "action": "noop"}
    ]}, "input": {"n": 5}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_take_their_arcs_skip_the_others_and_join_once() {
    let cluster = Cluster::builder().start().await;
    let worker = Worker::start(cluster.nats.url());

    let id = cluster.submit(&exclusive()).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        statuses(&done),
        pairs(&[
            ("route", "succeeded"),
            ("first", "succeeded"),
            ("second", "skipped"),
            ("fallback", "skipped")
        ])
    );
    let events = cluster.events(id).await;
    let routed: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "step_routed")
        .collect();
    assert_eq!(routed.len(), 1, "{events:?}");
    assert_eq!(routed[0]["payload"]["taken"], json!(["first"]));
    for name in ["second", "fallback"] {
        let skipped = events
            .iter()
            .find(|e| e["kind"] == "step_skipped" && e["payload"]["step"] == name)
            .unwrap_or_else(|| panic!("{name} skipped in {events:?}"));
        assert_eq!(skipped["payload"]["reason"], "not_taken");
        assert_eq!(skipped["payload"]["because"], "route");
        assert_eq!(count(&events, "step_dispatched", name), 0);
    }

    // The example, with every arc matching: all three branches run, their join once.
    let mut inclusive = example("branches.json");
    inclusive["input"] = json!({"size": 500});
    let id = cluster.submit(&inclusive).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        statuses(&done)
            .iter()
            .all(|(_, status)| status == "succeeded"),
        "{done}"
    );
    let events = cluster.events(id).await;
    assert_eq!(count(&events, "step_dispatched", "report"), 1);
    let report = events
        .iter()
        .find(|e| e["kind"] == "step_dispatched" && e["payload"]["step"] == "report")
        .expect("report dispatched");
    assert_eq!(
        report["payload"]["with"],
        json!({"ran": "audit,classify,large,medium"}),
        "the join ran after every branch"
    );

    // As written (size 50): the arc to `large` is not taken, the join runs on the others.
    let id = cluster.submit(&example("branches.json")).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        statuses(&done),
        pairs(&[
            ("classify", "succeeded"),
            ("large", "skipped"),
            ("medium", "succeeded"),
            ("audit", "succeeded"),
            ("report", "succeeded")
        ])
    );
    assert_eq!(
        count(&cluster.events(id).await, "step_dispatched", "report"),
        1
    );

    // A condition that fails when it is evaluated fails its step, and the execution.
    let mut broken = exclusive();
    broken["playbook"]["steps"][0]["next"]["arcs"][0]["when"] = json!("input.missing.deeper");
    let id = cluster.submit(&broken).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "failed", "{done}");
    let route = &done["steps"][0];
    assert!(
        route["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("condition_failed: next.arcs[0].when")),
        "{route}"
    );

    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_condition_or_arc_is_refused_naming_it() {
    let cluster = Cluster::builder().start().await;
    let cases = [
        (json!("{{ input.n >"), "playbook.steps[0].next.arcs[1].when"),
        (
            json!("input.n ~ namespace()"),
            "playbook.steps[0].next.arcs[1].when",
        ),
    ];
    for (when, path) in cases {
        let mut body = exclusive();
        body["playbook"]["steps"][0]["next"]["arcs"][1]["when"] = when;
        let (status, problem) = cluster.post_json("/api/v1/executions", &body).await;
        assert_problem(status, &problem, 400, "invalid_playbook");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(path), "{problem}");
    }
    let mut body = exclusive();
    body["playbook"]["steps"][0]["next"]["arcs"] = json!((0..65)
        .map(|_| json!({"step": "first"}))
        .collect::<Vec<_>>());
    let (status, problem) = cluster.post_json("/api/v1/executions", &body).await;
    assert_problem(status, &problem, 400, "invalid_playbook");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("playbook.steps[0].next.arcs:")),
        "{problem}"
    );
    // The dry run shows the arcs, and orders each target after its source.
    let (status, plan) = cluster
        .post_json("/api/v1/executions?dry_run=true", &exclusive())
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["plan"][0]["name"], "route");
    assert_eq!(plan["plan"][0]["next"]["mode"], "exclusive");
    assert_eq!(plan["plan"][1]["level"], 1);
    cluster.stop().await;
}
