//! Sub-playbooks through the API (wiki/playbooks.md, "Sub-playbooks"; the protocol in
//! wiki/execution-model.md, "Children across shards"): a `playbook` step starts a child
//! execution, usually on another shard, and ends with it; its result is the child's; the tree
//! links both ways and lists by root; cancelling a parent cancels its grandchildren; nesting
//! deeper than `max_child_depth` is refused with its code; and the hand-back survives a server
//! or NATS going away; against real processes.

use noetl_contract::ExecutionId;
use serde_json::{json, Value};

use crate::harness::{assert_problem, id_of, Cluster, Worker};

fn is_terminal(body: &Value) -> bool {
    matches!(
        body["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

async fn ended(cluster: &Cluster, id: ExecutionId) -> Value {
    cluster
        .wait_for_execution(id, "the execution to end", is_terminal)
        .await
}

/// A parent that runs `children` children, each of one step echoing its input, then a step
/// reading the first child's result.
fn parent(children: usize) -> Value {
    let mut steps: Vec<Value> = (0..children)
        .map(|i| {
            json!({"name": format!("child{i}"), "action": "playbook", "with": {
                "input": {"n": i, "who": "{{ input.who }}"},
                "playbook": {"name": "echo", "steps": [
                    {"name": "say", "action": "noop", "set": {"said": "{{ input.who }}-{{ input.n }}"}}
                ]}
            }})
        })
        .collect();
    steps.push(
        json!({"name": "after", "action": "noop", "needs": ["child0"],
                      "with": {"got": "{{ steps.child0.result.ctx.said }}"}}),
    );
    json!({"playbook": {"name": "parent", "steps": steps}, "input": {"who": "ann"}})
}

fn terminal_events(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(
                e["kind"].as_str(),
                Some("execution_succeeded" | "execution_failed" | "execution_cancelled")
            )
        })
        .count()
}

/// Checks a parent that succeeded: each child ended once, linked both ways, and its result is
/// in the parent; returns how many children ran on another shard than their parent.
async fn check_family(cluster: &Cluster, parent: &Value) -> usize {
    let parent_id = id_of(parent);
    assert_eq!(parent["status"], "succeeded", "{parent}");
    assert_eq!(terminal_events(&cluster.events(parent_id).await), 1);
    let children = parent["children"].as_array().expect("children").clone();
    let mut elsewhere = 0;
    for (i, step) in parent["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("child")))
        .enumerate()
    {
        let child_id: ExecutionId = step["child_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a child id: {step}"));
        assert!(children.contains(&json!(child_id.to_string())), "{parent}");
        let (status, child) = cluster
            .get_json(&format!("/api/v1/executions/{child_id}"))
            .await;
        assert_eq!(status, 200, "{child}");
        assert_eq!(child["status"], "succeeded", "{child}");
        assert_eq!(child["parent_id"], json!(parent_id.to_string()), "{child}");
        assert_eq!(child["root_id"], json!(parent_id.to_string()), "{child}");
        assert_eq!(terminal_events(&cluster.events(child_id).await), 1);
        assert_eq!(
            step["result"],
            json!({"execution_id": child_id.to_string(), "status": "succeeded",
                   "steps": {"say": {}}, "ctx": {"said": format!("ann-{i}")}}),
            "{parent}"
        );
        if child["shard"] != parent["shard"] {
            elsewhere += 1;
        }
    }
    elsewhere
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_completes_after_its_children_on_other_shards_with_their_results() {
    let cluster = Cluster::builder().shards(2).start().await;
    let worker = Worker::start(cluster.nats.url());

    // Sixteen children: the chance that none lands on another shard than its parent is 2^-16.
    let mut parents = Vec::new();
    for _ in 0..4 {
        parents.push(cluster.submit(&parent(4)).await);
    }
    let mut elsewhere = 0;
    for &id in &parents {
        let done = ended(&cluster, id).await;
        elsewhere += check_family(&cluster, &done).await;
        let after = done["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "after"))
            .expect("step after");
        let logged = cluster.events(id).await;
        let with = logged
            .iter()
            .find(|e| e["kind"] == "step_dispatched" && e["payload"]["step"] == "after")
            .map(|e| e["payload"]["with"].clone());
        assert_eq!(with, Some(json!({"got": "ann-0"})), "{done}");
        assert_eq!(after["status"], "succeeded", "{done}");
    }
    assert!(
        elsewhere > 0,
        "no child ran on another shard than its parent"
    );

    // The listing finds a tree by its root: the parent and its four children.
    let root = parents[0];
    let (status, page) = cluster
        .get_json(&format!("/api/v1/executions?root_id={root}"))
        .await;
    assert_eq!(status, 200, "{page}");
    let listed = page["executions"].as_array().expect("executions");
    assert_eq!(listed.len(), 5, "{page}");
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_deeper_than_max_child_depth_is_refused_with_its_code() {
    let cluster = Cluster::builder()
        .tune(|server, _| server.max_child_depth = 1)
        .start()
        .await;
    let leaf = json!({"name": "leaf", "steps": [{"name": "n", "action": "noop"}]});
    let middle = json!({"name": "middle", "steps": [
        {"name": "run", "action": "playbook", "with": {"playbook": leaf}}
    ]});
    let deep = json!({"playbook": {"name": "top", "steps": [
        {"name": "run", "action": "playbook", "with": {"playbook": middle}}
    ]}});
    let (status, body) = cluster.post_json("/api/v1/executions", &deep).await;
    assert_problem(status, &body, 400, "nesting_too_deep");
    cluster.stop().await;
}
