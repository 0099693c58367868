//! Serving one shard: its NATS subscriptions and the handling of each request.
//!
//! Every request is checked against the topology first: an execution that does not route to
//! this shard is refused (error reply, log, metric) before anything touches the database.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use noetl_bus::{Client, Message};
use noetl_contract::child::ParentLink;
use noetl_contract::command::{Heartbeat, HeartbeatAck, ReportAck, StepOutcome, StepReport};
use noetl_contract::engine::Event;
use noetl_contract::message::{
    EventPage, EventsQuery, ExecutionList, ExecutionQuery, ExecutionView, ListQuery, PingReply,
    Reply, ShardStats, SubmitCommand, SubmitReceipt, WireError, WireErrorCode,
};
use noetl_contract::subject::{self, ShardRequest};
use noetl_contract::{ExecutionId, ShardId, Topology};
use sqlx::PgPool;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

mod children;

use crate::access::Access;
use crate::commit::Committer;
use crate::orchestrate::{Applied, Orchestrator};
use crate::persistence::{self, Beat, BeatAnswer, Deleted};

/// Everything a request handler of one shard needs.
#[derive(Debug)]
pub struct Shard {
    pub id: ShardId,
    pub client: Client,
    pub pool: PgPool,
    pub committer: Committer,
    pub orchestrator: Orchestrator,
    pub topology: watch::Receiver<Option<Topology>>,
    /// `step_result_max_bytes`: a larger result fails its step with `result_too_large`.
    pub step_result_max_bytes: usize,
    /// Which tenants' steps may target which pools, and run `shell`.
    pub access: Access,
    /// How deep children may nest (`max_child_depth`).
    pub max_child_depth: u32,
}

/// Largest page of events one request returns.
const MAX_EVENTS_PAGE: u32 = 1_000;
/// Largest page of executions one request returns.
const MAX_LIST_PAGE: u32 = 1_000;

/// Subscribes to the shard's subjects (queue group, so replicas share the work) and handles
/// requests until `cancel`; then stops taking new ones and finishes those in flight.
pub async fn serve(
    shard: Arc<Shard>,
    max_in_flight: usize,
    subscribed: Arc<AtomicUsize>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let group = subject::shard_queue_group(shard.id);
    let mut subscriptions = Vec::new();
    for kind in ShardRequest::ALL {
        let filter = subject::shard_request_filter(kind, shard.id);
        let subscriber = noetl_bus::queue_subscribe(&shard.client, filter, group.clone()).await?;
        subscriptions.push(
            subscriber
                .map(move |m| (Request::Execution(kind), m))
                .boxed(),
        );
    }
    for (filter, request) in [
        (subject::shard_ping(shard.id), Request::Ping),
        (subject::shard_stats(shard.id), Request::Stats),
        (subject::shard_list(shard.id), Request::List),
    ] {
        let subscriber = noetl_bus::queue_subscribe(&shard.client, filter, group.clone()).await?;
        subscriptions.push(subscriber.map(move |m| (request, m)).boxed());
    }
    let mut requests = futures::stream::select_all(subscriptions);
    tracing::info!(shard = %shard.id, "serving shard");
    subscribed.fetch_add(1, Ordering::AcqRel);

    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let handlers = TaskTracker::new();
    let mut vanished = false;
    loop {
        let (request, message) = tokio::select! {
            () = cancel.cancelled() => break,
            next = requests.next() => match next {
                Some(request) => request,
                None => {
                    vanished = true;
                    break;
                }
            },
        };
        // A full shard says so at once rather than queueing without bound; pings still
        // answer, so readiness reflects the database, not the load.
        let permit = match in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if matches!(request, Request::Ping) => None,
            Err(_) => {
                refuse_overloaded(&shard, &message, max_in_flight).await;
                continue;
            }
        };
        let shard = shard.clone();
        let span = request_span(&shard, request, &message);
        handlers.spawn(
            async move {
                handle(&shard, request, message).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Dropping the subscriptions unsubscribes; queued requests go to other replicas or time out.
    drop(requests);
    subscribed.fetch_sub(1, Ordering::AcqRel);
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

/// What a message on one of the shard's subscriptions asks for.
#[derive(Debug, Clone, Copy)]
enum Request {
    /// About one execution (the subject ends in its id).
    Execution(ShardRequest),
    /// Whether a server serves the shard and its database answers.
    Ping,
    /// How many executions the shard holds, and how many are unfinished.
    Stats,
    /// A page of the shard's executions, newest first.
    List,
}

async fn handle(shard: &Shard, request: Request, message: Message) {
    let sent = match request {
        Request::Execution(kind) => match kind {
            ShardRequest::Submit => answer(shard, &message, submit(shard, &message).await).await,
            ShardRequest::Get => answer(shard, &message, get(shard, &message).await).await,
            ShardRequest::Result => answer(shard, &message, report(shard, &message).await).await,
            ShardRequest::Heartbeat => {
                answer(shard, &message, heartbeat(shard, &message).await).await
            }
            ShardRequest::Cancel => answer(shard, &message, cancel(shard, &message).await).await,
            ShardRequest::Events => answer(shard, &message, events(shard, &message).await).await,
            ShardRequest::Delete => answer(shard, &message, delete(shard, &message).await).await,
            ShardRequest::Child => {
                answer(shard, &message, children::start(shard, &message).await).await
            }
            ShardRequest::Return => {
                answer(shard, &message, children::returned(shard, &message).await).await
            }
        },
        Request::Ping => {
            let ping = PingReply {
                shard: shard.id,
                database_ok: persistence::can_write(&shard.pool).await,
            };
            answer(shard, &message, Ok(ping)).await
        }
        Request::Stats => answer(shard, &message, stats(shard).await).await,
        Request::List => answer(shard, &message, list(shard, &message).await).await,
    };
    if let Err(e) = sent {
        tracing::warn!(shard = %shard.id, error = %e, "failed to reply");
    }
}

/// A request about one execution runs in a span of the execution's trace, a child of the
/// sender's span its headers name.
fn request_span(shard: &Shard, request: Request, message: &Message) -> tracing::Span {
    let Request::Execution(kind) = request else {
        return tracing::Span::none();
    };
    let Some(id) = subject::execution_id_of(&message.subject) else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!("shard_request", request = ?kind, shard = %shard.id, execution_id = %id);
    noetl_bus::trace::join(&span, id, message.headers.as_ref());
    span
}

async fn refuse_overloaded(shard: &Shard, message: &Message, max_in_flight: usize) {
    metrics::counter!("noetl_server_overloaded_total", "shard" => shard.id.to_string())
        .increment(1);
    let refusal = wire_error(
        WireErrorCode::Overloaded,
        format!("{max_in_flight} requests are in flight on this shard's server"),
    );
    if let Err(e) = answer::<()>(shard, message, Err(refusal)).await {
        tracing::warn!(shard = %shard.id, error = %e, "failed to refuse an overloaded request");
    }
}

/// Replies to `message` with `outcome` in the `Reply` envelope.
async fn answer<T: serde::Serialize>(
    shard: &Shard,
    message: &Message,
    outcome: Result<T, WireError>,
) -> Result<(), noetl_bus::Error> {
    noetl_bus::respond(&shard.client, message, &Reply::from(outcome)).await
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
    let command: SubmitCommand = body(message, id, |c: &SubmitCommand| c.execution_id)?;
    admit(shard, &command, None).await
}

/// Validates a new execution (a submit, or a child's start with its `parent`), and commits it.
async fn admit(
    shard: &Shard,
    command: &SubmitCommand,
    parent: Option<&ParentLink>,
) -> Result<SubmitReceipt, WireError> {
    let max_step_timeout_ms = shard.orchestrator.leases().max_timeout_ms;
    command
        .playbook
        .validate()
        .and_then(|()| {
            command
                .playbook
                .check_durations(max_step_timeout_ms, "max_step_timeout_ms")
        })
        .map_err(|e| wire_error(WireErrorCode::InvalidPlaybook, format!("playbook.{e}")))?;
    shard
        .access
        .check(&command.tenant, &command.playbook)
        .map_err(|refusal| wire_error(WireErrorCode::PoolForbidden, refusal))?;
    children::check_nesting(shard, command, parent)?;
    let row = shard.orchestrator.prepare_child(command, parent).await?;
    let committed = shard.committer.commit(row).await?;
    Ok(SubmitReceipt {
        execution_id: committed.execution_id,
        shard: shard.id,
        status: committed.status,
        created_at: committed.created_at,
        created: committed.created,
    })
}

async fn get(shard: &Shard, message: &Message) -> Result<ExecutionView, WireError> {
    let id = routed_id(shard, message)?;
    let query = execution_query(message)?;
    read_view(shard, id, tenant_of(query.tenant.as_deref())?).await
}

/// The body of a get or a cancel (`null`, from older gateways, names no tenant).
fn execution_query(message: &Message) -> Result<ExecutionQuery, WireError> {
    decode::<Option<ExecutionQuery>>(message).map(Option::unwrap_or_default)
}

/// The tenant a read, a cancel, an events page or a listing is for. Every one must name it:
/// the gateway always does (the caller's), and nothing else of the product reads executions
/// across tenants, so a request without one is refused rather than answered for every tenant.
fn tenant_of(tenant: Option<&str>) -> Result<&str, WireError> {
    tenant.ok_or_else(|| {
        wire_error(
            WireErrorCode::BadRequest,
            "the request names no tenant: every read, cancel and listing is for one tenant",
        )
    })
}

async fn read_view(
    shard: &Shard,
    id: ExecutionId,
    tenant: &str,
) -> Result<ExecutionView, WireError> {
    match persistence::get_execution(&shard.pool, shard.id, id, tenant).await {
        Ok(Some(view)) => Ok(view),
        Ok(None) => Err(not_found(id)),
        Err(e) => Err(database_failed(shard, id, &e)),
    }
}

fn not_found(id: ExecutionId) -> WireError {
    wire_error(WireErrorCode::NotFound, format!("no execution {id}"))
}

fn database_failed(shard: &Shard, id: ExecutionId, error: &persistence::Error) -> WireError {
    tracing::error!(shard = %shard.id, execution_id = %id, error = %error, "shard database request failed");
    unavailable()
}

/// The answer when the shard's database failed (the details go to the log, not the caller).
fn unavailable() -> WireError {
    wire_error(
        WireErrorCode::ShardUnavailable,
        "the shard database is unavailable",
    )
}

/// Decodes a request body.
fn decode<T: serde::de::DeserializeOwned>(message: &Message) -> Result<T, WireError> {
    noetl_bus::decode(&message.subject, &message.payload)
        .map_err(|e| wire_error(WireErrorCode::BadRequest, e.to_string()))
}

/// Decodes a body whose `execution_id` must match the subject's.
fn body<T: serde::de::DeserializeOwned>(
    message: &Message,
    id: ExecutionId,
    id_of: impl Fn(&T) -> ExecutionId,
) -> Result<T, WireError> {
    let body: T = decode(message)?;
    if id_of(&body) != id {
        return Err(wire_error(
            WireErrorCode::BadRequest,
            format!(
                "the body is for execution {}, the subject for {id}",
                id_of(&body)
            ),
        ));
    }
    Ok(body)
}

async fn report(shard: &Shard, message: &Message) -> Result<ReportAck, WireError> {
    let id = routed_id(shard, message)?;
    let report: StepReport = body(message, id, |r: &StepReport| r.execution_id)?;
    record(shard, id, report, None).await
}

/// Applies a worker's report, or the return of `child`, to execution `id`.
async fn record(
    shard: &Shard,
    id: ExecutionId,
    mut report: StepReport,
    child: Option<ExecutionId>,
) -> Result<ReportAck, WireError> {
    if report.outcome.scrub_nul() {
        tracing::debug!(execution_id = %id, step = report.step_index.get(), "replaced NUL characters in a result");
    }
    if let Some(size) = report
        .outcome
        .cap(shard.step_result_max_bytes, "step_result_max_bytes")
    {
        tracing::info!(execution_id = %id, step = report.step_index.get(), size, "a result over step_result_max_bytes fails its step");
        metrics::counter!("noetl_server_results_too_large_total", "shard" => shard.id.to_string(), "limit" => "step_result_max_bytes")
            .increment(1);
    }
    let outcome_label = match report.outcome {
        StepOutcome::Succeeded { .. } => "succeeded",
        StepOutcome::Failed { .. } => "failed",
    };
    let run_seconds = (report.finished_at_ms - report.started_at_ms).max(0) as f64 / 1_000.0;
    let finished = Event::Finished {
        step: report.step_index,
        attempt: report.attempt,
        outcome: report.outcome,
        started_at_ms: report.started_at_ms,
    };
    let event = match report.item {
        Some(item) => Event::Item {
            item,
            event: Box::new(finished),
        },
        None => finished,
    };
    let step = report.step_index;
    let orchestrator = &shard.orchestrator;
    let applied = match child {
        Some(child) => {
            orchestrator
                .child_returned(id, event, report.token, child)
                .await
        }
        None => orchestrator.report(id, event, report.token).await,
    };
    match applied {
        Some(Applied::Changed(_)) => {
            metrics::histogram!("noetl_server_step_seconds", "shard" => shard.id.to_string(), "outcome" => outcome_label)
                .record(run_seconds);
            Ok(ReportAck::Recorded)
        }
        Some(Applied::Stale(_)) => Ok(ReportAck::Stale),
        Some(Applied::Refused) => {
            refused(shard, "result", id, step, &report.worker);
            Ok(ReportAck::Stale)
        }
        Some(Applied::NotFound) => Err(not_found(id)),
        None => Err(unavailable()),
    }
}

async fn heartbeat(shard: &Shard, message: &Message) -> Result<HeartbeatAck, WireError> {
    let id = routed_id(shard, message)?;
    let beat: Heartbeat = body(message, id, |h: &Heartbeat| h.execution_id)?;
    let worker = beat.worker;
    let beat = Beat {
        execution_id: id,
        step: beat.step_index,
        attempt: beat.attempt,
        starting: beat.starting,
        started_at_ms: beat.started_at_ms,
        token: beat.token,
        item: beat.item,
    };
    match shard.orchestrator.heartbeat(beat).await {
        Ok(BeatAnswer::Owns(_)) => Ok(HeartbeatAck::Continue),
        Ok(BeatAnswer::Lost) => Ok(HeartbeatAck::Stop),
        Ok(BeatAnswer::Refused) => {
            refused(shard, "heartbeat", id, beat.step, &worker);
            Ok(HeartbeatAck::Stop)
        }
        Err(e) => Err(database_failed(shard, id, &e)),
    }
}

/// Counts and logs a report or heartbeat that named the attempt owning its step without that
/// attempt's token: recorded nowhere, answered as stale (`Stale`, `Stop`), so a worker that
/// somehow lost its token does not retry forever. The token is never logged, and the claimed
/// worker name (the sender's to choose) at most its first 64 characters.
fn refused(
    shard: &Shard,
    kind: &'static str,
    id: ExecutionId,
    step: noetl_contract::step::StepIndex,
    worker: &str,
) {
    metrics::counter!("noetl_server_reports_refused_total", "shard" => shard.id.to_string(), "kind" => kind)
        .increment(1);
    let worker: String = worker.chars().take(64).collect();
    tracing::warn!(shard = %shard.id, execution_id = %id, step = step.get(), worker, kind, "refused a report without the attempt's token");
}

async fn cancel(shard: &Shard, message: &Message) -> Result<ExecutionView, WireError> {
    let id = routed_id(shard, message)?;
    let query = execution_query(message)?;
    let tenant = tenant_of(query.tenant.as_deref())?;
    // An execution's tenant never changes, so checking it before the locked apply is enough.
    match persistence::visible(&shard.pool, id, tenant).await {
        Ok(true) => {}
        Ok(false) => return Err(not_found(id)),
        Err(e) => return Err(database_failed(shard, id, &e)),
    }
    match shard.orchestrator.apply(id, Event::Cancel).await {
        Ok(Applied::NotFound) => return Err(not_found(id)),
        Ok(_) => {}
        Err(e) => return Err(database_failed(shard, id, &e)),
    }
    read_view(shard, id, tenant).await
}

/// Deletes a terminal execution of the caller's tenant from every table of the shard.
async fn delete(shard: &Shard, message: &Message) -> Result<(), WireError> {
    let id = routed_id(shard, message)?;
    let query = execution_query(message)?;
    let tenant = tenant_of(query.tenant.as_deref())?;
    match persistence::delete_execution(&shard.pool, id, tenant).await {
        Ok(Deleted::Gone) => {
            metrics::counter!("noetl_server_executions_deleted_total", "shard" => shard.id.to_string())
                .increment(1);
            Ok(())
        }
        Ok(Deleted::NotFound) => Err(not_found(id)),
        Ok(Deleted::NotTerminal(status)) => Err(wire_error(
            WireErrorCode::NotTerminal,
            format!("execution {id} is {}; cancel it first", status.as_str()),
        )),
        Err(e) => Err(database_failed(shard, id, &e)),
    }
}

async fn stats(shard: &Shard) -> Result<ShardStats, WireError> {
    let (executions, unfinished) = persistence::shard_counts(&shard.pool).await.map_err(|e| {
        tracing::error!(shard = %shard.id, error = %e, "failed to count the shard's executions");
        unavailable()
    })?;
    Ok(ShardStats {
        shard: shard.id,
        executions,
        unfinished,
    })
}

async fn list(shard: &Shard, message: &Message) -> Result<ExecutionList, WireError> {
    let mut query: ListQuery = decode(message)?;
    let tenant = tenant_of(query.tenant.as_deref())?.to_owned();
    query.limit = query.limit.clamp(1, MAX_LIST_PAGE);
    let executions = persistence::list_executions(&shard.pool, shard.id, &tenant, &query)
        .await
        .map_err(|e| {
            tracing::error!(shard = %shard.id, error = %e, "failed to list executions");
            unavailable()
        })?;
    Ok(ExecutionList { executions })
}

async fn events(shard: &Shard, message: &Message) -> Result<EventPage, WireError> {
    let id = routed_id(shard, message)?;
    let query: EventsQuery = decode(message)?;
    let tenant = tenant_of(query.tenant.as_deref())?;
    let limit = i64::from(query.limit.clamp(1, MAX_EVENTS_PAGE));
    match persistence::events_page(&shard.pool, id, tenant, query.after_seq, limit).await {
        Ok(Some(page)) => Ok(page),
        Ok(None) => Err(not_found(id)),
        Err(e) => Err(database_failed(shard, id, &e)),
    }
}
