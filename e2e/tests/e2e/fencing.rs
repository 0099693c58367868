//! Finding 8 of issue 27: workers and pools. A client holding a worker's NATS credentials
//! cannot record a result or a heartbeat for another execution's step without the attempt's
//! token; each worker's replies come back on an inbox of its own; a tenant's steps reach only
//! the pools open to it, and `shell` only if it opted in; every read names a tenant.

use std::time::Duration;

use noetl_contract::command::{Heartbeat, HeartbeatAck, ReportAck};
use noetl_contract::message::{ListQuery, WireErrorCode};
use noetl_contract::step::{Attempt, AttemptToken, StepIndex, TOKEN_BYTES};
use noetl_contract::subject::{self, ShardRequest};
use serde_json::{json, Value};

use crate::harness::{assert_problem, Cluster, Token, Worker};

const WAIT: Duration = Duration::from_secs(5);

/// The value of the counter `name` with the label `kind`, summed over its other labels.
fn counter(metrics: &str, name: &str, kind: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| line.contains(&format!("kind=\"{kind}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A stolen worker credential forges, for a step another execution's worker owns, a result and
/// heartbeats without the attempt's token and with a wrong one: none is recorded (the step
/// stays dispatched, without a result or a start), each is answered as stale and counted. The
/// real worker's result, carrying the token, is then recorded, and the replies to that worker
/// came back on its own inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_heartbeats_without_the_attempts_token_are_refused() {
    let cluster = Cluster::builder().start().await;
    // No worker yet: the step waits, dispatched, for its attempt to report.
    let id = cluster
        .submit(&json!({"playbook": {"name": "fenced", "steps": [
            {"name": "one", "action": "noop"}
        ]}}))
        .await;
    let real = cluster
        .attempt_token(id, 0)
        .await
        .expect("a dispatched attempt has a token");
    let mut flipped = *real.expose();
    flipped[TOKEN_BYTES - 1] ^= 1;
    let wrong = AttemptToken::from_bytes(flipped);

    let shard = noetl_contract::shard_of(id, cluster.shard_count);
    let client = crate::harness::connect(cluster.nats.url()).await;
    let ask = |kind| subject::shard_request(kind, shard, id);
    for token in [None, Some(wrong)] {
        let forged = crate::harness::forged_report(id, token);
        let ack: ReportAck = noetl_bus::request(&client, ask(ShardRequest::Result), &forged, WAIT)
            .await
            .expect("the shard answers");
        assert_eq!(ack, ReportAck::Stale, "a forged result is not recorded");
        for starting in [true, false] {
            let beat = Heartbeat {
                execution_id: id,
                step_index: StepIndex::new(0),
                attempt: Attempt::FIRST,
                worker: "stolen".to_owned(),
                starting,
                started_at_ms: (!starting).then(noetl_bus::unix_now_ms),
                token,
            };
            let ack: HeartbeatAck =
                noetl_bus::request(&client, ask(ShardRequest::Heartbeat), &beat, WAIT)
                    .await
                    .expect("the shard answers");
            assert_eq!(
                ack,
                HeartbeatAck::Stop,
                "a forged heartbeat is told to stop"
            );
        }
    }
    let (status, execution) = cluster.get_json(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(status, 200, "{execution}");
    let step = &execution["steps"][0];
    assert_eq!(step["status"], "dispatched", "{execution}");
    assert!(step["result"].is_null(), "{execution}");
    assert!(
        step["started_at"].is_null(),
        "no forged beat started it: {execution}"
    );
    let kinds: Vec<Value> = cluster
        .events(id)
        .await
        .iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert!(!kinds.contains(&json!("step_started")), "{kinds:?}");
    let hex = serde_json::to_value(real).expect("hex");
    let hex = hex.as_str().expect("a string");
    for shown in [execution.to_string(), format!("{kinds:?}")] {
        assert!(!shown.contains(hex), "the token is never shown: {shown}");
    }
    let metrics = cluster.metrics().await.expect("metrics");
    let refused = |kind| counter(&metrics, "noetl_server_reports_refused_total", kind);
    assert!(refused("result") >= 2.0, "{metrics}");
    assert!(refused("heartbeat") >= 4.0, "{metrics}");

    // The real worker, named so its inbox is known, records the step's result.
    let mut replies = client
        .subscribe("_INBOX.fence-worker.>".to_owned())
        .await
        .expect("subscribe to the worker's inbox");
    client.flush().await.expect("flush");
    let worker = Worker::start_with(cluster.nats.url(), |settings| {
        settings.name = Some("fence-worker".to_owned());
    });
    let done = cluster.wait_for_success(id).await;
    assert_ne!(
        done["steps"][0]["result"],
        json!({"forged": true}),
        "{done}"
    );
    let reply = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut replies))
        .await
        .expect("a reply to the worker in time")
        .expect("the subscription is open");
    assert!(
        reply.subject.starts_with("_INBOX.fence-worker."),
        "{}",
        reply.subject
    );
    worker.stop().await;
    cluster.stop().await;
}

const TOKENS: [Token; 2] = [
    Token::new("a", "tenant-a", &["submit", "read"], "token-a"),
    Token::new("b", "tenant-b", &["submit", "read"], "token-b"),
];

/// A pool listed in `pool_tenants` takes only its tenants' steps; `shell` is open only to the
/// tenants of `shell_tenants` (by default only `default`). Either refusal is a 403
/// `pool_forbidden` naming the step and its pool, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reaches_only_its_pools_and_shell_only_if_it_opted_in() {
    let cluster = Cluster::builder()
        .tokens(&TOKENS)
        .tune(|server, _| {
            server.pool_tenants = [("gpu".to_owned(), vec!["tenant-a".to_owned()])].into();
        })
        .start()
        .await;
    let (a, b) = (cluster.with_token("token-a"), cluster.with_token("token-b"));
    let gpu = json!({"playbook": {"name": "train", "steps": [
        {"name": "prepare", "action": "noop"},
        {"name": "fit", "action": "noop", "pool": "gpu", "needs": ["prepare"]}
    ]}});
    let (status, body) = b.post_json("/api/v1/executions", &gpu).await;
    assert_problem(status, &body, 403, "pool_forbidden");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(r#"step "fit""#) && detail.contains(r#"pool "gpu""#),
        "{body}"
    );

    let shell = json!({"playbook": {"name": "run", "steps": [
        {"name": "ls", "action": "shell", "with": {"argv": ["ls"]}}
    ]}});
    for tenant in [&a, &b] {
        let (status, body) = tenant.post_json("/api/v1/executions", &shell).await;
        assert_problem(status, &body, 403, "pool_forbidden");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(r#"step "ls""#) && detail.contains("shell"),
            "{body}"
        );
    }
    let stored = cluster.stored_ids().await;
    assert!(
        stored.values().all(Vec::is_empty),
        "nothing stored: {stored:?}"
    );

    let (status, body) = a.post_json("/api/v1/executions", &gpu).await;
    assert_eq!(status, 201, "tenant-a may use gpu: {body}");
    cluster.stop().await;
}

/// Every read, cancel, events page and listing a shard answers names a tenant: one sent
/// without (as only a client holding NATS credentials could) is refused, not answered for
/// every tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_request_without_a_tenant_is_refused() {
    let cluster = Cluster::builder().start().await;
    let id = cluster
        .submit(&json!({"playbook": {"name": "mine", "steps": [
            {"name": "one", "action": "noop"}
        ]}}))
        .await;
    let shard = noetl_contract::shard_of(id, cluster.shard_count);
    let client = crate::harness::connect(cluster.nats.url()).await;
    let refused = |answer: Result<Value, noetl_bus::Error>| match answer {
        Err(noetl_bus::Error::Remote(e)) => {
            assert_eq!(e.code, WireErrorCode::BadRequest, "{e:?}");
            assert!(e.message.contains("names no tenant"), "{e:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    for (kind, body) in [
        (ShardRequest::Get, json!(null)),
        (ShardRequest::Get, json!({})),
        (ShardRequest::Cancel, json!({})),
        (ShardRequest::Events, json!({"after_seq": 0, "limit": 10})),
    ] {
        let subject = subject::shard_request(kind, shard, id);
        refused(noetl_bus::request(&client, subject, &body, WAIT).await);
    }
    let list = ListQuery {
        below: None,
        from: None,
        limit: 10,
        status: None,
        labels: Default::default(),
        playbook: None,
        tenant: None,
        root_id: None,
    };
    refused(noetl_bus::request(&client, subject::shard_list(shard), &list, WAIT).await);
    // Not cancelled by the refused cancel, and still read through the gateway.
    let (status, running) = cluster.get_json(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(
        (status, &running["status"]),
        (200, &json!("running")),
        "{running}"
    );
    cluster.stop().await;
}
