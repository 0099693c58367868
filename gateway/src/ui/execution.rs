//! `GET /ui/executions/{id}`: an execution's status, route and decoded id, its DAG (live through
//! `GET /ui/executions/{id}/stream`, the API's event stream behind the session), each step's
//! attempts, arguments, result or error and timings, the event timeline, and cancel
//! (`POST /ui/executions/{id}/cancel`, confirmed in a second step).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use futures::Stream;
use maud::{html, Markup};
use noetl_contract::message::{EventView, ExecutionView, StepView};
use noetl_contract::playbook::Playbook;
use noetl_contract::Route;
use serde::Deserialize;

use super::dag;
use super::layout::{badge, csrf, page, pretty, UiError};
use super::login::CsrfForm;
use super::session::Session;
use crate::extract::ExecutionRequest;
use crate::problem::Problem;
use crate::routes::events;
use crate::routes::executions;
use crate::routes::playbooks::rfc3339;

/// Events shown by the first render (fewer when they do not fit in one shard reply); the
/// stream brings the rest.
const EVENTS_SHOWN: u32 = 1_000;

pub async fn show(
    request: ExecutionRequest,
    Extension(session): Extension<Session>,
) -> Result<Markup, UiError> {
    // The log is read before the execution, so the stream (from the log's last entry on)
    // brings every change the execution's step states do not show yet.
    let route = request.route()?;
    let (log, _) = events::read_fitting(&request, route, 0, EVENTS_SHOWN).await?;
    let state = Arc::clone(&request.state);
    let tenant = request.tenant.clone();
    let view = executions::get(request).await?.0.execution;
    // The read API has the graph of a catalog playbook only.
    let playbook = match view.playbook_version {
        Some(version) => state
            .dispatcher
            .catalog_get(&tenant, &view.playbook_name, Some(version))
            .await
            .ok()
            .flatten()
            .map(|entry| entry.playbook),
        None => None,
    };
    let after_seq = log.events.last().map_or(0, |e| e.seq);
    Ok(render(
        &session,
        &view,
        route,
        playbook.as_ref(),
        &log.events,
        after_seq,
    ))
}

fn render(
    session: &Session,
    view: &ExecutionView,
    route: Route,
    playbook: Option<&Playbook>,
    log: &[EventView],
    after_seq: i64,
) -> Markup {
    let id = view.execution_id;
    let terminal = view.status.is_terminal();
    let stream = (!terminal).then(|| format!("/ui/executions/{id}/stream?after_seq={after_seq}"));
    let arguments = arguments(log);
    page(
        &format!("Execution {id}"),
        Some(session),
        html! {
            div #execution data-stream=[stream] {
                h1 { "Execution " (id) }
                div #overview {
                    dl.summary {
                        dt { "Status" } dd #exec-status aria-live="polite" { (badge(view.status.as_str())) }
                        dt { "Playbook" } dd.playbook {
                            (view.playbook_name)
                            @if let Some(version) = view.playbook_version {
                                " " a href={ "/ui/catalog/" (view.playbook_name) "?version=" (version) } { "version " (version) }
                            }
                        }
                        dt { "Shard" } dd #exec-shard { (route.shard) }
                        dt { "Routed with" } dd { "epoch " (route.epoch) ", " (route.shard_count) " shards" }
                        dt { "Id decoded" } dd {
                            "minted " (rfc3339(id.unix_ms())) ", node " (id.node().get()) ", sequence " (id.sequence())
                        }
                        dt { "Labels" } dd.labels {
                            @for (key, value) in &view.labels { span.label { (key) "=" (value) } }
                        }
                        @if let Some(parent) = view.parent_id {
                            dt { "Parent" } dd { a #exec-parent href={ "/ui/executions/" (parent) } { (parent) } }
                        }
                        @if let Some(root) = view.root_id.filter(|root| Some(*root) != view.parent_id) {
                            dt { "Root" } dd { a href={ "/ui/executions/" (root) } { (root) } }
                        }
                        @if !view.children.is_empty() {
                            dt { "Children" } dd #exec-children {
                                @for child in &view.children { a href={ "/ui/executions/" (child) } { (child) } " " }
                            }
                        }
                        dt { "Created" } dd { (view.created_at) }
                        dt { "Updated" } dd { (view.updated_at) }
                    }
                    @if !terminal { (cancel_form(session, view)) }
                }
                h2 { "Input" }
                pre.json tabindex="0" { (pretty(&view.input)) }
                @if !view.ctx.is_empty() {
                    h2 { "Variables" }
                    pre.json tabindex="0" { (pretty(&view.ctx)) }
                }
                h2 #dag-heading { "DAG" }
                @if playbook.is_none() {
                    p.note { "An inline playbook's arcs are not kept by the API: its steps are drawn without them." }
                }
                div.dag-frame tabindex="0" { (dag::render(&view.steps, playbook)) }
                h2 { "Steps" }
                (steps_table(&view.steps, &arguments))
                h2 { "Event timeline" }
                ol #timeline tabindex="0" {
                    @for event in log { (timeline_entry(event)) }
                }
            }
        },
    )
}

fn cancel_form(session: &Session, view: &ExecutionView) -> Markup {
    html! {
        details.cancel {
            summary { "Cancel this execution…" }
            form method="post" action={ "/ui/executions/" (view.execution_id) "/cancel" } {
                (csrf(session))
                p { "Its unfinished steps will be cancelled. This cannot be undone." }
                button.danger type="submit" { "Confirm: cancel execution" }
            }
        }
    }
}

/// Each step's rendered arguments, from its last `step_dispatched` entry.
fn arguments(log: &[EventView]) -> HashMap<&str, &serde_json::Value> {
    log.iter()
        .filter(|event| event.kind == "step_dispatched")
        .filter_map(|event| {
            Some((
                event.payload.get("step")?.as_str()?,
                event.payload.get("with")?,
            ))
        })
        .collect()
}

fn steps_table(steps: &[StepView], arguments: &HashMap<&str, &serde_json::Value>) -> Markup {
    html! {
        table #steps {
            caption { "Each step's state, attempts, arguments, result or error, and timings" }
            thead { tr {
                th scope="col" { "Step" } th scope="col" { "Status" } th scope="col" { "Attempt" }
                th scope="col" { "Arguments" } th scope="col" { "Result or error" }
                th scope="col" { "Started" } th scope="col" { "Finished" }
            } }
            tbody {
                @for step in steps {
                    tr data-step=(step.name) data-status=(step.status.as_str()) {
                        th scope="row" {
                            (step.name)
                            @if let Some(progress) = &step.loop_ {
                                br; span.loop { "loop " (progress.succeeded.saturating_add(progress.failed)) "/" (progress.total) }
                            }
                            @if let Some(child) = step.child_id {
                                br; a.child href={ "/ui/executions/" (child) } { "child " (child) }
                            }
                        }
                        td.st { (step.status.as_str()) }
                        td { (step.attempt) }
                        td { @if let Some(with) = arguments.get(step.name.as_str()) { pre.json tabindex="0" { (pretty(with)) } } }
                        td {
                            @if let Some(error) = &step.error { pre.error tabindex="0" { (error) } }
                            @if let Some(result) = &step.result { pre.json tabindex="0" { (pretty(result)) } }
                        }
                        td { (step.started_at.as_deref().unwrap_or("")) }
                        td { (step.finished_at.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

fn timeline_entry(event: &EventView) -> Markup {
    html! {
        li data-seq=(event.seq) {
            span.seq { (event.seq) } " "
            time { (event.created_at) } " "
            strong { (event.kind) } " "
            code { (event.payload) }
        }
    }
}

pub async fn cancel(
    request: ExecutionRequest,
    Extension(session): Extension<Session>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    session.check(&form.csrf)?;
    let id = request.id;
    let _cancelled = executions::cancel(request).await?;
    Ok(Redirect::to(&format!("/ui/executions/{id}")).into_response())
}

#[derive(Debug, Deserialize)]
pub struct StreamParams {
    #[serde(default)]
    after_seq: i64,
}

/// The API's event stream for the session's tenant, from `after_seq` (the last entry the page
/// showed) unless the browser resumes with `Last-Event-ID`.
pub async fn stream(
    request: ExecutionRequest,
    Query(params): Query<StreamParams>,
    mut headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    if !headers.contains_key("last-event-id") {
        headers.insert("last-event-id", HeaderValue::from(params.after_seq.max(0)));
    }
    events::stream(request, headers).await
}
