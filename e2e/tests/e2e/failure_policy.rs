//! Failure policy through the API (wiki/playbooks.md, "Failure policy"): a `goto` loop stops at
//! the execution's `max_gotos` with `goto_budget_exceeded`, `continue` lets the execution go on
//! with the error as the step's result, rules are tried in order over `attempt`, and bad rules
//! are refused at submit naming their path; against real processes.

use serde_json::{json, Value};

use crate::harness::{assert_problem, Cluster, Worker};

fn count(events: &[Value], kind: &str, step: &str) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["payload"]["step"] == step)
        .count()
}

/// `prepare` runs, then `flaky` fails every time and goes back to `prepare`, at most 3 times.
fn goto_loop() -> Value {
    json!({"playbook": {"name": "goto-loop", "max_gotos": 3, "steps": [
        {"name": "prepare", "action": "noop"},
        {"name": "flaky", "action": "fail", "needs": ["prepare"],
         "with": {"message": "flaky backend"},
         "on_error": [
             {"when": "'flaky' in error", "then": "goto:prepare"},
             {"then": "fail"}
         ]}
    ]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_rules_goto_within_the_budget_continue_and_fail() {
    let cluster = Cluster::builder().start().await;
    let worker = Worker::start(cluster.nats.url());

    let id = cluster.submit(&goto_loop()).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "failed", "{done}");
    let flaky = &done["steps"][1];
    assert!(
        flaky["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("goto_budget_exceeded: ") && e.contains("flaky backend")),
        "{flaky}"
    );
    let events = cluster.events(id).await;
    assert_eq!(count(&events, "step_goto", "flaky"), 3, "{events:?}");
    assert_eq!(count(&events, "step_dispatched", "prepare"), 4);
    assert_eq!(count(&events, "step_dispatched", "flaky"), 4);
    let terminal = events
        .iter()
        .filter(|e| {
            e["kind"].as_str().is_some_and(|k| {
                k.starts_with("execution_") && k != "execution_created" && k != "execution_started"
            })
        })
        .count();
    assert_eq!(terminal, 1, "{events:?}");

    // `continue`: the failing step succeeds with its error, and the next step reads it.
    let body = json!({"playbook": {"name": "continue", "steps": [
        {"name": "optional", "action": "fail", "with": {"message": "not there"},
         "on_error": [{"then": "continue"}]},
        {"name": "after", "action": "noop", "needs": ["optional"],
         "with": {"why": "{{ steps.optional.result.error }}"}}
    ]}});
    let id = cluster.submit(&body).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"][0]["status"], "succeeded");
    assert_eq!(done["steps"][0]["result"], json!({"error": "not there"}));
    let events = cluster.events(id).await;
    assert_eq!(count(&events, "step_continued", "optional"), 1);
    let after = events
        .iter()
        .find(|e| e["kind"] == "step_dispatched" && e["payload"]["step"] == "after")
        .expect("after dispatched");
    assert_eq!(after["payload"]["with"], json!({"why": "not there"}));

    // Rules in order: retry the first attempt only, then fail, with retries still left.
    let body = json!({"playbook": {"name": "in-order", "steps": [
        {"name": "s", "action": "fail", "with": {"until_attempt": 3},
         "retry": {"max_attempts": 5},
         "on_error": [{"when": "attempt < 2", "then": "retry"}, {"then": "fail"}]}
    ]}});
    let id = cluster.submit(&body).await;
    let done = cluster.wait_for_end(id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["steps"][0]["attempt"], 2, "{done}");

    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused_naming_their_path() {
    let cluster = Cluster::builder().start().await;
    let cases = [
        (
            json!([{"then": "explode"}]),
            "playbook.steps[1].on_error[0].then",
        ),
        (
            json!([{"then": "goto:nowhere"}]),
            "playbook.steps[1].on_error[0].then",
        ),
        (
            json!([{"when": "error ~", "then": "retry"}]),
            "playbook.steps[1].on_error[0].when",
        ),
        (
            json!((0..17).map(|_| json!({"then": "fail"})).collect::<Vec<_>>()),
            "playbook.steps[1].on_error",
        ),
    ];
    for (rules, path) in cases {
        let mut body = goto_loop();
        body["playbook"]["steps"][1]["on_error"] = rules;
        let (status, problem) = cluster.post_json("/api/v1/executions", &body).await;
        assert_problem(status, &problem, 400, "invalid_playbook");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(&format!("{path}:")), "{path}: {problem}");
    }
    // A goto only leads back: to the step itself or one it comes after.
    let mut body = goto_loop();
    body["playbook"]["steps"][0]["on_error"] = json!([{"then": "goto:flaky"}]);
    let (status, problem) = cluster.post_json("/api/v1/executions", &body).await;
    assert_problem(status, &problem, 400, "invalid_playbook");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("playbook.steps[0].on_error[0].then:")),
        "{problem}"
    );
    let mut body = goto_loop();
    body["playbook"]["max_gotos"] = json!(101);
    let (status, problem) = cluster.post_json("/api/v1/executions", &body).await;
    assert_problem(status, &problem, 400, "invalid_playbook");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("playbook.max_gotos:")),
        "{problem}"
    );
    cluster.stop().await;
}
