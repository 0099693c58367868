//! The ceilings of the parts on this machine, measured in the same run as the dispatcher so
//! figures can be read as ratios: raw NATS request/reply, JetStream publish (acknowledged, file
//! storage) and raw PostgreSQL batched inserts (durable commits, as the shards run).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use sqlx::PgPool;

use crate::{load, Phase};

/// Rows per INSERT of the PostgreSQL baseline: about the mean group-commit batch of a loaded
/// shard, rounded up.
pub const PG_BATCH: usize = 10;

#[derive(Debug, Serialize)]
pub struct Baselines {
    pub nats_request_reply: Phase,
    pub jetstream_publish: Phase,
    /// Operations are batches of [`PG_BATCH`] rows.
    pub postgres_batched_insert: Phase,
    pub postgres_rows_per_second: f64,
}

pub async fn run(
    nats_url: &str,
    pool: &PgPool,
    payload: Bytes,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Baselines> {
    eprintln!("baseline: raw NATS request/reply…");
    let nats_request_reply =
        nats_request_reply(nats_url, payload.clone(), concurrency, duration).await?;
    eprintln!("baseline: JetStream publish…");
    let jetstream_publish =
        jetstream_publish(nats_url, payload.clone(), concurrency, duration).await?;
    eprintln!("baseline: PostgreSQL batched inserts…");
    let postgres_batched_insert = postgres_insert(pool, payload, concurrency, duration).await?;
    Ok(Baselines {
        postgres_rows_per_second: postgres_batched_insert.per_second * PG_BATCH as f64,
        nats_request_reply,
        jetstream_publish,
        postgres_batched_insert,
    })
}

/// Raw NATS request/reply with a payload the size of a submit: the bus's own ceiling here.
async fn nats_request_reply(
    url: &str,
    payload: Bytes,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let responder = async_nats::connect(url).await?;
    let mut requests = responder.subscribe("bench.echo").await?;
    responder.flush().await?;
    let echo = tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let _ = responder
                    .publish(reply, Bytes::from_static(b"{\"ok\":{}}"))
                    .await;
            }
        }
    });
    let requester = async_nats::connect(url).await?;
    let phase = load(
        "raw NATS request/reply",
        concurrency,
        duration,
        None,
        move || {
            let (requester, payload) = (requester.clone(), payload.clone());
            async move { requester.request("bench.echo", payload).await.is_ok() }
        },
    )
    .await;
    echo.abort();
    Ok(phase)
}

/// Publishes acknowledged by a file-backed stream: what the outbox relay pays per command.
async fn jetstream_publish(
    url: &str,
    payload: Bytes,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let jetstream = async_nats::jetstream::new(async_nats::connect(url).await?);
    let _ = jetstream
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH_BASELINE".to_owned(),
            subjects: vec!["bench.baseline.>".to_owned()],
            ..Default::default()
        })
        .await?;
    let phase = load(
        "JetStream publish (acked)",
        concurrency,
        duration,
        None,
        move || {
            let (jetstream, payload) = (jetstream.clone(), payload.clone());
            async move {
                match jetstream.publish("bench.baseline.x", payload).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    Ok(phase)
}

/// `INSERT … SELECT FROM UNNEST` of [`PG_BATCH`] jsonb rows per statement, one commit each.
async fn postgres_insert(
    pool: &PgPool,
    payload: Bytes,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_baseline (id bigserial PRIMARY KEY, body jsonb NOT NULL)",
    )
    .execute(pool)
    .await?;
    let body: serde_json::Value = serde_json::from_slice(&payload)?;
    let bodies = vec![body; PG_BATCH];
    let pool = pool.clone();
    Ok(load(
        "PostgreSQL batched insert",
        concurrency,
        duration,
        None,
        move || {
            let (pool, bodies) = (pool.clone(), bodies.clone());
            async move {
                sqlx::query("INSERT INTO bench_baseline (body) SELECT * FROM UNNEST($1::jsonb[])")
                    .bind(bodies)
                    .execute(&pool)
                    .await
                    .is_ok()
            }
        },
    )
    .await)
}
