//! `nats_replicas`: streams and buckets are created with that many replicas, and a server
//! raises the ones that exist with fewer, on a real three-node JetStream cluster.

use std::time::{Duration, Instant};

use noetl_bus::{Client, NatsConfig, NatsSecurity};
use noetl_contract::subject;
use noetl_test_support::NatsCluster;

async fn connect(url: &str, replicas: usize) -> Client {
    noetl_bus::connect(&NatsConfig {
        url: url.to_owned(),
        client_name: "replicas-test".to_owned(),
        security: NatsSecurity {
            nats_replicas: Some(replicas),
            ..NatsSecurity::default()
        },
    })
    .await
    .expect("connect")
}

async fn replicas_of(client: &Client, stream: &str) -> usize {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(stream).await.expect("the stream exists");
    stream
        .info()
        .await
        .expect("stream info")
        .config
        .num_replicas
}

/// Retries `attempt` until it succeeds: a new cluster answers JetStream requests only once it
/// has elected its meta leader.
async fn once_ready<T, Fut: std::future::Future<Output = Result<T, noetl_bus::Error>>>(
    what: &str,
    mut attempt: impl FnMut() -> Fut,
) -> T {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => assert!(Instant::now() < give_up, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_get_the_configured_replicas_and_existing_ones_are_raised() {
    let cluster = NatsCluster::start(3);

    // A process configured with one replica creates the catalog's bucket.
    let single = connect(cluster.url(), 1).await;
    once_ready("list the catalog", || {
        noetl_bus::catalog::list(&single, "default")
    })
    .await;
    let catalog = format!("KV_{}", subject::CATALOG_BUCKET);
    assert_eq!(replicas_of(&single, &catalog).await, 1);

    // One configured with three creates the command stream with three, and raises the bucket.
    let triple = connect(cluster.url(), 3).await;
    once_ready("open the command stream", || {
        noetl_bus::commands::stream(&triple)
    })
    .await;
    assert_eq!(replicas_of(&triple, subject::COMMAND_STREAM).await, 3);
    let raised = once_ready("raise the replicas", || noetl_bus::raise_replicas(&triple)).await;
    assert_eq!(raised, vec![catalog.clone()]);
    assert_eq!(replicas_of(&triple, &catalog).await, 3);
    // Nothing left to raise.
    assert_eq!(
        noetl_bus::raise_replicas(&triple).await.expect("raise"),
        Vec::<String>::new()
    );
}

#[test]
fn replicas_beyond_jetstreams_limit_and_malformed_inbox_prefixes_are_refused() {
    let security = NatsSecurity {
        nats_replicas: Some(7),
        ..NatsSecurity::default()
    };
    let error = security.validate().expect_err("refused");
    assert!(error.to_string().contains("nats_replicas"), "{error}");
    for (prefix, valid) in [
        ("_INBOX_worker", true),
        ("_INBOX.worker", true),
        ("_INBOX.>", false),
        ("a b", false),
        ("", false),
        ("x.", false),
    ] {
        let security = NatsSecurity {
            nats_inbox_prefix: Some(prefix.to_owned()),
            ..NatsSecurity::default()
        };
        assert_eq!(security.validate().is_ok(), valid, "{prefix:?}");
    }
}
