//! Serving one shard: its NATS subscriptions and the handling of each request.
//!
//! Every request is checked against the topology first: an execution that does not route to
//! this shard is refused (error reply, log, metric) before anything touches the database.

use std::sync::Arc;

use futures::StreamExt;
use noetl_bus::{Client, Message};
use noetl_contract::message::{
    PingReply, Reply, SubmitCommand, SubmitReceipt, WireError, WireErrorCode,
};
use noetl_contract::subject::{self, ShardRequest};
use noetl_contract::{ExecutionId, ShardId, Topology};
use sqlx::PgPool;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::commit::Committer;
use crate::persistence::{self, NewExecution};

/// Everything a request handler of one shard needs.
#[derive(Debug)]
pub struct Shard {
    pub id: ShardId,
    pub client: Client,
    pub pool: PgPool,
    pub committer: Committer,
    pub topology: watch::Receiver<Option<Topology>>,
}

/// Subscribes to the shard's subjects (queue group, so replicas share the work) and handles
/// requests until `cancel`; then stops taking new ones and finishes those in flight.
pub async fn serve(
    shard: Arc<Shard>,
    max_in_flight: usize,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let group = subject::shard_queue_group(shard.id);
    let mut subscriptions = Vec::new();
    for kind in ShardRequest::ALL {
        let filter = subject::shard_request_filter(kind, shard.id);
        let subscriber = noetl_bus::queue_subscribe(&shard.client, filter, group.clone()).await?;
        subscriptions.push(subscriber.map(move |m| (Some(kind), m)).boxed());
    }
    let ping =
        noetl_bus::queue_subscribe(&shard.client, subject::shard_ping(shard.id), group).await?;
    subscriptions.push(ping.map(|m| (None, m)).boxed());
    let mut requests = futures::stream::select_all(subscriptions);
    tracing::info!(shard = %shard.id, "serving shard");

    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let handlers = TaskTracker::new();
    let mut vanished = false;
    loop {
        let (kind, message) = tokio::select! {
            () = cancel.cancelled() => break,
            next = requests.next() => match next {
                Some(request) => request,
                None => {
                    vanished = true;
                    break;
                }
            },
        };
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let shard = shard.clone();
        handlers.spawn(async move {
            handle(&shard, kind, message).await;
            drop(permit);
        });
    }
    // Dropping the subscriptions unsubscribes; queued requests go to other replicas or time out.
    drop(requests);
    handlers.close();
    handlers.wait().await;
    // A server that keeps running while its subscriptions are gone leaves work stuck: fail
    // loudly so the process exits and its supervisor restarts it.
    anyhow::ensure!(
        !vanished,
        "the subscriptions of shard {} ended unexpectedly",
        shard.id
    );
    tracing::info!(shard = %shard.id, "shard stopped");
    Ok(())
}

async fn handle(shard: &Shard, kind: Option<ShardRequest>, message: Message) {
    let sent = match kind {
        Some(ShardRequest::Submit) => {
            let reply = Reply::from(submit(shard, &message).await);
            noetl_bus::respond(&shard.client, &message, &reply).await
        }
        Some(ShardRequest::Get) => {
            let reply = Reply::from(get(shard, &message).await);
            noetl_bus::respond(&shard.client, &message, &reply).await
        }
        None => {
            let reply = Reply::Ok(PingReply {
                shard: shard.id,
                database_ok: persistence::ping(&shard.pool).await,
            });
            noetl_bus::respond(&shard.client, &message, &reply).await
        }
    };
    if let Err(e) = sent {
        tracing::warn!(shard = %shard.id, error = %e, "failed to reply");
    }
}

fn wire_error(code: WireErrorCode, message: impl Into<String>) -> WireError {
    WireError {
        code,
        message: message.into(),
    }
}

/// The execution id named by the subject, checked to belong to this shard.
fn routed_id(shard: &Shard, message: &Message) -> Result<ExecutionId, WireError> {
    let id = subject::execution_id_of(&message.subject).ok_or_else(|| {
        wire_error(
            WireErrorCode::BadRequest,
            "the subject does not end in an execution id",
        )
    })?;
    let route = shard
        .topology
        .borrow()
        .as_ref()
        .map(|topology| topology.route(id))
        .ok_or_else(|| {
            wire_error(
                WireErrorCode::ShardUnavailable,
                "the server has no topology yet",
            )
        })?;
    if route.shard != shard.id {
        metrics::counter!("noetl_server_misrouted_total", "shard" => shard.id.to_string())
            .increment(1);
        tracing::warn!(
            shard = %shard.id,
            execution_id = %id,
            owner = %route.shard,
            epoch = route.epoch,
            subject = %message.subject,
            "refused a misrouted request"
        );
        return Err(wire_error(
            WireErrorCode::Misrouted,
            format!(
                "execution {id} belongs to shard {} (epoch {}, {} shards), not shard {}",
                route.shard, route.epoch, route.shard_count, shard.id
            ),
        ));
    }
    Ok(id)
}

async fn submit(shard: &Shard, message: &Message) -> Result<SubmitReceipt, WireError> {
    let id = routed_id(shard, message)?;
    let command: SubmitCommand = noetl_bus::decode(&message.subject, &message.payload)
        .map_err(|e| wire_error(WireErrorCode::BadRequest, e.to_string()))?;
    if command.execution_id != id {
        return Err(wire_error(
            WireErrorCode::BadRequest,
            format!(
                "the body is for execution {}, the subject for {id}",
                command.execution_id
            ),
        ));
    }
    command
        .playbook
        .validate()
        .map_err(|e| wire_error(WireErrorCode::BadRequest, format!("invalid playbook: {e}")))?;
    let row = NewExecution {
        execution_id: id,
        playbook_name: command.playbook.name.clone(),
        playbook: to_json(&command.playbook),
        input: to_json(&command.input),
        labels: to_json(&command.labels),
    };
    let committed = shard.committer.commit(row).await?;
    Ok(SubmitReceipt {
        execution_id: committed.execution_id,
        shard: shard.id,
        status: committed.status,
        created_at: committed.created_at,
        created: committed.created,
    })
}

async fn get(
    shard: &Shard,
    message: &Message,
) -> Result<noetl_contract::message::ExecutionView, WireError> {
    let id = routed_id(shard, message)?;
    match persistence::get_execution(&shard.pool, shard.id, id).await {
        Ok(Some(view)) => Ok(view),
        Ok(None) => Err(wire_error(
            WireErrorCode::NotFound,
            format!("no execution {id}"),
        )),
        Err(e) => {
            tracing::error!(shard = %shard.id, execution_id = %id, error = %e, "reading an execution failed");
            Err(wire_error(
                WireErrorCode::ShardUnavailable,
                "the shard database is unavailable",
            ))
        }
    }
}

/// JSON text for a database column; the values came out of JSON, so they go back in.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("playbooks, inputs and labels are plain JSON values")
}
