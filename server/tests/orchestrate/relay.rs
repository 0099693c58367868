//! The outbox relay: its wait when nothing is due, and commands handed off after their commit
//! or found by its passes.

use std::time::{Duration, Instant};

use noetl_server::commit::Committer;
use noetl_server::persistence::HANDOFF_GRACE;
use noetl_server::relay;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_waits_when_the_outbox_is_empty() {
    let shard = Shard::start("outbox").await;
    let pool = &shard.pool;
    assert_eq!(
        persistence::next_command_due_in_ms(pool)
            .await
            .expect("query"),
        None,
        "an empty outbox has nothing due (it once answered 'due now', and the relay spun)"
    );
    shard.insert([30_001], &one_step()).await;
    let due = persistence::next_command_due_in_ms(pool)
        .await
        .expect("query")
        .expect("a row waits");
    let grace = HANDOFF_GRACE.as_millis() as i64;
    assert!(
        (0..=grace).contains(&due),
        "a command that is handed off is due for a pass within its grace: {due} ms"
    );
    execute(
        pool,
        "UPDATE outbox SET not_before = now() - interval '1 second'",
    )
    .await;
    assert_eq!(
        persistence::next_command_due_in_ms(pool)
            .await
            .expect("query"),
        Some(0),
        "an overdue command is due now"
    );
    execute(
        pool,
        "UPDATE outbox SET not_before = now() + interval '1 hour'",
    )
    .await;
    let due = persistence::next_command_due_in_ms(pool)
        .await
        .expect("query")
        .expect("a row waits");
    assert!(
        (3_000_000..=3_600_000).contains(&due),
        "due in about an hour: {due} ms"
    );
    shard.stop().await;
}

/// Commands handed to the relay after their commit are published without waiting for a pass,
/// and their rows deleted; a command whose handoff never happened (its server died after the
/// commit) is published by a pass. JetStream stores each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_off_commands_are_published_and_missed_handoffs_are_relayed() {
    let nats = NatsServer::start();
    let client = noetl_bus::connect(&noetl_bus::NatsConfig {
        url: nats.url().to_owned(),
        client_name: "handoff-test".to_owned(),
        security: noetl_bus::NatsSecurity::default(),
    })
    .await
    .expect("connect to NATS");
    let stream = noetl_bus::commands::stream(&client).await.expect("stream");
    let (relay, feed) = Relay::new(ShardId::new(0));
    let shard = Shard::with_relay("handoff", relay.clone()).await;
    let pool = &shard.pool;
    let committer = Committer::spawn(
        ShardId::new(0),
        pool.clone(),
        relay,
        Some(1_000),
        10,
        1,
        &shard.tracker,
    );

    // Handed off while the relay is not running yet; then its row is made due only in an
    // hour, so no pass can publish it: only the handoff can.
    let handed = committer
        .commit(
            shard
                .orchestrator
                .prepare(&submit(40_001, one_step()))
                .await
                .expect("prepared"),
        )
        .await
        .expect("commit");
    assert!(handed.created);
    execute(
        pool,
        "UPDATE outbox SET not_before = now() + interval '1 hour'",
    )
    .await;
    // Committed without a handoff, as by a server that died right after its commit.
    shard.insert([40_002], &one_step()).await;
    execute(
        pool,
        "UPDATE outbox SET not_before = now() WHERE execution_id = 40002",
    )
    .await;

    let cancel = CancellationToken::new();
    let relaying = tokio::spawn(relay::run(
        ShardId::new(0),
        shard.pools.clone(),
        (client.clone(), tokio::sync::watch::channel(None).1),
        feed,
        |_| async { panic!("no command here is over max_payload") },
        cancel.clone(),
    ));
    let consumer = noetl_bus::commands::pool_consumer(&client, "default", Duration::from_secs(60))
        .await
        .expect("consumer");
    let mut received = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < 2 {
        assert!(Instant::now() < deadline, "received only {received:?}");
        let batch = noetl_bus::commands::pull(&consumer, 2, Duration::from_secs(1))
            .await
            .expect("pull");
        let deliveries: Vec<_> = batch.collect().await;
        for delivery in deliveries {
            let delivery = delivery.expect("delivery");
            let command: StepCommand =
                serde_json::from_slice(&delivery.payload).expect("a command");
            received.insert(command.execution_id.get());
        }
    }
    assert_eq!(received.into_iter().collect::<Vec<_>>(), [40_001, 40_002]);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await
            .expect("count");
        if rows == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows} outbox rows left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = stream.get_info().await.expect("stream info").state.messages;
    assert_eq!(stored, 2, "each command stored once");

    cancel.cancel();
    relaying.await.expect("relay task");
    drop(committer);
    shard.stop().await;
}
