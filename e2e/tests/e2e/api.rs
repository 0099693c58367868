//! The public API beyond one execution: listing across shards, Idempotency-Key, the playbook
//! catalog and dry runs, against real NATS and PostgreSQL.

use std::collections::HashSet;
use std::process::Output;

use futures::StreamExt;
use noetl_contract::{shard_of, ExecutionId, IdGenerator, NodeId};
use serde_json::{json, Value};

use crate::harness::{
    assert_problem, describe, example, hello_request, id_of, stdout, Api, Cluster, Worker,
};

/// Stores `count` executions straight into their shard databases (the bulk path: what the
/// listing reads is the databases), with ids minted an hour ago, one per millisecond; with
/// `only`, just those that route to that shard.
async fn bulk_load_into(cluster: &Cluster, count: usize, only: Option<u32>) -> Vec<ExecutionId> {
    let mut generator = IdGenerator::new(NodeId::try_from(1000).expect("valid node"));
    let start = noetl_bus::unix_now_ms() - 3_600_000;
    let ids: Vec<ExecutionId> = (0..count)
        .map(|i| generator.next_id(start + i as i64).expect("mint"))
        .filter(|id| only.is_none_or(|shard| shard_of(*id, cluster.shard_count).get() == shard))
        .collect();
    for shard in cluster.shard_count.shards() {
        if only.is_some_and(|only| only != shard.get()) {
            continue;
        }
        let mine: Vec<i64> = ids
            .iter()
            .filter(|id| shard_of(**id, cluster.shard_count) == shard)
            .map(|id| id.get())
            .collect();
        let pool = cluster.pool(shard.get()).await;
        sqlx::query(
            "INSERT INTO executions (execution_id, playbook_name, playbook, status, labels)
             SELECT id, 'bulk', '{}'::jsonb, 'succeeded', '{\"origin\": \"bulk\"}'::jsonb
             FROM UNNEST($1::bigint[]) AS t(id)",
        )
        .bind(&mine)
        .execute(&pool)
        .await
        .expect("bulk insert");
        pool.close().await;
    }
    ids
}

async fn bulk_load(cluster: &Cluster, count: usize) -> Vec<ExecutionId> {
    bulk_load_into(cluster, count, None).await
}

async fn page(cluster: &Cluster, query: &str) -> Value {
    let (status, body) = cluster
        .get_json(&format!("/api/v1/executions?{query}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn ids_of(page: &Value) -> Vec<ExecutionId> {
    page["executions"]
        .as_array()
        .expect("an array of executions")
        .iter()
        .map(id_of)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_visits_every_execution_once_newest_first_while_submits_continue() {
    let cluster = Cluster::builder().shards(4).start().await;
    let existing: HashSet<ExecutionId> = bulk_load(&cluster, 10_000).await.into_iter().collect();

    // Submits keep arriving while the client pages.
    let stop = tokio_util::sync::CancellationToken::new();
    let submitter = {
        let (api, stop) = (Api::clone(&cluster), stop.clone());
        tokio::spawn(async move {
            let mut created = 0;
            while !stop.is_cancelled() {
                let response = api.submit_hello().await.expect("submit");
                assert_eq!(response.status().as_u16(), 201);
                created += 1;
            }
            created
        })
    };

    let mut visited = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("limit=100&cursor={cursor}"),
            None => "limit=100".to_owned(),
        };
        let body = page(&cluster, &query).await;
        assert_eq!(body["partial"], false, "{body}");
        let ids = ids_of(&body);
        assert!(ids.len() <= 100);
        visited.extend(ids);
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    stop.cancel();
    let created_meanwhile = submitter.await.expect("submitter");

    assert!(
        visited.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first, and never the same execution twice"
    );
    let seen: HashSet<ExecutionId> = visited.iter().copied().collect();
    assert!(
        existing.is_subset(&seen),
        "{} existing executions never listed",
        existing.difference(&seen).count()
    );
    println!(
        "{pages} pages, {} executions listed, {created_meanwhile} submitted while paging",
        visited.len()
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_by_status_labels_playbook_and_time() {
    let cluster = Cluster::builder().shards(2).start().await;
    let bulk = bulk_load(&cluster, 50).await;
    let mut mine = Vec::new();
    for team in ["data", "web", "data"] {
        let mut request = hello_request();
        request["labels"] = json!({"team": team});
        let (status, body) = cluster.post_json("/api/v1/executions", &request).await;
        assert_eq!(status, 201, "{body}");
        mine.push((id_of(&body), team));
    }

    let data = ids_of(&page(&cluster, "labels=team%3Ddata").await);
    let expected: Vec<ExecutionId> = mine
        .iter()
        .rev()
        .filter(|(_, t)| *t == "data")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(data, expected);
    let hello = ids_of(&page(&cluster, "playbook=hello&limit=1000").await);
    assert_eq!(hello.len(), 3);
    let succeeded = ids_of(&page(&cluster, "status=succeeded&limit=1000").await);
    assert_eq!(
        succeeded.len(),
        bulk.len(),
        "only the bulk rows are succeeded (no worker runs)"
    );
    // The bulk rows were minted an hour ago: a range ending half an hour ago has only them.
    let half_hour_ago = time::OffsetDateTime::now_utc() - time::Duration::minutes(30);
    let before = half_hour_ago
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let old = ids_of(&page(&cluster, &format!("limit=1000&created_before={before}")).await);
    assert_eq!(old.len(), bulk.len());
    let recent = ids_of(&page(&cluster, &format!("limit=1000&created_after={before}")).await);
    assert_eq!(recent.len(), mine.len());

    for bad in [
        "limit=0",
        "limit=1001",
        "status=done",
        "cursor=nope",
        "labels=team",
        "created_after=yesterday",
        "colour=red",
    ] {
        let (status, body) = cluster.get_json(&format!("/api/v1/executions?{bad}")).await;
        assert_problem(status, &body, 400, "invalid_request");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_does_not_answer_makes_the_listing_partial_and_names_it() {
    // Nobody serves shard 1.
    let cluster = Cluster::builder().shards(2).serve(&[0]).start().await;
    bulk_load_into(&cluster, 20, Some(0)).await;
    let body = page(&cluster, "limit=100").await;
    assert_eq!(body["partial"], true, "{body}");
    assert_eq!(body["missing_shards"], json!([1]), "{body}");
    let ids = ids_of(&body);
    assert!(!ids.is_empty(), "shard 0's executions are still listed");
    assert!(ids
        .iter()
        .all(|id| shard_of(*id, cluster.shard_count).get() == 0));
    cluster.stop().await;
}

async fn post_with_key(cluster: &Cluster, key: &str, body: &Value) -> (u16, Option<String>, Value) {
    let response = cluster
        .http
        .post(cluster.url("/api/v1/executions"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotency-replayed")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        replayed,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_with_one_idempotency_key_create_one_execution() {
    let cluster = Cluster::builder().shards(2).start().await;
    let body = hello_request();
    let answers: Vec<(u16, Option<String>, Value)> = futures::stream::iter(0..50)
        .map(|_| post_with_key(&cluster, "order-4711", &body))
        .buffer_unordered(50)
        .collect()
        .await;
    let ids: HashSet<ExecutionId> = answers.iter().map(|(_, _, body)| id_of(body)).collect();
    assert_eq!(ids.len(), 1, "one execution for one key: {ids:?}");
    let first = answers
        .iter()
        .filter(|(status, _, _)| *status == 201)
        .count();
    let replays = answers
        .iter()
        .filter(|(status, replayed, _)| *status == 200 && replayed.as_deref() == Some("true"))
        .count();
    assert_eq!((first, replays), (1, 49));
    let stored: usize = cluster.stored_ids().await.values().map(Vec::len).sum();
    assert_eq!(stored, 1);

    // A later retry gets the same execution; another body under the key is refused.
    let (status, replayed, again) = post_with_key(&cluster, "order-4711", &body).await;
    assert_eq!((status, replayed.as_deref()), (200, Some("true")));
    assert_eq!(id_of(&again), *ids.iter().next().expect("one id"));
    let mut other = hello_request();
    other["input"] = json!({"who": "someone else"});
    let (status, _, refused) = post_with_key(&cluster, "order-4711", &other).await;
    assert_problem(status, &refused, 422, "idempotency_key_reused");
    let (status, _, bad) = post_with_key(&cluster, "", &body).await;
    assert_eq!(status, 400, "{bad}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_playbooks_are_versioned_and_executions_keep_the_version_they_ran() {
    let cluster = Cluster::builder().start().await;
    let mut playbook = hello_request()["playbook"].clone();
    playbook["name"] = json!("nightly");
    let (status, v1) = cluster.post_json("/api/v1/playbooks", &playbook).await;
    assert_eq!((status, &v1["version"]), (201, &json!(1)), "{v1}");
    playbook["steps"][0]["with"] = json!({"note": "v2"});
    let (status, v2) = cluster.post_json("/api/v1/playbooks", &playbook).await;
    assert_eq!((status, &v2["version"]), (201, &json!(2)), "{v2}");

    let (_, list) = cluster.get_json("/api/v1/playbooks").await;
    assert_eq!(
        list["playbooks"],
        json!([{"name": "nightly", "latest_version": 2, "updated_at": list["playbooks"][0]["updated_at"]}])
    );
    let (status, latest) = cluster.get_json("/api/v1/playbooks/nightly").await;
    assert_eq!((status, &latest["version"]), (200, &json!(2)), "{latest}");
    let (status, first) = cluster
        .get_json("/api/v1/playbooks/nightly/versions/1")
        .await;
    assert_eq!(
        (status, &first["playbook"]["steps"][0].get("with")),
        (200, &None),
        "{first}"
    );

    for (reference, version) in [
        (json!({"name": "nightly"}), 2),
        (json!({"name": "nightly", "version": 1}), 1),
    ] {
        let (status, body) = cluster
            .post_json(
                "/api/v1/executions",
                &json!({"playbook": reference, "input": {"who": "catalog"}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (_, execution) = cluster
            .get_json(&format!("/api/v1/executions/{}", id_of(&body)))
            .await;
        assert_eq!(execution["playbook_version"], json!(version), "{execution}");
        assert_eq!(execution["playbook_name"], "nightly");
    }
    for (path, body) in [
        (
            "/api/v1/executions",
            json!({"playbook": {"name": "missing"}}),
        ),
        (
            "/api/v1/executions",
            json!({"playbook": {"name": "nightly", "version": 9}}),
        ),
    ] {
        let (status, problem) = cluster.post_json(path, &body).await;
        assert_problem(status, &problem, 404, "playbook_not_found");
    }
    // Names no playbook can have are not found, without asking NATS (schemathesis found the
    // empty one answered 503).
    let long = "a".repeat(2_000);
    for body in [
        json!({"playbook": {"name": ""}}),
        json!({"playbook": {"name": "", "version": 1}}),
        json!({"playbook": {"name": long}}),
    ] {
        let (status, problem) = cluster.post_json("/api/v1/executions", &body).await;
        assert_problem(status, &problem, 404, "playbook_not_found");
    }
    let (status, problem) = cluster.get_json(&format!("/api/v1/playbooks/{long}")).await;
    assert_eq!(status, 404, "{problem}");
    let (status, problem) = cluster.get_json("/api/v1/playbooks/%FF").await;
    assert_problem(status, &problem, 400, "invalid_request");
    let (status, problem) = cluster
        .get_json("/api/v1/playbooks/nightly/versions/x")
        .await;
    assert_eq!(status, 400, "{problem}");
    let (status, problem) = cluster
        .post_json("/api/v1/playbooks", &json!({"name": "bad", "steps": []}))
        .await;
    assert_problem(status, &problem, 400, "invalid_playbook");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_the_id_shard_and_plan_and_stores_nothing() {
    let cluster = Cluster::builder().shards(2).start().await;
    // PostgreSQL's jsonb cannot store U+0000: refused up front (schemathesis found it failing
    // the shard's whole commit batch).
    for (field, value) in [
        ("input", json!({"k": "a\u{0}b"})),
        ("labels", json!({"k": "\u{0}"})),
    ] {
        let mut request = hello_request();
        request[field] = value;
        let (status, problem) = cluster.post_json("/api/v1/executions", &request).await;
        assert_problem(status, &problem, 400, "invalid_request");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with(field)),
            "{problem}"
        );
    }
    let diamond = example("diamond.json");
    let (status, body) = cluster
        .post_json("/api/v1/executions?dry_run=true", &diamond)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true);
    let id = id_of(&body);
    assert_eq!(
        body["shard"],
        json!(shard_of(id, cluster.shard_count).get())
    );
    let plan: Vec<(String, u64)> = body["plan"]
        .as_array()
        .expect("plan")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").to_owned(),
                s["level"].as_u64().expect("level"),
            )
        })
        .collect();
    assert_eq!(
        plan,
        vec![
            ("a".into(), 0),
            ("b".into(), 1),
            ("c".into(), 1),
            ("d".into(), 2)
        ]
    );
    let stored: usize = cluster.stored_ids().await.values().map(Vec::len).sum();
    assert_eq!(stored, 0, "a dry run persists nothing");
    let (status, _) = cluster.get_json(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(status, 404);
    let (status, problem) = cluster
        .post_json(
            "/api/v1/executions?dry_run=true",
            &json!({"playbook": {"name": "x", "steps": [{"name": "a", "action": "warp"}]}}),
        )
        .await;
    assert_problem(status, &problem, 400, "invalid_playbook");
    cluster.stop().await;
}

/// Runs `noetlctl --gateway-url {gateway_url} {args}` off the runtime's threads.
pub(crate) async fn noetlctl(gateway_url: &str, args: &[&str]) -> Output {
    let gateway_url = gateway_url.to_owned();
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::harness::noetlctl("--gateway-url", &gateway_url, &args)
    })
    .await
    .expect("noetlctl")
}

/// `noetlctl submit --wait` of `what` (a file, or `--playbook NAME`), exiting with `code`.
async fn submit_and_wait(gateway_url: &str, what: &[&str], code: i32) -> Output {
    let mut args = vec!["submit", "--wait", "--timeout", "60s"];
    args.extend_from_slice(what);
    let output = noetlctl(gateway_url, &args).await;
    assert_eq!(output.status.code(), Some(code), "{}", describe(&output));
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noetlctl_submit_wait_exits_by_how_the_execution_ended() {
    let cluster = Cluster::builder().shards(2).start().await;
    let worker = Worker::start(cluster.nats.url());
    let gateway = &cluster.base_url;
    let diamond = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/diamond.json");
    let succeeded = submit_and_wait(gateway, &[diamond], 0).await;
    assert!(
        stdout(&succeeded).contains("succeeded"),
        "{}",
        describe(&succeeded)
    );

    let failing = tempfile::Builder::new()
        .suffix(".json")
        .tempfile()
        .expect("a temporary file");
    std::fs::write(
        failing.path(),
        r#"{"name": "doomed", "steps": [{"name": "a", "action": "fail"}, {"name": "b", "action": "noop", "needs": ["a"]}]}"#,
    )
    .expect("write the playbook");
    let failing = failing.path().to_str().expect("utf-8 path");
    submit_and_wait(gateway, &[failing], 6).await;
    // `get` says why `b` was skipped, from the event log.
    let listed = noetlctl(gateway, &["list", "--json"]).await;
    let body: Value = serde_json::from_slice(&listed.stdout).expect("list --json prints JSON");
    let doomed = body["executions"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["playbook_name"] == "doomed"))
        .and_then(|e| e["execution_id"].as_str())
        .unwrap_or_else(|| panic!("the failed execution is listed: {body}"))
        .to_owned();
    let got = noetlctl(gateway, &["get", &doomed]).await;
    assert_eq!(got.status.code(), Some(0), "{}", describe(&got));
    assert!(
        stdout(&got).contains("skipped: dependency_failed after a"),
        "{}",
        describe(&got)
    );

    // The YAML example goes through the catalog and runs by name.
    let nightly = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/nightly.yaml");
    let pushed = noetlctl(gateway, &["playbook", "push", nightly]).await;
    assert_eq!(pushed.status.code(), Some(0), "{}", describe(&pushed));
    submit_and_wait(gateway, &["--playbook", "nightly"], 0).await;

    let listed = noetlctl(gateway, &["list", "--json"]).await;
    assert_eq!(listed.status.code(), Some(0), "{}", describe(&listed));
    let body: Value = serde_json::from_slice(&listed.stdout).expect("list --json prints JSON");
    assert_eq!(
        body["executions"].as_array().map(Vec::len),
        Some(3),
        "{body}"
    );
    worker.stop().await;
    cluster.stop().await;
}
