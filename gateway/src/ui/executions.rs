//! `GET /ui/executions`: the listing across shards, with the API's filters and cursor, a
//! partial answer named as such, and (on the first page) a refresh by the script: one listing
//! request per interval per open page.

use axum::extract::{Query, State};
use axum::Extension;
use maud::{html, Markup};
use noetl_contract::message::ExecutionStatus;
use serde::Deserialize;

use super::layout::{badge, page};
use super::session::Caller;
use crate::routes::listing::{self, ListParams, ListResponse};

/// Seconds between two refreshes of the first page.
pub const REFRESH_SECS: u32 = 5;
const PAGE_SIZE: u32 = 50;

/// The filter form's fields; an empty field is no filter.
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    status: String,
    #[serde(default)]
    playbook: String,
    #[serde(default)]
    labels: String,
    #[serde(default)]
    created_after: String,
    #[serde(default)]
    created_before: String,
    #[serde(default)]
    root_id: String,
    #[serde(default)]
    cursor: String,
}

fn given(field: &str) -> Option<String> {
    Some(field.trim().to_owned()).filter(|value| !value.is_empty())
}

impl Filters {
    fn params(&self) -> ListParams {
        ListParams {
            limit: Some(PAGE_SIZE),
            cursor: given(&self.cursor),
            status: given(&self.status),
            labels: given(&self.labels),
            playbook: given(&self.playbook),
            created_after: given(&self.created_after),
            created_before: given(&self.created_before),
            root_id: given(&self.root_id),
        }
    }

    /// The path of a page with these filters: the first, or the one after `cursor`.
    fn page(&self, cursor: Option<&str>) -> String {
        let pairs = [
            ("status", &self.status),
            ("playbook", &self.playbook),
            ("labels", &self.labels),
            ("created_after", &self.created_after),
            ("created_before", &self.created_before),
            ("root_id", &self.root_id),
        ];
        let mut query: Vec<String> = pairs
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| format!("{name}={}", encode(value)))
            .collect();
        query.extend(cursor.map(|cursor| format!("cursor={}", encode(cursor))));
        format!("/ui/executions?{}", query.join("&"))
    }
}

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

pub async fn list(
    Caller {
        state,
        principal,
        session,
    }: Caller,
    filters: Result<Query<Filters>, axum::extract::rejection::QueryRejection>,
) -> Markup {
    let Query(filters) = filters.unwrap_or_default();
    let answer = listing::list(
        State(state),
        Extension(principal),
        Ok(Query(filters.params())),
    )
    .await
    .map(|json| json.0);
    page(
        "Executions",
        Some(&session),
        html! {
            h1 { "Executions" }
            (filter_form(&filters))
            @match answer {
                Ok(answer) => (listing_section(&filters, &answer)),
                Err(problem) => p.alert role="alert" { (problem.detail()) },
            }
        },
    )
}

fn filter_form(filters: &Filters) -> Markup {
    html! {
        form.filters method="get" action="/ui/executions" {
            div.field {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" { "any" }
                    @for status in ExecutionStatus::ALL {
                        option value=(status.as_str()) selected[filters.status == status.as_str()] { (status.as_str()) }
                    }
                }
            }
            div.field {
                label for="f-playbook" { "Playbook" }
                input #f-playbook name="playbook" value=(filters.playbook);
            }
            div.field {
                label for="f-labels" { "Labels (key=value,…)" }
                input #f-labels name="labels" value=(filters.labels);
            }
            div.field {
                label for="f-after" { "Created after (RFC 3339)" }
                input #f-after name="created_after" value=(filters.created_after) placeholder="2026-01-01T00:00:00Z";
            }
            div.field {
                label for="f-before" { "Created before (RFC 3339)" }
                input #f-before name="created_before" value=(filters.created_before) placeholder="2026-12-31T00:00:00Z";
            }
            div.field {
                label for="f-root" { "Root execution (its whole tree)" }
                input #f-root name="root_id" value=(filters.root_id);
            }
            button type="submit" { "Filter" }
        }
    }
}

fn listing_section(filters: &Filters, answer: &ListResponse) -> Markup {
    let first_page = filters.cursor.is_empty();
    html! {
        section #listing aria-live="polite" data-refresh=[first_page.then_some(REFRESH_SECS)] {
            @if answer.partial {
                p.alert #partial role="alert" {
                    "Partial listing: shard"
                    @if answer.missing_shards.len() > 1 { "s" }
                    " "
                    @for (i, shard) in answer.missing_shards.iter().enumerate() {
                        @if i > 0 { ", " }
                        span.missing-shard { (shard) }
                    }
                    " did not answer, so their executions may be missing."
                }
            }
            @if answer.executions.is_empty() {
                p { "No executions." }
            } @else {
                table {
                    caption { "Executions, newest first" }
                    thead { tr { th scope="col" { "Id" } th scope="col" { "Playbook" } th scope="col" { "Status" } th scope="col" { "Shard" } th scope="col" { "Labels" } th scope="col" { "Created" } } }
                    tbody {
                        @for execution in &answer.executions {
                            tr data-execution=(execution.execution_id) {
                                td { a href={ "/ui/executions/" (execution.execution_id) } { (execution.execution_id) } }
                                td.playbook {
                                    (execution.playbook_name)
                                    @if let Some(version) = execution.playbook_version { " v" (version) }
                                }
                                td { (badge(execution.status.as_str())) }
                                td { (execution.shard) }
                                td.labels {
                                    @for (key, value) in &execution.labels {
                                        span.label { (key) "=" (value) }
                                    }
                                }
                                td { (execution.created_at) }
                            }
                        }
                    }
                }
            }
            nav.pages aria-label="Pages" {
                @if !first_page { a href=(filters.page(None)) { "First page" } }
                @if let Some(cursor) = &answer.next_cursor {
                    a rel="next" href=(filters.page(Some(cursor))) { "Next page" }
                }
            }
        }
    }
}
