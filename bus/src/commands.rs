//! The JetStream stream of step commands: created here, published to by servers (with a
//! message id, so re-publishing an attempt is de-duplicated), consumed by worker pools.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use noetl_contract::command::StepCommand;
use noetl_contract::subject;

use crate::{Client, Error};

pub use async_nats::jetstream::consumer::PullConsumer;
pub use async_nats::jetstream::{AckKind, Message as Delivery};

/// Window in which JetStream drops a command whose message id it has already stored.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

fn transport(what: &str) -> impl Fn(String) -> Error + '_ {
    move |e| Error::Transport(format!("{what}: {e}"))
}

/// Opens the command stream, creating it when missing. A work queue: a command is removed
/// once a worker acks it, and each pool has its own consumer, so no command is taken twice.
pub async fn stream(client: &Client) -> Result<stream::Stream, Error> {
    let js = jetstream::new(client.clone());
    let created = js
        .get_or_create_stream(stream::Config {
            name: subject::COMMAND_STREAM.to_owned(),
            description: Some("noetl-dispatch step commands".to_owned()),
            subjects: vec![subject::command_stream_subjects()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: crate::replicas(),
            ..Default::default()
        })
        .await;
    match created {
        Ok(stream) => Ok(stream),
        // A server or worker racing us created it between our lookup and our create.
        Err(create_error) => js
            .get_stream(subject::COMMAND_STREAM)
            .await
            .map_err(|e| transport("opening the command stream")(format!("{create_error}; {e}"))),
    }
}

/// Publishes a command and waits until JetStream has stored it. A command over NATS
/// `max_payload` is not sent: [`Error::TooLarge`] (it never will fit; the caller dead-letters
/// it).
pub async fn publish(client: &Client, pool: &str, command: &StepCommand) -> Result<(), Error> {
    let payload = serde_json::to_vec(command).map_err(|e| Error::Transport(e.to_string()))?;
    let subject = subject::command(pool, command.shard, command.execution_id);
    let mut headers = crate::trace::headers();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        command.message_id().as_str(),
    );
    crate::check_size(
        client,
        &subject,
        payload.len() + crate::headers_size(&headers),
    )?;
    let js = jetstream::new(client.clone());
    let publish = jetstream::context::Publish::build()
        .headers(headers)
        .payload(Bytes::from(payload));
    js.send_publish(subject, publish)
        .await
        .map_err(|e| transport("publishing a command")(e.to_string()))?
        .await
        .map_err(|e| transport("storing a command")(e.to_string()))?;
    Ok(())
}

/// The durable pull consumer shared by every worker of `pool`, created when missing.
pub async fn pool_consumer(
    client: &Client,
    pool: &str,
    ack_wait: Duration,
) -> Result<consumer::PullConsumer, Error> {
    let name = subject::pool_consumer(pool);
    stream(client)
        .await?
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("workers of pool {pool}")),
                filter_subject: subject::pool_commands_filter(pool),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| transport("opening the pool consumer")(e.to_string()))
}

/// Asks `consumer` for up to `max` commands, waiting at most `expires` for them. The stream
/// ends when `max` arrived or the wait is over; an error means the consumer is gone (it was
/// deleted, or its stream was) or NATS failed, and the caller should open it again.
pub async fn pull(
    consumer: &PullConsumer,
    max: usize,
    expires: Duration,
) -> Result<impl futures::Stream<Item = Result<Delivery, Error>>, Error> {
    use futures::StreamExt;
    let batch = consumer
        .batch()
        .max_messages(max)
        .expires(expires)
        .messages()
        .await
        .map_err(|e| transport("pulling commands")(e.to_string()))?;
    Ok(batch.map(|delivery| delivery.map_err(|e| transport("pulling commands")(e.to_string()))))
}
