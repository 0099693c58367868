//! `check_size`: nothing over the server's `max_payload` is sent (nats-server would close the
//! connection over it): a request, a reply and a JetStream publish over it are refused with a
//! typed error, and the connection stays up.

use std::time::Duration;

use futures::StreamExt;
use noetl_bus::{Error, NatsConfig, NatsSecurity};
use noetl_contract::command::StepCommand;
use noetl_contract::message::{Reply, WireErrorCode};
use noetl_contract::step::{Attempt, StepIndex};
use noetl_contract::{ExecutionId, ShardId};
use noetl_test_support::NatsServer;

const MAX_PAYLOAD: usize = 4096;
const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn nothing_over_max_payload_is_sent_and_the_connection_stays() {
    let config =
        std::env::temp_dir().join(format!("noetl-bus-payload-{}.conf", std::process::id()));
    std::fs::write(&config, format!("max_payload: {MAX_PAYLOAD}\n")).expect("write the config");
    let nats = NatsServer::start_with(
        "127.0.0.1",
        vec!["-c".to_owned(), config.to_string_lossy().into_owned()],
        &[],
    );
    let client = noetl_bus::connect(&NatsConfig {
        url: nats.url().to_owned(),
        client_name: "payload-test".to_owned(),
        security: NatsSecurity::default(),
    })
    .await
    .expect("connect");
    // `connect` returns before the first connection (it retries it); the limit comes with it.
    let give_up = std::time::Instant::now() + TIMEOUT;
    while noetl_bus::max_payload(&client) == 0 {
        assert!(std::time::Instant::now() < give_up, "never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(noetl_bus::max_payload(&client), MAX_PAYLOAD);
    let connection = client.server_info().client_id;

    // Answers a number with a string that long.
    let mut requests = client.subscribe("size.test").await.expect("subscribe");
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let length: usize = serde_json::from_slice(&message.payload).unwrap_or(0);
            let reply = Reply::Ok("x".repeat(length));
            let _ = noetl_bus::respond(&responder, &message, &reply).await;
        }
    });
    let ask = |body: serde_json::Value| {
        let client = client.clone();
        async move {
            noetl_bus::request::<_, String>(&client, "size.test".to_owned(), &body, TIMEOUT).await
        }
    };

    let refused = ask(serde_json::json!("y".repeat(MAX_PAYLOAD))).await;
    assert!(
        matches!(
            refused,
            Err(Error::TooLarge {
                max_payload: MAX_PAYLOAD,
                ..
            })
        ),
        "{refused:?}"
    );
    let refused = ask(serde_json::json!(MAX_PAYLOAD)).await;
    assert!(
        matches!(&refused, Err(Error::Remote(e)) if e.code == WireErrorCode::TooLarge),
        "{refused:?}"
    );
    let answered = ask(serde_json::json!(10)).await.expect("a small reply");
    assert_eq!(answered.len(), 10);

    noetl_bus::commands::stream(&client)
        .await
        .expect("the command stream");
    let command = StepCommand {
        execution_id: ExecutionId::new(1).expect("an id"),
        shard: ShardId::new(0),
        step_index: StepIndex::new(0),
        step: "big".to_owned(),
        attempt: Attempt::new(1),
        action: "noop".to_owned(),
        with: serde_json::json!({"blob": "z".repeat(MAX_PAYLOAD)}),
        timeout_ms: 1_000,
        lease_ms: 1_000,
        token: None,
        item: None,
    };
    let refused = noetl_bus::commands::publish(&client, "default", &command).await;
    assert!(
        matches!(refused, Err(Error::TooLarge { .. })),
        "{refused:?}"
    );
    let small = StepCommand {
        with: serde_json::json!({}),
        ..command
    };
    noetl_bus::commands::publish(&client, "default", &small)
        .await
        .expect("a small command is stored");

    assert!(noetl_bus::is_connected(&client));
    assert_eq!(
        client.server_info().client_id,
        connection,
        "never reconnected"
    );
    let _ = std::fs::remove_file(&config);
}
