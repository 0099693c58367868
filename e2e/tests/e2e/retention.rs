//! Retention and deletion (issue 30): a shard purges terminal executions past their tenant's
//! retention from every table and spares running ones; `DELETE` of an execution refuses a
//! running one (409) and another tenant's (404) and forgets a finished one everywhere; catalog
//! versions can be deleted and only the newest `catalog_keep_versions` are kept; and a secret
//! header of an `http` step reaches the target but no read of the API.

use noetl_contract::ExecutionId;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::harness::{
    assert_problem, describe, eventually, hello_request, noetlctl, serve_loopback, Api, Cluster,
    Token, Worker, DEADLINE,
};

/// Every table of a shard that holds rows of an execution.
const TABLES: [&str; 5] = [
    "executions",
    "execution_steps",
    "execution_events",
    "outbox",
    "outbox_dead_letters",
];

/// The rows of execution `id` in each table of `pool`'s shard, by table.
async fn rows_of(pool: &PgPool, id: ExecutionId) -> Vec<(&'static str, i64)> {
    let mut rows = Vec::new();
    for table in TABLES {
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE execution_id = $1"
        ))
        .bind(id.get())
        .fetch_one(pool)
        .await
        .expect("count the rows");
        rows.push((table, count));
    }
    rows
}

/// An execution of one step in a pool no worker serves: it stays running.
fn stuck_request() -> Value {
    json!({"playbook": {"name": "stuck", "steps": [
        {"name": "wait", "action": "noop", "pool": "nobody"},
    ]}})
}

/// The ids of `api`'s listing.
async fn listed(api: &Api) -> Vec<String> {
    let (status, listing) = api.get_json("/api/v1/executions?limit=100").await;
    assert_eq!(status, 200, "{listing}");
    listing["executions"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["execution_id"].as_str().map(str::to_owned))
        .collect()
}

async fn delete(api: &Api, path: &str) -> (u16, Value) {
    Api::answer(api.request(Method::DELETE, path)).await
}

/// Runs `noetlctl --token token-a {args}` against `cluster`'s gateway, off the runtime's
/// threads; its exit code and output.
async fn ctl(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["--token".to_owned(), "token-a".to_owned()];
    all.extend(args.iter().map(|arg| (*arg).to_owned()));
    let url = cluster.base_url.clone();
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        noetlctl("--gateway-url", &url, &args)
    })
    .await
    .expect("noetlctl");
    (output.status.code(), describe(&output))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_retention_purges_finished_executions_everywhere_and_spares_running_ones() {
    let cluster = Cluster::builder()
        .tune(|server, _| {
            server.tenant_retention_ms = [("default".to_owned(), 1)].into();
            server.retention_interval_ms = 50;
            server.tenant_max_executions_in_flight = 10;
        })
        .start()
        .await;
    let pool = cluster.pool(0).await;
    // Submitted first, so it is past the retention at every pass that purges the other.
    let running = cluster.submit(&stuck_request()).await;
    let worker = Worker::start(cluster.nats.url());
    let finished = cluster.submit(&hello_request()).await;

    eventually("the finished execution to be purged", DEADLINE, || async {
        let (status, body) = cluster
            .get_json(&format!("/api/v1/executions/{finished}"))
            .await;
        if status == 404 {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    for (table, count) in rows_of(&pool, finished).await {
        assert_eq!(count, 0, "{table} still holds rows of the purged execution");
    }
    let ids = listed(&cluster).await;
    assert!(!ids.contains(&finished.to_string()), "{ids:?}");
    assert!(ids.contains(&running.to_string()), "{ids:?}");

    let (status, body) = cluster
        .get_json(&format!("/api/v1/executions/{running}"))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("running")),
        "{body}"
    );
    assert!(rows_of(&pool, running).await.iter().any(|&(_, n)| n > 0));
    // The quota's counters still count one execution in flight: the running one.
    let in_flight: i64 = sqlx::query_scalar(
        "SELECT (SELECT executions FROM tenant_admitted WHERE tenant = 'default')
              - (SELECT executions FROM tenant_finished WHERE tenant = 'default')",
    )
    .fetch_one(&pool)
    .await
    .expect("the counters");
    assert_eq!(in_flight, 1);
    let metrics = reqwest::get(format!("{}/metrics", cluster.server_ops_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("noetl_server_executions_purged_total"),
        "{metrics}"
    );
    worker.stop().await;
    cluster.stop().await;
}

const TOKENS: [Token; 3] = [
    Token::new("a", "tenant-a", &["submit", "read", "admin"], "token-a"),
    Token::new("b", "tenant-b", &["submit", "read", "admin"], "token-b"),
    Token::new("reader", "tenant-a", &["read"], "token-reader"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_running_and_foreign_executions_and_forgets_a_finished_one() {
    let cluster = Cluster::builder().tokens(&TOKENS).start().await;
    let (a, b) = (cluster.with_token("token-a"), cluster.with_token("token-b"));
    let reader = cluster.with_token("token-reader");
    let pool = cluster.pool(0).await;
    let running = a.submit(&stuck_request()).await;
    let worker = Worker::start(cluster.nats.url());
    let finished = a.submit(&hello_request()).await;
    a.wait_for_success(finished).await;

    let (status, body) = delete(&a, &format!("/api/v1/executions/{running}")).await;
    assert_problem(status, &body, 409, "execution_not_terminal");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("cancel"), "{detail}");
    let path = format!("/api/v1/executions/{finished}");
    let (status, body) = delete(&b, &path).await;
    assert_problem(status, &body, 404, "execution_not_found");
    let (status, body) = delete(&reader, &path).await;
    assert_problem(status, &body, 403, "forbidden");
    // Refused deletes delete nothing.
    for (table, count) in &rows_of(&pool, finished).await[..3] {
        assert!(
            *count > 0,
            "{table} lost the rows of an execution a delete was refused"
        );
    }

    let (status, body) = delete(&a, &path).await;
    assert_eq!(status, 204, "{body}");
    for (table, count) in rows_of(&pool, finished).await {
        assert_eq!(
            count, 0,
            "{table} still holds rows of the deleted execution"
        );
    }
    for read in [path.clone(), format!("{path}/events")] {
        let (status, body) = a.get_json(&read).await;
        assert_problem(status, &body, 404, "execution_not_found");
    }
    let (status, body) = delete(&a, &path).await;
    assert_problem(status, &body, 404, "execution_not_found");
    assert!(!listed(&a).await.contains(&finished.to_string()));

    // Cancelled, the running one can go too.
    let (status, body) = a
        .post_json(&format!("/api/v1/executions/{running}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    a.wait_for_execution(running, "the cancel", |e| e["status"] == "cancelled")
        .await;
    let running = running.to_string();
    let (code, output) = ctl(&cluster, &["delete", &running]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(listed(&a).await.is_empty());
    let (code, output) = ctl(&cluster, &["delete", &running]).await;
    assert_ne!(code, Some(0), "{output}");
    assert!(output.contains("execution_not_found"), "{output}");
    worker.stop().await;
    cluster.stop().await;
}

fn playbook(name: &str, ms: u64) -> Value {
    json!({"name": name, "steps": [{"name": "s", "action": "sleep", "with": {"ms": ms}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_versions_can_be_deleted_and_only_the_newest_are_kept() {
    let cluster = Cluster::builder()
        .tokens(&TOKENS)
        .tune(|_, gateway| gateway.catalog_keep_versions = 2)
        .start()
        .await;
    let (a, b) = (cluster.with_token("token-a"), cluster.with_token("token-b"));
    for ms in 1..=3 {
        let (status, body) = a
            .post_json("/api/v1/playbooks", &playbook("kept", ms))
            .await;
        assert_eq!(
            (status, body["version"].as_u64()),
            (201, Some(ms)),
            "{body}"
        );
    }
    let version = |v: u32| format!("/api/v1/playbooks/kept/versions/{v}");
    // Keep the last 2: publishing version 3 dropped version 1.
    let (status, body) = a.get_json(&version(1)).await;
    assert_problem(status, &body, 404, "playbook_not_found");
    for v in [2, 3] {
        let (status, body) = a.get_json(&version(v)).await;
        assert_eq!(status, 200, "{body}");
    }

    let (status, body) = delete(&b, &version(3)).await;
    assert_problem(status, &body, 404, "playbook_not_found");
    let (status, body) = delete(&cluster.with_token("token-reader"), &version(3)).await;
    assert_problem(status, &body, 403, "forbidden");
    let (status, body) = delete(&a, &version(3)).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = a.get_json(&version(3)).await;
    assert_problem(status, &body, 404, "playbook_not_found");
    let (status, body) = delete(&a, &version(3)).await;
    assert_problem(status, &body, 404, "playbook_not_found");
    // The newest is now version 2; the next publish never takes a deleted number again.
    let (status, body) = a.get_json("/api/v1/playbooks/kept").await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(2)), "{body}");
    let (status, body) = a.post_json("/api/v1/playbooks", &playbook("kept", 4)).await;
    assert_eq!((status, body["version"].as_u64()), (201, Some(4)), "{body}");
    let (_, listing) = a.get_json("/api/v1/playbooks").await;
    assert_eq!(listing["playbooks"][0]["latest_version"], 4, "{listing}");

    let (status, body) = delete(&a, &version(2)).await;
    assert_eq!(status, 204, "{body}");
    let (code, output) = ctl(&cluster, &["playbook", "delete", "kept", "4"]).await;
    assert_eq!(code, Some(0), "{output}");
    let (status, body) = a.get_json("/api/v1/playbooks/kept").await;
    assert_problem(status, &body, 404, "playbook_not_found");
    let (_, listing) = a.get_json("/api/v1/playbooks").await;
    assert_eq!(listing["playbooks"], json!([]), "{listing}");
    cluster.stop().await;
}

/// A loopback server whose `/secret` answers 200 only to the secret headers' real values.
async fn serve_checking_secrets() -> String {
    let app = axum::Router::new().route(
        "/secret",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            let has = |name: &str, value: &str| {
                headers.get(name).and_then(|v| v.to_str().ok()) == Some(value)
            };
            if has("authorization", "Bearer sekrit-123") && has("x-api-key", "key-456") {
                axum::http::StatusCode::OK
            } else {
                axum::http::StatusCode::UNAUTHORIZED
            }
        }),
    );
    serve_loopback(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_headers_reach_the_target_and_no_read_of_the_api() {
    let cluster = Cluster::builder().start().await;
    let worker = Worker::allowing_loopback(cluster.nats.url());
    let base = serve_checking_secrets().await;
    let request = json!({"playbook": {"name": "secret", "steps": [{
        "name": "call", "action": "http",
        "with": {"url": format!("{base}/secret"), "headers": {
            "Authorization": "Bearer sekrit-123", "X-API-KEY": "key-456", "Accept": "text/plain"
        }}
    }]}});
    let id = cluster.submit(&request).await;
    // The target answered 200 only to the real values, so the worker's command had them.
    let execution = cluster
        .wait_for_execution(id, "the call to end", |e| {
            matches!(e["status"].as_str(), Some("succeeded" | "failed"))
        })
        .await;
    assert_eq!(execution["status"], "succeeded", "{execution}");
    assert_eq!(
        execution["steps"][0]["result"]["status"], 200,
        "{execution}"
    );
    let events = cluster.events(id).await;
    let (_, page) = cluster
        .get_json(&format!("/api/v1/executions/{id}/events"))
        .await;
    for read in [
        execution.to_string(),
        json!(events).to_string(),
        page.to_string(),
    ] {
        for secret in ["sekrit-123", "key-456"] {
            assert!(!read.contains(secret), "{secret} in {read}");
        }
    }
    let dispatched = events
        .iter()
        .find(|e| e["kind"] == "step_dispatched")
        .expect("a step_dispatched event");
    let headers = &dispatched["payload"]["with"]["headers"];
    assert_eq!(
        headers,
        &json!({"Authorization": "<redacted>", "X-API-KEY": "<redacted>", "Accept": "text/plain"}),
        "{dispatched}"
    );
    worker.stop().await;
    cluster.stop().await;
}
