//! The topology's safety rules against real NATS and PostgreSQL: the gateway's minting rule
//! (fresh view, leased node id), the server's refusal of a rewritten history, and `noetlctl`'s
//! plan/apply/drain/retire with their exit codes.

use std::process::Output;

use noetl_contract::{ShardCount, Topology};
use serde_json::Value;

use crate::harness::{
    assert_problem, connect, describe, eventually, gateway_settings, hello_request, id_of, stdout,
    Api, Cluster, Gateway, DEADLINE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_confirm_its_topology_stops_minting_within_the_grace() {
    // A short grace, so the view goes stale in seconds.
    let mut cluster = Cluster::builder().grace_ms(2_000).start().await;
    let (status, body) = cluster
        .post_json("/api/v1/executions", &hello_request())
        .await;
    assert_eq!(status, 201, "{body}");

    cluster.nats.kill();
    let refused = eventually("the gateway to refuse minting", DEADLINE, || async {
        let (status, body) = cluster
            .post_json("/api/v1/executions", &hello_request())
            .await;
        match (status, body["code"].as_str()) {
            (503, Some("topology_stale")) => Ok(body),
            // Until the grace runs out the gateway still mints, and the shard cannot answer.
            (503, Some("shard_unavailable")) => Err(body.to_string()),
            _ => panic!("unexpected answer while NATS is down: {status} {body}"),
        }
    })
    .await;
    assert!(
        refused["execution_id"].is_null(),
        "no id handed out: {refused}"
    );
    let (status, ready) = cluster.get_json("/readyz").await;
    assert_eq!(
        (status, &ready["topology_fresh"]),
        (503, &Value::Bool(false)),
        "{ready}"
    );

    cluster.nats.restart();
    eventually("minting to resume once NATS is back", DEADLINE, || async {
        let (status, body) = cluster
            .post_json("/api/v1/executions", &hello_request())
            .await;
        if status == 201 {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
    cluster.stop().await;
}

/// Waits until `gateway` mints ids under `node`.
async fn mints_as(gateway: &Api, node: u32, what: &str) {
    eventually(what, DEADLINE, || async {
        match gateway
            .post_json("/api/v1/executions", &hello_request())
            .await
        {
            (201, body) if u32::from(id_of(&body).node().get()) == node => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_configured_with_a_leased_node_id_cannot_mint() {
    let cluster = Cluster::builder().start().await;
    // A node id neither the cluster's gateway nor its server holds: both run in this process
    // and lease the first free id from the one its pid names, so they hold neighbouring ids.
    let taken = cluster.gateway_node().await;
    let node = u32::try_from((taken + 512) % 1024).expect("small");
    let fixed = || noetl_gateway::configuration::Settings {
        node_id: Some(node),
        node_lease_ttl_ms: 3_000,
        ..gateway_settings(cluster.nats.url())
    };
    let first = Gateway::start(fixed()).await;
    mints_as(
        &first.api,
        node,
        "the first gateway to mint under its node id",
    )
    .await;

    let second = Gateway::start(fixed()).await;
    eventually(
        "the second gateway to read the topology",
        DEADLINE,
        || async {
            match second
                .api
                .post_json("/api/v1/executions", &hello_request())
                .await
            {
                (503, body) if body["code"] == "topology_unavailable" => Err(body.to_string()),
                _ => Ok(()),
            }
        },
    )
    .await;
    for _ in 0..20 {
        let (status, body) = second
            .api
            .post_json("/api/v1/executions", &hello_request())
            .await;
        assert_problem(status, &body, 503, "node_lease_unavailable");
    }
    let (_, ready) = second.api.get_json("/readyz").await;
    assert!(ready["node_id"].is_null(), "{ready}");

    // Once the holder stops (and gives the lease up), the second gateway takes the id over.
    first.stop().await;
    mints_as(
        &second.api,
        node,
        "the second gateway to take the node id over",
    )
    .await;
    second.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refuses_a_topology_that_rewrites_an_epoch_in_force() {
    let cluster = Cluster::builder().shards(2).start().await;
    let client = connect(cluster.nats.url()).await;
    let server = Api::new(cluster.server_ops_url.clone());
    let (original, revision) = noetl_bus::topology::read(&client)
        .await
        .expect("read")
        .expect("the server created the topology");

    // What a careless tool might write: epoch 1 with another shard count.
    let rewritten = Topology::bootstrap(ShardCount::new(3).expect("non-zero"), original.grace_ms())
        .expect("valid");
    let revision = noetl_bus::topology::write(&client, &rewritten, revision)
        .await
        .expect("the bucket itself takes any document");
    eventually("the server to refuse the document", DEADLINE, || async {
        match server.get_json("/readyz").await {
            (503, body) if body["topology"] == "rejected" => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    let metrics = server.metrics().await.expect("metrics");
    assert!(
        metrics.contains("noetl_server_topology_rejected_total"),
        "{metrics}"
    );
    let pool = cluster.pool(0).await;
    let recorded: Vec<(i64, i32)> =
        sqlx::query_as("SELECT epoch, shard_count FROM topology_epochs ORDER BY epoch")
            .fetch_all(&pool)
            .await
            .expect("read the recorded epochs");
    assert_eq!(recorded, vec![(1, 2)]);

    // Repairing the document makes the server ready again.
    noetl_bus::topology::write(&client, &original, revision)
        .await
        .expect("repair");
    eventually(
        "the server to accept the repaired document",
        DEADLINE,
        || async {
            match server.get_json("/readyz").await {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
    cluster.stop().await;
}

fn noetlctl(nats_url: &str, args: &[&str]) -> Output {
    crate::harness::noetlctl("--nats-url", nats_url, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noetlctl_plans_applies_drains_and_retires_with_scriptable_exit_codes() {
    // The smallest grace, so the shrink below activates (and may be retired) within seconds.
    let cluster = Cluster::builder().shards(2).grace_ms(1_000).start().await;
    let nats = cluster.nats.url();

    let same = noetlctl(nats, &["topology", "plan", "--shards", "2"]);
    assert_eq!(same.status.code(), Some(0), "{}", describe(&same));
    assert!(stdout(&same).contains("no change"), "{}", describe(&same));

    let grow = noetlctl(nats, &["topology", "plan", "--shards", "3"]);
    assert_eq!(grow.status.code(), Some(0), "{}", describe(&grow));
    assert!(
        stdout(&grow).contains("shards added:    2"),
        "{}",
        describe(&grow)
    );
    assert!(
        stdout(&grow).contains("apply would refuse"),
        "{}",
        describe(&grow)
    );

    // Shard 2 has no server: apply refuses and writes nothing.
    let refused = noetlctl(nats, &["topology", "apply", "--shards", "3"]);
    assert_eq!(refused.status.code(), Some(3), "{}", describe(&refused));
    let client = connect(nats).await;
    let (topology, _) = noetl_bus::topology::read(&client)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(topology.epochs().len(), 1);

    let not_draining = noetlctl(nats, &["topology", "drain", "1"]);
    assert_eq!(
        not_draining.status.code(),
        Some(3),
        "{}",
        describe(&not_draining)
    );
    let zero = noetlctl(nats, &["topology", "plan", "--shards", "0"]);
    assert_eq!(zero.status.code(), Some(2), "{}", describe(&zero));

    // One execution lives on shard 1 before the shrink.
    let on_shard_one = eventually("an execution on shard 1", DEADLINE, || async {
        let (status, body) = cluster
            .post_json("/api/v1/executions", &hello_request())
            .await;
        match (status, body["shard"].as_u64()) {
            (201, Some(1)) => Ok(id_of(&body)),
            _ => Err(body.to_string()),
        }
    })
    .await;

    let shrink = noetlctl(nats, &["topology", "apply", "--shards", "1", "--wait"]);
    assert_eq!(shrink.status.code(), Some(0), "{}", describe(&shrink));
    assert!(
        stdout(&shrink).contains("is in force"),
        "{}",
        describe(&shrink)
    );
    // No worker runs here, so the execution stays unfinished and shard 1 is not drained.
    let draining = noetlctl(nats, &["topology", "drain", "1"]);
    assert_eq!(draining.status.code(), Some(5), "{}", describe(&draining));
    assert!(
        stdout(&draining).contains("1 unfinished"),
        "{}",
        describe(&draining)
    );

    let (status, body) = cluster
        .post_json(
            &format!("/api/v1/executions/{on_shard_one}/cancel"),
            &Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Retiring is refused until a grace after the shrink activated, then allowed.
    let retired = eventually("shard 1 to retire", DEADLINE, || async {
        let output = noetlctl(nats, &["topology", "retire", "1", "--data", "keep"]);
        match output.status.code() {
            Some(0) => Ok(output),
            Some(3) => Err(describe(&output)),
            _ => panic!("unexpected: {}", describe(&output)),
        }
    })
    .await;
    assert!(
        stdout(&retired).contains("shard 1 retired"),
        "{}",
        describe(&retired)
    );
    let (status, body) = cluster
        .get_json(&format!("/api/v1/executions/{on_shard_one}"))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );

    let show = noetlctl(nats, &["topology", "show", "--json"]);
    assert_eq!(show.status.code(), Some(0), "{}", describe(&show));
    let document: Topology =
        serde_json::from_slice(&show.stdout).expect("show --json prints the document");
    assert_eq!(document.epochs().len(), 2);
    assert_eq!(document.retired().len(), 1);
    // Growing back over a retired shard is refused.
    let over_retired = noetlctl(nats, &["topology", "apply", "--shards", "2", "--force"]);
    assert_eq!(
        over_retired.status.code(),
        Some(3),
        "{}",
        describe(&over_retired)
    );

    cluster.stop().await;
}

#[test]
fn noetlctl_fails_cleanly_without_nats_and_never_prints_the_password() {
    let port = noetl_test_support::free_port();
    let output = noetlctl(
        &format!("nats://operator:hunter2@127.0.0.1:{port}"),
        &["topology", "show"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let text = describe(&output);
    assert!(text.contains("cannot reach NATS"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
