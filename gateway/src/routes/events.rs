//! An execution's event log: `GET /api/v1/executions/{id}/events` (pages, by sequence number)
//! and `GET /api/v1/executions/{id}/stream` (Server-Sent Events, live, ending at the terminal
//! state).

use std::borrow::Cow;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::Query;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use noetl_contract::message::{EventPage, EventView, EventsQuery, ExecutionStatus};
use noetl_contract::{ExecutionId, Route};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::extract::{ExecutionRequest, IdPath};
use crate::limits::StreamSlot;
use crate::problem::{Code, Problem};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1_000;
/// How often a live stream asks the shard for new events.
const STREAM_POLL: Duration = Duration::from_millis(200);
/// Polls in a row that may fail before a live stream gives up with an `error` event.
const STREAM_MAX_FAILURES: u32 = 25;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Return events with a sequence number greater than this (0: from the start).
    #[serde(default)]
    #[param(minimum = 0, default = 0)]
    pub after_seq: i64,
    /// At most this many events (1 to 1,000; default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of an execution's event log, in sequence order.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsResponse {
    pub execution_id: ExecutionId,
    pub status: ExecutionStatus,
    pub events: Vec<EventView>,
    /// Pass as `after_seq` for the next page; absent when this page was the last one so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after_seq: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/executions/{id}/events",
    tag = "executions",
    operation_id = "list_execution_events",
    summary = "Page through an execution's events",
    description = "The event log in sequence order, after `after_seq`. A client following the \
        log stops once `status` is terminal and a page comes back without `next_after_seq`.",
    params(IdPath, PageParams),
    responses((status = 200, description = "A page of events.", body = EventsResponse)),
)]
pub async fn page(
    request: ExecutionRequest,
    params: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventsResponse>, Problem> {
    let Query(params) = params.map_err(|e| Problem::new(Code::InvalidRequest, e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) || params.after_seq < 0 {
        return Err(Problem::new(
            Code::InvalidRequest,
            format!("limit must be 1 to {MAX_LIMIT} and after_seq not negative"),
        ));
    }
    let route = request.route()?;
    let page = read(&request, route, params.after_seq, limit).await?;
    let next_after_seq = (page.events.len() == limit as usize)
        .then(|| page.events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(EventsResponse {
        execution_id: request.id,
        status: page.status,
        events: page.events,
        next_after_seq,
    }))
}

/// The events after `after_seq`, at most `limit` and as many as fit in one shard reply: a page
/// over NATS `max_payload` (413 `payload_too_large`) is asked for again with half the limit,
/// down to one event. Returns the page and the limit it was read with.
pub async fn read_fitting(
    request: &ExecutionRequest,
    route: Route,
    after_seq: i64,
    mut limit: u32,
) -> Result<(EventPage, u32), Problem> {
    loop {
        match read(request, route, after_seq, limit).await {
            Err(problem) if problem.code() == Code::PayloadTooLarge && limit > 1 => {
                limit = (limit / 2).max(1);
            }
            read => return read.map(|page| (page, limit)),
        }
    }
}

/// At most `limit` events of the log after `after_seq`, from the execution's shard.
async fn read(
    request: &ExecutionRequest,
    route: Route,
    after_seq: i64,
    limit: u32,
) -> Result<EventPage, Problem> {
    let query = EventsQuery {
        after_seq,
        limit,
        tenant: Some(request.tenant.clone()),
    };
    request
        .state
        .dispatcher
        .events(route, request.id, query)
        .await
}

/// One event of the live stream, as an event-stream parser sees it (OpenAPI 3.1 has no schema
/// for a whole stream; the response's schema describes each event).
#[derive(Debug)]
pub struct StreamEvent;

impl PartialSchema for StreamEvent {
    fn schema() -> RefOr<Schema> {
        let mut data = ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/json")
            .description(Some("The `EventView` as JSON."))
            .build();
        // utoipa has no builder for `contentSchema` (JSON Schema 2020-12); it serializes
        // whatever the object's extensions hold, so it goes there.
        data.extensions = Some(
            [(
                "contentSchema",
                serde_json::json!({"$ref": "#/components/schemas/EventView"}),
            )]
            .into_iter()
            .collect(),
        );
        let logged = ObjectBuilder::new()
            .description(Some("An entry of the event log."))
            .property(
                "id",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]+$"))
                    .description(Some(
                        "The entry's sequence number (`seq`): send it as `Last-Event-ID` to resume.",
                    )),
            )
            .required("id")
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("The entry's kind (`kind`).")),
            )
            .required("event")
            .property("data", data)
            .required("data");
        let end = closing_event(
            "end",
            "The last event: the execution ended, and every entry before it was sent.",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["succeeded", "failed", "cancelled"]))
                .description(Some("The execution's final status.")),
        )
        .property(
            "id",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "The id of the entry before it, as event streams repeat it.",
                )),
        );
        let error = closing_event(
            "error",
            "The last event of a stream that cannot go on: an event too large to send (over NATS \
             `max_payload`), or the shard failed 25 polls in a row. Its data is the problem \
             document.",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("The problem document, as JSON.")),
        );
        AnyOfBuilder::new()
            .item(logged)
            .item(end)
            .item(error)
            .description(Some(
                "One Server-Sent Event: an entry of the event log, or the `end` or `error` that \
                 closes the stream. Between events the stream sends comments to keep the \
                 connection alive.",
            ))
            .into()
    }
}

/// The schema of an event that closes the stream: `event` is `name`, `data` is `data`.
fn closing_event(name: &str, description: &str, data: ObjectBuilder) -> ObjectBuilder {
    ObjectBuilder::new()
        .description(Some(description))
        .property(
            "event",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([name])),
        )
        .required("event")
        .property("data", data)
        .required("data")
}

impl ToSchema for StreamEvent {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("StreamEvent")
    }
}

/// Streams the log from the start (or after `Last-Event-ID`), then live, and ends once the
/// execution is terminal and every event has been sent.
#[utoipa::path(
    get,
    path = "/api/v1/executions/{id}/stream",
    tag = "executions",
    operation_id = "stream_execution_events",
    summary = "Follow an execution's events live (Server-Sent Events)",
    description = "The event log from the start (or after `Last-Event-ID`), then live as it \
        grows. Each event has `id` = its sequence number, `event` = its kind and `data` = the \
        `EventView` as JSON. Once the execution is terminal and every event has been sent, a last \
        event `end` carries the final status (`succeeded`, `failed` or `cancelled`) as its data, \
        and the stream closes. A stream that cannot go on (an event over NATS `max_payload`, or \
        25 failed polls in a row) ends with an event `error` whose data is the problem document. \
        Pages are asked for with a smaller limit while they are too large for one shard reply. \
        Comments keep the connection alive meanwhile. Problems found before the stream starts (bad id, unknown execution, shard down) are answered as problem \
        documents. A gateway keeps at most `sse_streams_per_tenant` streams of one tenant open \
        at once (429 `stream_quota_exceeded`), and `max_sse_streams` in all (503 \
        `too_many_streams`); a stream's slot is freed as soon as it ends or its client goes.",
    params(
        IdPath,
        (
            "Last-Event-ID" = Option<String>,
            Header,
            nullable = false,
            description = "Resume after this sequence number (what a reconnecting EventSource \
                sends); anything that is not a number means from the start."
        ),
    ),
    responses((
        status = 200,
        description = "A stream of `text/event-stream` events, ending with `event: end`. The \
            schema describes each event.",
        body = StreamEvent,
        content_type = "text/event-stream",
        example = json!("id: 1\nevent: execution_created\ndata: {\"seq\":1,\"kind\":\"execution_created\",\"payload\":{},\"created_at\":\"2025-01-01T00:00:00Z\"}\n\nevent: end\ndata: succeeded\n\n"),
    )),
)]
pub async fn stream(
    request: ExecutionRequest,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let route = request.route()?;
    // Counted before the shard is asked anything; the slot lives as long as the stream.
    let slot = request.state.streams.open(&request.tenant)?;
    let after_seq = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Fail fast with a problem document when the execution does not exist.
    let (first, limit) = read_fitting(&request, route, after_seq, MAX_LIMIT).await?;
    let cursor = Cursor {
        request,
        route,
        after_seq,
        more: first.events.len() == limit as usize,
        pending: first.events.into_iter().collect(),
        last_status: first.status,
        done: false,
        failures: 0,
        _slot: slot,
    };
    let events = futures::stream::unfold(cursor, |mut cursor| async move {
        cursor.next().await.map(|event| (Ok(event), cursor))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

struct Cursor {
    request: ExecutionRequest,
    route: Route,
    after_seq: i64,
    pending: std::collections::VecDeque<EventView>,
    /// The last page was full: more events may be waiting right now.
    more: bool,
    last_status: ExecutionStatus,
    done: bool,
    /// Polls in a row that failed.
    failures: u32,
    /// The stream's place in its tenant's quota, given back when the stream is dropped.
    _slot: StreamSlot,
}

impl Cursor {
    /// The `error` event that ends the stream, with the problem as its data.
    fn fail(&mut self, problem: &Problem) -> SseEvent {
        self.done = true;
        tracing::info!(execution_id = %self.request.id, ?problem, "ending an event stream with an error");
        SseEvent::default()
            .event("error")
            .json_data(problem)
            .unwrap_or_else(|_| SseEvent::default().event("error"))
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.after_seq = event.seq;
                return Some(
                    SseEvent::default()
                        .id(event.seq.to_string())
                        .event(event.kind.clone())
                        .json_data(&event)
                        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event")),
                );
            }
            if self.done {
                return None;
            }
            if self.last_status.is_terminal() && !self.more {
                // Everything up to the terminal state was read: say so and end.
                self.done = true;
                return Some(
                    SseEvent::default()
                        .event("end")
                        .data(self.last_status.as_str()),
                );
            }
            if !self.more {
                tokio::time::sleep(STREAM_POLL).await;
            }
            match read_fitting(&self.request, self.route, self.after_seq, MAX_LIMIT).await {
                Ok((page, limit)) => {
                    self.failures = 0;
                    self.last_status = page.status;
                    self.more = page.events.len() == limit as usize;
                    self.pending.extend(page.events);
                }
                // One event over NATS max_payload can never be read: say so and end.
                Err(problem) if problem.code() == Code::PayloadTooLarge => {
                    return Some(self.fail(&problem));
                }
                // A shard that does not answer for a moment is retried; the client sees
                // keep-alives meanwhile, and an `error` event once it failed too often.
                Err(problem) => {
                    tracing::debug!(execution_id = %self.request.id, ?problem, "stream poll failed");
                    self.failures += 1;
                    if self.failures >= STREAM_MAX_FAILURES {
                        return Some(self.fail(&problem));
                    }
                }
            }
        }
    }
}
