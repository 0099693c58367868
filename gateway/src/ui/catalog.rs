//! `GET /ui/catalog` (the tenant's playbooks), `GET /ui/catalog/{name}` (a version's source, the
//! other versions, and a form to run it with JSON input), `POST /ui/catalog/{name}/run`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{csrf, page, pretty, UiError};
use super::session::{random_hex, Caller, Session};
use crate::extract::PlaybookBody;
use crate::problem::{Code, Problem};
use crate::routes::executions::{self, PlaybookSpec, SubmitParams, SubmitRequest};
use crate::routes::listing::parse_labels;
use crate::routes::playbooks::{self, PlaybookVersion};

pub async fn list(caller: Caller) -> Result<Markup, UiError> {
    let Caller {
        state,
        principal,
        session,
    } = caller;
    let catalog = playbooks::list(State(state), Extension(principal)).await?.0;
    Ok(page(
        "Catalog",
        Some(&session),
        html! {
            h1 { "Catalog" }
            @if catalog.playbooks.is_empty() {
                p { "No playbooks yet: publish one with POST /api/v1/playbooks." }
            } @else {
                table #catalog {
                    caption { "Playbooks of this tenant, by name" }
                    thead { tr { th scope="col" { "Playbook" } th scope="col" { "Newest version" } th scope="col" { "Published" } } }
                    tbody {
                        @for item in &catalog.playbooks {
                            tr {
                                td { a href={ "/ui/catalog/" (item.name) } { (item.name) } }
                                td { (item.latest_version) }
                                td { (item.updated_at) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct VersionParam {
    version: Option<u32>,
}

/// What the run form was filled with, shown again when the run is refused.
#[derive(Debug, Default, Deserialize)]
pub struct RunForm {
    #[serde(default)]
    csrf: String,
    version: u32,
    #[serde(default)]
    input: String,
    #[serde(default)]
    labels: String,
    /// A key drawn when the form was rendered: a form sent twice runs once.
    #[serde(default)]
    key: String,
}

/// A version of a playbook of the caller's tenant (the newest when `None`), and the newest
/// version's number.
async fn version(
    caller: &Caller,
    name: &str,
    version: Option<u32>,
) -> Result<(PlaybookVersion, u32), Problem> {
    let tenant = &caller.principal.tenant;
    let get = |version| async move {
        caller
            .state
            .dispatcher
            .catalog_get(tenant, name, version)
            .await?
            .map(PlaybookVersion::from)
            .ok_or_else(|| crate::routes::children::playbook_not_found(name, version))
    };
    let latest = get(None).await?;
    match version {
        Some(v) if v != latest.version => Ok((get(Some(v)).await?, latest.version)),
        _ => {
            let number = latest.version;
            Ok((latest, number))
        }
    }
}

pub async fn show(
    caller: Caller,
    Path(name): Path<String>,
    Query(param): Query<VersionParam>,
) -> Result<Markup, UiError> {
    let (shown, latest) = version(&caller, &name, param.version).await?;
    let form = RunForm {
        version: shown.version,
        input: "{}".to_owned(),
        ..RunForm::default()
    };
    Ok(playbook_page(&caller.session, &shown, latest, &form, None))
}

fn playbook_page(
    session: &Session,
    shown: &PlaybookVersion,
    latest: u32,
    form: &RunForm,
    failure: Option<&str>,
) -> Markup {
    let name = &shown.name;
    page(
        &format!("Playbook {name}"),
        Some(session),
        html! {
            h1 { "Playbook " (name) }
            nav.versions aria-label="Versions" {
                "Versions: "
                @for v in (1..=latest).rev() {
                    @if v == shown.version { strong aria-current="page" { (v) } }
                    @else { a href={ "/ui/catalog/" (name) "?version=" (v) } { (v) } }
                    " "
                }
            }
            p { "Version " (shown.version) ", published " (shown.created_at) "." }
            h2 { "Run version " (shown.version) }
            @if let Some(failure) = failure { p.alert role="alert" { (failure) } }
            form.run method="post" action={ "/ui/catalog/" (name) "/run" } {
                (csrf(session))
                input type="hidden" name="version" value=(shown.version);
                input type="hidden" name="key" value=(random_hex());
                label for="run-input" { "Input (a JSON object)" }
                textarea #run-input name="input" rows="6" { (form.input) }
                label for="run-labels" { "Labels (key=value,…)" }
                input #run-labels name="labels" value=(form.labels);
                button type="submit" { "Run" }
            }
            h2 { "Source" }
            pre.json #source tabindex="0" { (pretty(&shown.playbook)) }
        },
    )
}

pub async fn run(
    caller: Caller,
    Path(name): Path<String>,
    Form(form): Form<RunForm>,
) -> Result<Response, UiError> {
    caller.session.check(&form.csrf)?;
    match submit(&caller, &name, &form).await {
        Ok(location) => Ok(Redirect::to(&location).into_response()),
        Err(problem) => {
            let (shown, latest) = version(&caller, &name, Some(form.version)).await?;
            let markup = playbook_page(
                &caller.session,
                &shown,
                latest,
                &form,
                Some(problem.detail()),
            );
            Ok((problem.code().status(), markup).into_response())
        }
    }
}

/// Submits the form through the API's handler; the console's path of the new execution.
async fn submit(caller: &Caller, name: &str, form: &RunForm) -> Result<String, Problem> {
    let input = match serde_json::from_str::<serde_json::Value>(&form.input) {
        Ok(serde_json::Value::Object(input)) => input,
        Ok(_) => {
            return Err(Problem::new(
                Code::InvalidRequest,
                "input: give a JSON object",
            ))
        }
        Err(e) => return Err(Problem::new(Code::InvalidJson, format!("input: {e}"))),
    };
    let request = SubmitRequest {
        playbook: PlaybookSpec {
            name: name.to_owned(),
            version: Some(form.version),
            input: None,
            steps: None,
            max_gotos: None,
        },
        input: Some(input),
        labels: parse_labels(&form.labels)?,
    };
    let mut headers = HeaderMap::new();
    if let Ok(key) = HeaderValue::from_str(&form.key) {
        headers.insert("idempotency-key", key);
    }
    let params = SubmitParams { dry_run: false };
    let response = executions::submit(
        State(Arc::clone(&caller.state)),
        Extension(caller.principal.clone()),
        Ok(Query(params)),
        headers,
        PlaybookBody(request),
    )
    .await?;
    response
        .headers()
        .get(header::LOCATION)
        .and_then(|location| location.to_str().ok())
        .and_then(|location| location.rsplit('/').next())
        .map(|id| format!("/ui/executions/{id}"))
        .ok_or_else(|| Problem::new(Code::Internal, "internal error"))
}
