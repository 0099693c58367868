//! `GET /ui/topology`: the epochs as a timeline (when each shard count took effect), each shard's
//! state, whether its server answers and how many of the caller's executions run there, and a
//! "where does this id go" box (`?id=`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use maud::{html, Markup};
use noetl_contract::message::{ExecutionStatus, Labels, ListQuery};
use noetl_contract::{ExecutionId, ShardId};
use serde::Deserialize;

use super::layout::{badge, page, UiError};
use super::session::Caller;
use crate::routes::playbooks::rfc3339;
use crate::routes::topology::{self, TopologyResponse};
use crate::state::AppState;

const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Running executions counted per shard; more show as "100 or more".
const RUNNING_COUNTED: u32 = 100;

/// How many of `tenant`'s executions run on `shard` (up to [`RUNNING_COUNTED`] + 1); `None`
/// when the shard does not answer.
async fn running(state: &AppState, tenant: &str, shard: ShardId) -> Option<usize> {
    let query = ListQuery {
        below: None,
        from: None,
        limit: RUNNING_COUNTED + 1,
        status: Some(ExecutionStatus::Running),
        labels: Labels::default(),
        playbook: None,
        tenant: Some(tenant.to_owned()),
        root_id: None,
    };
    let page = state.dispatcher.list(shard, &query).await?;
    Some(page.executions.len())
}

#[derive(Debug, Default, Deserialize)]
pub struct IdQuery {
    #[serde(default)]
    id: String,
}

pub async fn show(
    Caller {
        state,
        session,
        principal,
    }: Caller,
    query: Result<Query<IdQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Markup, UiError> {
    let Query(query) = query.unwrap_or_default();
    let view = topology::show(State(Arc::clone(&state))).await?.0;
    let (ready, running) = futures::future::join(
        futures::future::join_all(
            view.shards
                .iter()
                .map(|shard| state.dispatcher.ping(shard.shard, PING_TIMEOUT)),
        ),
        futures::future::join_all(
            view.shards
                .iter()
                .map(|shard| running(&state, &principal.tenant, shard.shard)),
        ),
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
                caption { "Every shard's state now, whether its server answers, and how many of your executions run there" }
                thead { tr {
                    th scope="col" { "Shard" } th scope="col" { "State" } th scope="col" { "Server" }
                    th scope="col" { "Your running executions" }
                } }
                tbody {
                    @for ((shard, ok), running) in view.shards.iter().zip(&ready).zip(&running) {
                        tr data-shard=(shard.shard) {
                            td { (shard.shard) }
                            td { (badge(&format!("{:?}", shard.state).to_lowercase())) }
                            td { @if *ok { "ready" } @else { strong { "not answering" } } }
                            td.running {
                                @match running {
                                    Some(n) if *n > RUNNING_COUNTED as usize => { (RUNNING_COUNTED) " or more" }
                                    Some(n) => (n),
                                    None => "unknown",
                                }
                            }
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
