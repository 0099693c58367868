//! The `http` action's egress policy, through the API: steps that aim at loopback, the
//! metadata address or a name that resolves to loopback fail with `egress_denied`, whether a
//! port listens there or not; a pool's `http_allow` (set in the worker process's environment)
//! lets its steps reach a loopback server, and a redirect from there is checked again.

use noetl_contract::ExecutionId;
use noetl_test_support::Process;
use serde_json::{json, Value};

use crate::harness::{binary, Cluster, Worker};

/// A loopback HTTP server with `/json` and `/redirect?<url>`; its base URL.
async fn serve() -> String {
    let app = axum::Router::new()
        .route(
            "/json",
            axum::routing::get(|| async { axum::Json(json!({"answer": 42})) }),
        )
        .route(
            "/redirect",
            axum::routing::get(|query: axum::extract::RawQuery| async move {
                let to = query.0.unwrap_or_default();
                (
                    axum::http::StatusCode::FOUND,
                    [(axum::http::header::LOCATION, to)],
                )
            }),
        );
    crate::harness::serve_loopback(app).await
}

/// A loopback port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("an address").port()
}

/// Submits one execution of one `http` step to `url`.
async fn fetch(cluster: &Cluster, url: &str) -> ExecutionId {
    fetch_in(cluster, "default", url).await
}

/// Submits one execution of one `http` step to `url`, run by `pool`.
async fn fetch_in(cluster: &Cluster, pool: &str, url: &str) -> ExecutionId {
    let playbook = json!({"name": "egress", "steps": [
        {"name": "fetch", "action": "http", "pool": pool, "with": {"url": url}},
    ]});
    cluster.submit(&json!({ "playbook": playbook })).await
}

/// The `fetch` step of a finished execution.
async fn finished(cluster: &Cluster, id: ExecutionId) -> Value {
    let execution = cluster
        .wait_for_execution(id, "the fetch to end", |body| {
            matches!(body["status"].as_str(), Some("succeeded" | "failed"))
        })
        .await;
    execution["steps"][0].clone()
}

fn error_of(step: &Value) -> String {
    assert_eq!(step["status"], "failed", "{step}");
    step["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_steps_reach_no_internal_address_by_default() {
    let cluster = Cluster::builder().start().await;
    let worker = Worker::start(cluster.nats.url());
    let base = serve().await;
    let open = base.rsplit(':').next().expect("a port").to_owned();
    let closed = closed_port().await.to_string();
    let mut probes = Vec::new();
    for url in [
        format!("http://127.0.0.1:{open}/json"),
        format!("http://127.0.0.1:{closed}/json"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{open}/json"),
        format!("http://localhost:{open}/json"),
        // The cluster's own NATS monitoring port would be a fine thing to probe.
        cluster.nats.url().replace("nats://", "http://"),
    ] {
        probes.push((url.clone(), fetch(&cluster, &url).await));
    }
    let mut errors = Vec::new();
    for (url, id) in probes {
        let error = error_of(&finished(&cluster, id).await);
        assert!(error.starts_with("egress_denied: "), "{url}: {error}");
        errors.push(error);
    }
    assert_eq!(
        errors[0].replace(&open, "PORT"),
        errors[1].replace(&closed, "PORT"),
        "a listening port and a closed one must read the same"
    );
    worker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_allow_list_opens_a_loopback_server_and_rechecks_redirects() {
    let cluster = Cluster::builder().start().await;
    // The worker binary, with its allow-list and redirects from its environment.
    let mut command = binary("noetl-worker", cluster.nats.url(), "127.0.0.1:0");
    command
        .env("NOETL_HTTP_ALLOW", "default=127.0.0.1/32")
        .env("NOETL_HTTP_MAX_REDIRECTS", "3");
    let worker = Process::spawn(command);
    let base = serve().await;
    let closed = closed_port().await;

    let reached = fetch(&cluster, &format!("{base}/json")).await;
    let followed = fetch(&cluster, &format!("{base}/redirect?{base}/json")).await;
    let metadata = fetch(
        &cluster,
        &format!("{base}/redirect?http://169.254.169.254/latest/meta-data/"),
    )
    .await;
    let elsewhere = fetch(
        &cluster,
        &format!("{base}/redirect?http://127.0.0.2:{closed}/"),
    )
    .await;
    let nothing = fetch(&cluster, &format!("http://127.0.0.1:{closed}/")).await;

    let step = finished(&cluster, reached).await;
    assert_eq!(step["status"], "succeeded", "{step}");
    assert_eq!(step["result"]["json"], json!({"answer": 42}), "{step}");
    let step = finished(&cluster, followed).await;
    assert_eq!(step["result"]["json"], json!({"answer": 42}), "{step}");
    for id in [metadata, elsewhere] {
        let error = error_of(&finished(&cluster, id).await);
        assert!(error.starts_with("egress_denied: "), "{error}");
    }
    let error = error_of(&finished(&cluster, nothing).await);
    assert_eq!(
        error,
        format!("request_failed: no HTTP answer from http://127.0.0.1:{closed}")
    );
    drop(worker);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_opens_only_its_own_pool() {
    let cluster = Cluster::builder().start().await;
    // One worker serving two pools; only `open` may reach loopback.
    let worker = Worker::start_with(cluster.nats.url(), |settings| {
        settings.pools = vec!["open".to_owned(), "shut".to_owned()];
        settings.http_allow = [("open".to_owned(), vec!["127.0.0.1/32".to_owned()])].into();
    });
    let base = serve().await;
    let url = format!("{base}/json");
    let open = fetch_in(&cluster, "open", &url).await;
    let shut = fetch_in(&cluster, "shut", &url).await;
    let step = finished(&cluster, open).await;
    assert_eq!(step["result"]["json"], json!({"answer": 42}), "{step}");
    let error = error_of(&finished(&cluster, shut).await);
    assert!(error.starts_with("egress_denied: pool \"shut\""), "{error}");
    worker.stop().await;
    cluster.stop().await;
}
