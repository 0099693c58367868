//! Sub-playbooks through the API (wiki/playbooks.md, "Sub-playbooks"; the protocol in
//! wiki/execution-model.md, "Children across shards"): a `playbook` step starts a child
//! execution, usually on another shard, and ends with it; its result is the child's; the tree
//! links both ways and lists by root; cancelling a parent cancels its grandchildren; nesting
//! deeper than `max_child_depth` is refused with its code; and the hand-back survives a server
//! or NATS going away; against real processes.

use noetl_contract::ExecutionId;
use serde_json::{json, Value};

use crate::api::noetlctl;
use crate::harness::{assert_problem, describe, id_of, stdout, Cluster, Token, Worker};

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
        let done = cluster.wait_for_end(id).await;
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
async fn nesting_deeper_than_max_child_depth_is_refused_with_its_code_and_a_dry_run_shows_the_child(
) {
    let cluster = Cluster::builder()
        .tune(|server, _| server.max_child_depth = 1)
        .start()
        .await;
    let leaf = json!({"name": "leaf", "steps": [{"name": "n", "action": "noop"}]});
    let middle = json!({"name": "middle", "steps": [
        {"name": "run", "action": "playbook", "with": {"playbook": leaf.clone()}}
    ]});
    let deep = json!({"playbook": {"name": "top", "steps": [
        {"name": "run", "action": "playbook", "with": {"playbook": middle}}
    ]}});
    let (status, body) = cluster.post_json("/api/v1/executions", &deep).await;
    assert_problem(status, &body, 400, "nesting_too_deep");
    // Within the limit, a dry run shows the child with its own plan.
    let (status, dry) = cluster
        .post_json(
            "/api/v1/executions?dry_run=true",
            &json!({"playbook": runs("top", leaf)}),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    let child = &dry["plan"][0]["child"];
    assert_eq!(child["name"], "leaf", "{dry}");
    assert_eq!(child["plan"][0]["name"], "n", "{dry}");
    cluster.stop().await;
}

/// The id a step's `child_id` names, once it has one.
async fn child_of(cluster: &Cluster, id: ExecutionId, step: &str) -> ExecutionId {
    let body = cluster
        .wait_for_execution(id, "the step to start its child", |body| {
            body["steps"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["name"] == step && s["child_id"].is_string())
            })
        })
        .await;
    let steps = body["steps"].as_array().expect("steps");
    let step = steps.iter().find(|s| s["name"] == step).expect("the step");
    step["child_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a child id")
}

async fn running(cluster: &Cluster, id: ExecutionId, step: &str) {
    cluster
        .wait_for_execution(id, "the step to run", |body| {
            body["steps"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["name"] == step && s["status"] == "running")
            })
        })
        .await;
}

/// A playbook whose step `run` runs `inner` as a child.
fn runs(name: &str, inner: Value) -> Value {
    json!({"name": name, "steps": [
        {"name": "run", "action": "playbook", "with": {"playbook": inner}}
    ]})
}

fn sleeper(ms: u64) -> Value {
    json!({"name": "sleeper", "steps": [{"name": "nap", "action": "sleep", "with": {"ms": ms}}]})
}

/// A two-shard cluster and a worker running `top` → `middle` → a sleeper of `ms`, and the ids
/// of the three once the grandchild is started.
async fn three_levels(ms: u64) -> (Cluster, Worker, [ExecutionId; 3]) {
    let cluster = Cluster::builder().shards(2).start().await;
    let worker = Worker::start(cluster.nats.url());
    let tree = runs("top", runs("middle", sleeper(ms)));
    let parent = cluster.submit(&json!({"playbook": tree})).await;
    let child = child_of(&cluster, parent, "run").await;
    let grandchild = child_of(&cluster, child, "run").await;
    (cluster, worker, [parent, child, grandchild])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_parent_cancels_its_running_grandchild() {
    let (cluster, worker, [parent, child, grandchild]) = three_levels(600_000).await;
    running(&cluster, grandchild, "nap").await;

    let (status, body) = cluster
        .post_json(&format!("/api/v1/executions/{parent}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    for id in [parent, child, grandchild] {
        let done = cluster.wait_for_end(id).await;
        assert_eq!(done["status"], "cancelled", "{done}");
        assert_eq!(terminal_events(&cluster.events(id).await), 1, "{id}");
    }
    let (_, grandchild_view) = cluster
        .get_json(&format!("/api/v1/executions/{grandchild}"))
        .await;
    assert_eq!(grandchild_view["root_id"], json!(parent.to_string()));
    assert_eq!(grandchild_view["parent_id"], json!(child.to_string()));
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noetlctl_get_prints_the_tree_of_children_under_their_step_and_list_root_lists_it() {
    let (cluster, worker, [parent, child, grandchild]) = three_levels(10).await;
    let done = cluster.wait_for_end(parent).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let got = noetlctl(&cluster.base_url, &["get", &parent.to_string()]).await;
    assert_eq!(got.status.code(), Some(0), "{}", describe(&got));
    let out = stdout(&got);
    let lines: Vec<&str> = out.lines().collect();
    let run = lines
        .iter()
        .position(|l| l.starts_with("run "))
        .unwrap_or_else(|| panic!("the step row: {out}"));
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (child, grandchild) = (child.to_string(), grandchild.to_string());
    assert_eq!(
        words(lines[run + 1]),
        [
            "└",
            &child,
            "succeeded",
            "-",
            "-",
            "child",
            "of",
            "run:",
            "middle"
        ],
        "{out}"
    );
    assert!(
        lines[run + 2].starts_with(&format!("    └ {grandchild} ")),
        "{out}"
    );
    assert!(lines[run + 2].ends_with("child of run: sleeper"), "{out}");

    let root = parent.to_string();
    let listed = noetlctl(&cluster.base_url, &["list", "--root", &root, "--json"]).await;
    let page: Value = serde_json::from_slice(&listed.stdout).expect("list --json prints JSON");
    let mut ids: Vec<&str> = page["executions"]
        .as_array()
        .expect("executions")
        .iter()
        .filter_map(|e| e["execution_id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut tree = vec![root.as_str(), child.as_str(), grandchild.as_str()];
    tree.sort_unstable();
    assert_eq!(ids, tree, "{page}");
    worker.stop().await;
    cluster.stop().await;
}

/// The shard an execution is stored on, by its view, once it is (a child is committed after
/// its parent's step names it).
async fn shard_of(cluster: &Cluster, id: ExecutionId) -> u32 {
    let body = cluster
        .wait_for_execution(id, "the execution to be committed", |_| true)
        .await;
    body["shard"].as_u64().expect("a shard") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hand_back_survives_both_servers_killed_and_nats_down() {
    let mut cluster = Cluster::builder().shards(2).server_process().start().await;
    cluster.kill_server();
    let servers = [
        cluster.start_server_serving(&[0]),
        cluster.start_server_serving(&[1]),
    ];
    cluster.wait_ready("a server for each shard").await;
    let worker = Worker::start(cluster.nats.url());

    // A parent whose child is on the other shard (each try is even odds).
    let body = json!({"playbook": runs("parent", sleeper(1_500))});
    let (parent, child, parent_shard) = loop {
        let parent = cluster.submit(&body).await;
        let child = child_of(&cluster, parent, "run").await;
        let (p, c) = (
            shard_of(&cluster, parent).await,
            shard_of(&cluster, child).await,
        );
        if p != c {
            break (parent, child, p);
        }
        cluster.wait_for_end(parent).await;
    };
    running(&cluster, child, "nap").await;
    // The parent's server dies: the child ends, and its return waits in the child's outbox.
    cluster.kill_server_at(servers[parent_shard as usize]);
    let done = cluster.wait_for_end(child).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // Then the child's server dies with the return unsent, and NATS goes down.
    cluster.kill_server_at(servers[1 - parent_shard as usize]);
    cluster.nats.kill();
    cluster.start_server_serving(&[0]);
    cluster.start_server_serving(&[1]);
    cluster.nats.restart();
    cluster.wait_ready("both servers back").await;

    let finished = cluster.wait_for_end(parent).await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    let step = &finished["steps"][0];
    assert_eq!(step["child_id"], json!(child.to_string()), "{finished}");
    assert_eq!(step["result"]["status"], "succeeded", "{finished}");
    assert_eq!(terminal_events(&cluster.events(parent).await), 1);
    assert_eq!(terminal_events(&cluster.events(child).await), 1);
    let succeeded = cluster
        .events(parent)
        .await
        .iter()
        .filter(|e| e["kind"] == "step_succeeded")
        .count();
    assert_eq!(succeeded, 1, "the return was applied once");
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_child_resolves_in_the_parents_tenant_and_inherits_it() {
    const TOKENS: [Token; 2] = [
        Token::new("a", "tenant-a", &["submit", "read", "admin"], "token-a"),
        Token::new("b", "tenant-b", &["submit", "read", "admin"], "token-b"),
    ];
    let cluster = Cluster::builder().shards(2).tokens(&TOKENS).start().await;
    let worker = Worker::start(cluster.nats.url());
    let (a, b) = (cluster.with_token("token-a"), cluster.with_token("token-b"));
    let (status, published) = a.post_json("/api/v1/playbooks", &sleeper(1)).await;
    assert_eq!(status, 201, "{published}");

    let parent = json!({"playbook": runs("parent", json!({"name": "sleeper"}))});
    let (status, body) = b.post_json("/api/v1/executions", &parent).await;
    assert_problem(status, &body, 404, "playbook_not_found");

    let id = a.submit(&parent).await;
    let done = a.wait_for_end(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let child = done["steps"][0]["child_id"].as_str().expect("a child");
    let (status, view) = a.get_json(&format!("/api/v1/executions/{child}")).await;
    assert_eq!(
        (status, &view["playbook_name"]),
        (200, &json!("sleeper")),
        "{view}"
    );
    let (status, _) = b.get_json(&format!("/api/v1/executions/{child}")).await;
    assert_eq!(status, 404, "another tenant does not see the child");
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_return_changes_nothing_and_the_real_one_applies_once() {
    use noetl_contract::child::ChildReturn;
    use noetl_contract::command::ReportAck;
    use noetl_contract::subject::{shard_request, ShardRequest};

    let cluster = Cluster::builder().shards(2).start().await;
    let worker = Worker::start(cluster.nats.url());
    let parent = cluster
        .submit(&json!({"playbook": runs("parent", sleeper(1_500))}))
        .await;
    let child = child_of(&cluster, parent, "run").await;
    running(&cluster, child, "nap").await;
    let token = cluster.attempt_token(parent, 0).await.expect("a token");

    let shard = noetl_contract::shard_of(parent, cluster.shard_count);
    let client = crate::harness::connect(cluster.nats.url()).await;
    let subject = shard_request(ShardRequest::Return, shard, parent);
    let another: ExecutionId = (child.get() + 1).to_string().parse().expect("an id");
    // Without the token, and with it but from another child than the step started.
    for (from, token) in [(child, None), (another, Some(token))] {
        let forged = ChildReturn {
            child_id: from,
            report: crate::harness::forged(
                parent,
                noetl_contract::step::Attempt::FIRST,
                token,
                None,
                true,
            )
            .0,
        };
        let wait = std::time::Duration::from_secs(5);
        let ack: ReportAck = noetl_bus::request(&client, subject.clone(), &forged, wait)
            .await
            .expect("the shard answers");
        assert_eq!(ack, ReportAck::Stale, "a forged return is not recorded");
    }
    let done = cluster.wait_for_end(parent).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"][0]["result"]["status"], "succeeded", "{done}");
    assert!(done["steps"][0]["result"]["forged"].is_null(), "{done}");
    worker.stop().await;
    cluster.stop().await;
}
