//! `GET /ui/topology`: the epochs as a timeline (when each shard count took effect), each shard's
//! state and whether its server answers, and a "where does this id go" box (`?id=`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use maud::{html, Markup};
use noetl_contract::ExecutionId;
use serde::Deserialize;

use super::layout::{badge, page, UiError};
use super::session::Caller;
use crate::routes::playbooks::rfc3339;
use crate::routes::topology::{self, TopologyResponse};
use crate::state::AppState;

const PING_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Deserialize)]
pub struct IdQuery {
    #[serde(default)]
    id: String,
}

pub async fn show(
    Caller { state, session, .. }: Caller,
    query: Result<Query<IdQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Markup, UiError> {
    let Query(query) = query.unwrap_or_default();
    let view = topology::show(State(Arc::clone(&state))).await?.0;
    let ready = futures::future::join_all(
        view.shards
            .iter()
            .map(|shard| state.dispatcher.ping(shard.shard, PING_TIMEOUT)),
    )
    .await;
    let asked = query.id.trim();
    let answer = (!asked.is_empty()).then(|| route_answer(&state, asked));
    Ok(page(
        "Shards and topology",
        Some(&session),
        html! {
            h1 { "Shards and topology" }
            (epochs(&view))
            h2 { "Shards" }
            table #shards {
                caption { "Every shard's state now, and whether its server answers" }
                thead { tr { th scope="col" { "Shard" } th scope="col" { "State" } th scope="col" { "Server" } } }
                tbody {
                    @for (shard, ok) in view.shards.iter().zip(&ready) {
                        tr data-shard=(shard.shard) {
                            td { (shard.shard) }
                            td { (badge(&format!("{:?}", shard.state).to_lowercase())) }
                            td { @if *ok { "ready" } @else { strong { "not answering" } } }
                        }
                    }
                }
            }
            h2 { "Where does this id go?" }
            form.route method="get" action="/ui/topology" {
                label for="route-id" { "Execution id" }
                input #route-id name="id" value=(asked) inputmode="numeric";
                button type="submit" { "Route" }
            }
            @if let Some(answer) = answer { (answer) }
        },
    ))
}

fn epochs(view: &TopologyResponse) -> Markup {
    html! {
        h2 { "Epochs" }
        p { "Epoch " (view.epoch_in_force) " is in force. An id is routed with the epoch in force at its own timestamp, so a new epoch moves nothing." }
        ol #epochs {
            @for epoch in &view.epochs {
                li data-epoch=(epoch.epoch) {
                    strong { "Epoch " (epoch.epoch) } ": " (epoch.shard_count) " shards from "
                    time.activate { (rfc3339(epoch.activate_at_ms)) }
                    @if epoch.epoch == view.epoch_in_force { " (in force)" }
                }
            }
        }
    }
}

fn route_answer(state: &AppState, asked: &str) -> Markup {
    let routed = asked
        .parse::<ExecutionId>()
        .map_err(|e| e.to_string())
        .and_then(|id| {
            state
                .route(id)
                .map(|route| (id, route))
                .map_err(|p| p.detail().to_owned())
        });
    html! {
        @match routed {
            Ok((id, route)) => p #route-answer role="status" {
                "Execution " (id) " goes to shard " strong { (route.shard) } " (epoch " (route.epoch) ", "
                (route.shard_count) " shards); minted " (rfc3339(id.unix_ms())) " by node " (id.node().get())
                ", sequence " (id.sequence()) ". "
                a href={ "/ui/executions/" (id) } { "Open it" }
            },
            Err(error) => p.alert #route-answer role="alert" { (error) },
        }
    }
}
