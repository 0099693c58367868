//! Submit → shard → Postgres over real NATS, through the gateway.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use noetl_contract::message::{SubmitCommand, SubmitReceipt, WireErrorCode};
use noetl_contract::subject::{self, ShardRequest};
use noetl_contract::{shard_of, ExecutionId, IdGenerator, NodeId, ShardId};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::harness::{connect, hello_request, id_of, Cluster};

async fn submit_many_and_check_placement(shards: u32, executions: usize) {
    let cluster = Cluster::builder().shards(shards).start().await;
    let body = hello_request();
    let ids: Vec<_> = futures::stream::iter(0..executions)
        .map(|_| cluster.post_json("/api/v1/executions", &body))
        .buffer_unordered(32)
        .map(|(status, response)| {
            assert_eq!(status, 201, "{response}");
            let id = id_of(&response);
            assert_eq!(
                response["shard"],
                json!(shard_of(id, cluster.shard_count).get())
            );
            id
        })
        .collect()
        .await;
    let unique: HashSet<_> = ids.iter().copied().collect();
    assert_eq!(unique.len(), executions, "ids are unique");

    let stored = cluster.stored_ids().await;
    let mut seen = HashSet::new();
    for (shard, stored_ids) in &stored {
        for id in stored_ids {
            assert_eq!(
                shard_of(*id, cluster.shard_count),
                *shard,
                "{id} is in the wrong shard"
            );
            assert!(seen.insert(*id), "{id} is stored in more than one shard");
        }
    }
    assert_eq!(seen, unique, "exactly the submitted executions are stored");
    assert!(
        stored.values().all(|ids| !ids.is_empty()),
        "every shard received some executions"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_land_only_in_their_shard_with_two_shards() {
    submit_many_and_check_placement(2, 1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_land_only_in_their_shard_with_four_shards() {
    submit_many_and_check_placement(4, 1_000).await;
}

/// The rows `sql` selects for execution `id` (its `$1`).
async fn rows<T>(pool: &PgPool, sql: &str, id: ExecutionId) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql)
        .bind(id.get())
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_execution_reads_back_with_its_first_event() {
    let cluster = Cluster::builder().shards(2).start().await;
    let (status, created) = cluster
        .post_json("/api/v1/executions", &hello_request())
        .await;
    assert_eq!(status, 201, "{created}");
    let id = id_of(&created);
    assert_eq!(
        created["status"], "running",
        "committed and started in one transaction"
    );
    assert_eq!(created["links"]["self"], format!("/api/v1/executions/{id}"));

    let (status, fetched) = cluster.get_json(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(fetched["execution_id"], json!(id.to_string()));
    assert_eq!(fetched["playbook_name"], "hello");
    assert_eq!(fetched["input"], json!({"who": "world"}));
    assert_eq!(fetched["labels"], json!({"suite": "e2e"}));
    assert_eq!(fetched["shard"], created["shard"]);

    let (status, route) = cluster.get_json(&format!("/api/v1/route/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(route["shard"], created["shard"]);
    assert_eq!(route["shard_count"], 2);
    assert_eq!(route["epoch"], 1);

    let shard = created["shard"].as_u64().expect("shard is a number") as u32;
    let pool = cluster.pool(shard).await;
    let events: Vec<(i64, String)> = rows(
        &pool,
        "SELECT seq, kind FROM execution_events WHERE execution_id = $1 ORDER BY seq",
        id,
    )
    .await;
    let kinds: Vec<&str> = events.iter().map(|(_, kind)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["execution_created", "execution_started", "step_dispatched"]
    );
    assert_eq!(
        events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE execution_id = $1")
        .bind(id.get())
        .fetch_one(&pool)
        .await
        .expect("read outbox");
    let steps: Vec<(String, String)> = rows(
        &pool,
        "SELECT name, status FROM execution_steps WHERE execution_id = $1 ORDER BY step_index",
        id,
    )
    .await;
    assert_eq!(
        steps,
        [
            ("greet".to_owned(), "dispatched".to_owned()),
            ("wait".to_owned(), "pending".to_owned())
        ]
    );
    assert!(
        outbox <= 1,
        "the first command is in the outbox or already relayed"
    );
    pool.close().await;
    cluster.stop().await;
}

fn command(id: ExecutionId) -> SubmitCommand {
    let request = hello_request();
    SubmitCommand {
        execution_id: id,
        playbook: serde_json::from_value(request["playbook"].clone()).expect("valid playbook"),
        playbook_version: None,
        tenant: noetl_contract::message::DEFAULT_TENANT.to_owned(),
        input: request["input"].clone(),
        labels: serde_json::from_value(request["labels"].clone()).expect("labels"),
    }
}

/// A two-shard cluster, a NATS client of it, and an id (minted like the gateway does, by node
/// `node`) that routes to `shard`.
async fn cluster_and_id_for(
    shard: ShardId,
    node: u32,
) -> (Cluster, noetl_bus::Client, ExecutionId) {
    let cluster = Cluster::builder().shards(2).start().await;
    let client = connect(cluster.nats.url()).await;
    let mut generator = IdGenerator::new(NodeId::try_from(node).expect("valid node"));
    let now = noetl_bus::unix_now_ms();
    loop {
        let id = generator.next_id(now).expect("mint");
        if shard_of(id, cluster.shard_count) == shard {
            return (cluster, client, id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misrouted_submit_is_refused_and_writes_nothing() {
    let (cluster, client, id) = cluster_and_id_for(ShardId::new(0), 900).await;

    let wrong = subject::shard_request(ShardRequest::Submit, ShardId::new(1), id);
    let refused = noetl_bus::request::<_, SubmitReceipt>(
        &client,
        wrong,
        &command(id),
        Duration::from_secs(5),
    )
    .await;
    match refused {
        Err(noetl_bus::Error::Remote(e)) => {
            assert_eq!(e.code, WireErrorCode::Misrouted);
            assert!(e.message.contains("belongs to shard 0"), "{}", e.message);
        }
        other => panic!("expected a misrouted refusal, got {other:?}"),
    }
    let stored = cluster.stored_ids().await;
    assert!(
        stored.values().all(Vec::is_empty),
        "nothing was written: {stored:?}"
    );

    // A get on the wrong shard is refused the same way.
    let wrong_get = subject::shard_request(ShardRequest::Get, ShardId::new(1), id);
    let refused =
        noetl_bus::request::<_, Value>(&client, wrong_get, &(), Duration::from_secs(5)).await;
    assert!(
        matches!(refused, Err(noetl_bus::Error::Remote(e)) if e.code == WireErrorCode::Misrouted)
    );

    // The server and gateway share this test process, and so its metrics registry.
    let metrics = cluster.metrics().await.expect("metrics");
    assert!(
        metrics.contains("noetl_server_misrouted_total"),
        "{metrics}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitting_the_same_id_twice_returns_the_existing_execution() {
    let (cluster, client, id) = cluster_and_id_for(ShardId::new(1), 901).await;
    let subject = subject::shard_request(ShardRequest::Submit, ShardId::new(1), id);

    let body = command(id);
    let submit = || {
        noetl_bus::request::<_, SubmitReceipt>(
            &client,
            subject.clone(),
            &body,
            Duration::from_secs(5),
        )
    };
    // Concurrent duplicates (same batch or racing batches) and a later retry.
    let (a, b) = tokio::join!(submit(), submit());
    let (a, b) = (a.expect("first"), b.expect("second"));
    let retry = submit().await.expect("retry");
    assert_eq!(
        [a.created, b.created, retry.created]
            .iter()
            .filter(|c| **c)
            .count(),
        1,
        "exactly one submit created the execution"
    );
    assert_eq!(a.created_at, retry.created_at);
    assert_eq!(b.created_at, retry.created_at);

    let pool = cluster.pool(1).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM executions WHERE execution_id = $1")
        .bind(id.get())
        .fetch_one(&pool)
        .await
        .expect("count");
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM execution_events WHERE execution_id = $1")
            .bind(id.get())
            .fetch_one(&pool)
            .await
            .expect("count");
    // One execution's worth: created, started, first step dispatched; nothing doubled.
    assert_eq!((rows, events), (1, 3));
    pool.close().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_a_server_answers_503_with_retry_after() {
    // Shard 1 has a database but no server.
    let cluster = Cluster::builder().shards(2).serve(&[0]).start().await;
    let mut saw_unavailable = false;
    for _ in 0..64 {
        let response = cluster.submit_hello().await.expect("gateway answers");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.expect("json body");
        if status == 503 {
            assert_eq!(body["code"], "shard_unavailable", "{body}");
            assert_eq!(
                retry_after.as_ref().and_then(|v| v.to_str().ok()),
                Some("1")
            );
            let id = id_of(&body);
            assert_eq!(shard_of(id, cluster.shard_count), ShardId::new(1));
            saw_unavailable = true;
            break;
        }
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["shard"], 0);
    }
    assert!(saw_unavailable, "64 ids never routed to shard 1");
    let (status, ready) = cluster.get_json("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(ready["shards"]["1"], false, "{ready}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_id_that_already_exists_is_never_returned_to_the_caller() {
    let cluster = Cluster::builder().shards(2).start().await;
    // Another minter with the gateway's node id (as if it had the same lease) took sequence 0
    // of every millisecond of the next 20 seconds, so the gateway's first id collides for sure.
    let node = cluster.gateway_node().await;
    let now = noetl_bus::unix_now_ms();
    let node = NodeId::try_from(u32::try_from(node).expect("small")).expect("valid node");
    let mut taken: Vec<Vec<i64>> = vec![Vec::new(); 2];
    for ms in now..now + 20_000 {
        let id = ExecutionId::from_parts(ms, node, 0).expect("valid id");
        taken[shard_of(id, cluster.shard_count).get() as usize].push(id.get());
    }
    for (shard, ids) in taken.iter().enumerate() {
        let pool = cluster.pool(shard as u32).await;
        sqlx::query(
            "INSERT INTO executions (execution_id, playbook_name, playbook)
             SELECT id, 'someone-else', '{}'::jsonb FROM UNNEST($1::bigint[]) AS t(id)",
        )
        .bind(ids)
        .execute(&pool)
        .await
        .expect("pre-populate");
        pool.close().await;
    }

    let (status, body) = cluster
        .post_json("/api/v1/executions", &hello_request())
        .await;
    match status {
        201 => {
            let id = id_of(&body);
            assert!(
                !taken.iter().flatten().any(|t| *t == id.get()),
                "got a taken id {id}"
            );
            let (_, fetched) = cluster.get_json(&format!("/api/v1/executions/{id}")).await;
            assert_eq!(fetched["playbook_name"], "hello", "{fetched}");
        }
        503 => assert_eq!(body["code"], "id_collision", "{body}"),
        other => panic!("unexpected {other}: {body}"),
    }
    let metrics = cluster.metrics().await.expect("metrics");
    assert!(
        metrics.contains("noetl_gateway_id_collisions_total"),
        "the collision was counted"
    );
    cluster.stop().await;
}
