//! Delivering the child protocol's outbox rows (wiki/execution-model.md, "Children across
//! shards"): each is a NATS request to the shard its execution routes to, with the topology in
//! force at its id's timestamp (the child's shard for a start or a cancel, the parent's for a
//! return), and its row is deleted only once that shard answered. No answer, a misroute (a
//! topology this server has not seen yet), an overloaded or failing shard: the row stays for a
//! later pass. Each message is idempotent at its receiver, so sending one again is harmless.

use std::time::Duration;

use noetl_bus::Client;
use noetl_contract::child::ChildStart;
use noetl_contract::command::ReportAck;
use noetl_contract::message::{
    ExecutionQuery, ExecutionView, SubmitReceipt, WireError, WireErrorCode,
};
use noetl_contract::subject::{shard_request, ShardRequest};
use noetl_contract::{ExecutionId, Topology};
use tokio::sync::watch;

use crate::persistence::Outgoing;

/// How long a shard may take to answer one message (a child's start waits for its commit).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What became of delivering one message.
#[derive(Debug)]
pub(super) enum Delivered {
    /// The receiver answered (or the execution it names is gone for good): delete the row.
    Done,
    /// Send it again on a later pass.
    Retry,
    /// The child's shard refused to start it, and always will: the parent's step fails.
    Refused(Box<ChildStart>, WireError),
}

/// Sends `message` to the shard that owns its execution.
pub(super) async fn deliver(
    client: &Client,
    topology: &watch::Receiver<Option<Topology>>,
    message: Outgoing,
) -> Delivered {
    let Some(topology) = topology.borrow().clone() else {
        return Delivered::Retry;
    };
    let to =
        |kind: ShardRequest, id: ExecutionId| shard_request(kind, topology.route(id).shard, id);
    match message {
        Outgoing::Step(_) => Delivered::Retry,
        Outgoing::Start(start) => {
            let subject = to(ShardRequest::Child, start.submit.execution_id);
            let sent =
                noetl_bus::request::<_, SubmitReceipt>(client, subject, &start, ANSWER_WITHIN);
            match sent.await {
                Ok(_) => Delivered::Done,
                Err(noetl_bus::Error::Remote(error)) if permanent(&error) => {
                    Delivered::Refused(Box::new(start), error)
                }
                Err(e) => retry("a child's start", start.submit.execution_id, &e),
            }
        }
        Outgoing::Return(returned) => {
            let parent = returned.report.execution_id;
            let subject = to(ShardRequest::Return, parent);
            let sent =
                noetl_bus::request::<_, ReportAck>(client, subject, &returned, ANSWER_WITHIN);
            settled("a child's return", parent, sent.await.map(drop))
        }
        Outgoing::Cancel(cancel) => {
            let subject = to(ShardRequest::Cancel, cancel.child_id);
            let query = ExecutionQuery {
                tenant: Some(cancel.tenant.clone()),
            };
            let sent =
                noetl_bus::request::<_, ExecutionView>(client, subject, &query, ANSWER_WITHIN);
            settled("a child's cancel", cancel.child_id, sent.await.map(drop))
        }
    }
}

/// A return or a cancel is done once answered, or once its execution is known to be gone.
fn settled(what: &str, id: ExecutionId, sent: Result<(), noetl_bus::Error>) -> Delivered {
    match sent {
        Ok(()) => Delivered::Done,
        Err(noetl_bus::Error::Remote(WireError {
            code: WireErrorCode::NotFound,
            ..
        })) => {
            tracing::warn!(execution_id = %id, "{what} names an execution its shard does not hold; dropping it");
            Delivered::Done
        }
        Err(e) => retry(what, id, &e),
    }
}

fn retry(what: &str, id: ExecutionId, error: &noetl_bus::Error) -> Delivered {
    tracing::debug!(execution_id = %id, error = %error, "{what} was not answered; it stays in the outbox");
    Delivered::Retry
}

/// Whether the child's shard will refuse the start however often it is sent.
fn permanent(error: &WireError) -> bool {
    matches!(
        error.code,
        WireErrorCode::BadRequest
            | WireErrorCode::InvalidPlaybook
            | WireErrorCode::NestingTooDeep
            | WireErrorCode::PoolForbidden
            | WireErrorCode::TemplateBudgetExceeded
            | WireErrorCode::UnstorableValue
            | WireErrorCode::TooLarge
    )
}
