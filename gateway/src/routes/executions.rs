//! `POST /api/v1/executions` (with `?dry_run=true` and `Idempotency-Key`),
//! `GET /api/v1/executions` (the listing across shards), `GET /api/v1/executions/{id}`,
//! `POST /api/v1/executions/{id}/cancel`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use noetl_bus::idempotency::{Claim, Record};
use noetl_contract::message::{ExecutionStatus, ExecutionView, Labels, SubmitCommand};
use noetl_contract::playbook::{find_nul, validate_labels, PlannedStep, Playbook, Step};
use noetl_contract::subject::ShardRequest;
use noetl_contract::{ExecutionId, Route, ShardId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::children::{self, playbook_not_found};
use crate::auth::Principal;
use crate::extract::{CarriesPlaybook, ExecutionRequest, IdPath, PlaybookBody};
use crate::problem::{Code, Problem};
use crate::state::AppState;

/// Body of `POST /api/v1/executions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    #[schema(value_type = PlaybookSource)]
    pub playbook: PlaybookSpec,
    /// The execution's input: overrides the playbook's default input key by key.
    #[serde(default)]
    pub input: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    #[schema(value_type = noetl_contract::openapi::LabelsSchema)]
    pub labels: Labels,
}

impl CarriesPlaybook for SubmitRequest {
    const FIELD: Option<&'static str> = Some("playbook");

    /// A NoETL playbook sent as the whole body: run with its `workload` as the input.
    fn from_playbook(playbook: Playbook) -> Self {
        Self {
            playbook: PlaybookSpec {
                name: playbook.name,
                version: None,
                input: playbook.input,
                steps: Some(playbook.steps),
                max_gotos: playbook.max_gotos,
            },
            input: None,
            labels: Labels::default(),
        }
    }
}

/// An inline playbook (with `steps`), or a reference to the catalog: `name` and an optional
/// `version` (the newest when absent), nothing else. One struct rather than an untagged enum,
/// so a malformed inline playbook's error still names the field (`playbook.steps[0].needs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookSpec {
    pub name: String,
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub input: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub steps: Option<Vec<Step>>,
    #[serde(default)]
    pub max_gotos: Option<u32>,
}

/// The 200 answers of a submit: a replay of an earlier request with the same `Idempotency-Key`,
/// or a dry run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum SubmitOk {
    Replayed(Submitted),
    DryRun(DryRun),
}

// The handler reads both through one struct (`PlaybookSpec`) so errors can name the field;
// the document tells them apart.
/// The `playbook` of a submit: a playbook inline (with its steps), or a reference to one in the
/// catalog (a name and an optional version, no steps).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum PlaybookSource {
    Inline(Playbook),
    Reference(CatalogReference),
    Noetl(NoetlPlaybook),
}

/// A playbook in NoETL's format, translated into ours on arrival (wiki/playbooks.md, "NoETL
/// playbooks"): only the subset that maps onto our model; any other construct is a 400
/// `invalid_playbook` naming its path (`workflow[2].loop`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct NoetlPlaybook {
    /// `noetl.io/v2`.
    #[schema(pattern = "^noetl\\.io/v2$")]
    api_version: String,
    /// `Playbook`.
    #[schema(pattern = "^Playbook$")]
    kind: String,
    /// `name` (the playbook's name), optional `path` and `description`.
    metadata: serde_json::Map<String, serde_json::Value>,
    /// The playbook's default input, `workload.<key>` in templates.
    workload: Option<serde_json::Map<String, serde_json::Value>>,
    /// Steps `{step, desc, tool: {kind, …}, next}`; `start` begins, every other step is
    /// reached by an arc.
    workflow: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The body of a submit: a request, or a NoETL playbook alone (run with its `workload`).
#[derive(Debug, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum SubmitBody {
    Request(SubmitRequest),
    Noetl(NoetlPlaybook),
}

/// A playbook in the catalog, by the name it was published under.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CatalogReference {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    name: String,
    /// The version to run; the newest when absent.
    #[schema(minimum = 1)]
    version: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubmitParams {
    /// Validate and show what would run, persisting nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Where to find an execution and what can be done with it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub this: String,
    pub events: String,
    pub stream: String,
    pub cancel: String,
    pub route: String,
}

impl Links {
    fn for_execution(id: ExecutionId) -> Self {
        let this = format!("/api/v1/executions/{id}");
        Self {
            events: format!("{this}/events"),
            stream: format!("{this}/stream"),
            cancel: format!("{this}/cancel"),
            route: format!("/api/v1/route/{id}"),
            this,
        }
    }
}

/// A committed execution.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    pub execution_id: ExecutionId,
    pub shard: ShardId,
    pub status: ExecutionStatus,
    /// RFC 3339 commit time.
    #[schema(format = DateTime)]
    pub created_at: String,
    pub links: Links,
}

/// The answer to a dry run: what the execution would get, and its steps in an order they
/// can run in.
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRun {
    pub dry_run: bool,
    pub execution_id: ExecutionId,
    pub shard: ShardId,
    pub epoch: u64,
    pub playbook_name: String,
    /// The catalog version, when the playbook was given by reference.
    #[schema(required = true)]
    pub playbook_version: Option<u32>,
    pub plan: Vec<PlannedStep>,
}

/// Header a replayed idempotent submit carries.
pub const IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

#[utoipa::path(
    post,
    path = "/api/v1/executions",
    tag = "executions",
    operation_id = "submit_execution",
    summary = "Submit an execution",
    description = "Runs a playbook: given inline (with `steps`) or by reference to the catalog \
        (`name` and an optional `version`, no `steps`). The answer comes once the owning shard has \
        committed the execution. With `?dry_run=true` the playbook is resolved and validated and \
        the answer shows the id and shard the execution would get and its steps in an order they \
        can run in; nothing is persisted. With an `Idempotency-Key`, a repeat of the same request \
        (the same body, in JSON or YAML) answers 200 with the execution the first one created, and \
        the same key with another body is refused (422).",
    params(
        SubmitParams,
        (
            "Idempotency-Key" = Option<String>,
            Header,
            description = "Makes retries safe: the first request with the key creates the \
                execution, later ones with the same body get it back (200, `Idempotency-Replayed: \
                true`). 1 to 255 visible ASCII characters. A dry run does not record it.",
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = "^[!-~]+$"
        ),
    ),
    request_body(
        description = "The playbook (inline or a catalog reference), the input and labels. \
            Sent as JSON (`application/json`, or any `application/*+json`) or as YAML \
            (`application/yaml`, `application/x-yaml`, `text/yaml`), with the same shape. A NoETL \
            playbook (`apiVersion: noetl.io/v2`, `kind: Playbook`) may be the `playbook`, or the \
            whole body (then it runs with its `workload` as the input).",
        content(
            (SubmitBody = "application/json"),
            (SubmitBody = "application/yaml"),
        ),
    ),
    responses(
        (
            status = 201,
            description = "The execution is committed in its shard.",
            body = Submitted,
            headers(("Location" = String, description = "The execution's URL path.")),
        ),
        (
            status = 200,
            description = "A dry run (`DryRun`: nothing was persisted), or the replay of an \
                earlier request with the same `Idempotency-Key` and body (`Submitted`, with \
                `Idempotency-Replayed: true`).",
            body = SubmitOk,
            headers(
                ("Location" = String, description = "Replays only: the execution's URL path."),
                ("Idempotency-Replayed" = String, description = "`true` on a replay; absent on a dry run."),
            ),
        ),
    ),
)]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    params: Result<Query<SubmitParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    PlaybookBody(request): PlaybookBody<SubmitRequest>,
) -> Result<Response, Problem> {
    let Query(params) = params.map_err(|e| Problem::new(Code::InvalidRequest, e.body_text()))?;
    let idempotency_key = idempotency_key(&headers)?;
    let (mut playbook, playbook_version) =
        resolve(&state, &principal.tenant, request.playbook).await?;
    playbook
        .validate()
        .map_err(|e| Problem::new(Code::InvalidPlaybook, format!("playbook.{e}")))?;
    children::resolve(&state, &principal.tenant, &mut playbook, 0).await?;
    validate_labels(&request.labels)
        .map_err(|e| Problem::new(Code::InvalidRequest, e.to_string()))?;
    let input = serde_json::Value::Object(request.input.unwrap_or_default());
    let playbook_json = serde_json::to_value(&playbook)
        .map_err(|_| Problem::new(Code::Internal, "could not encode the playbook"))?;
    let labels_json = serde_json::to_value(&request.labels)
        .map_err(|_| Problem::new(Code::Internal, "could not encode the labels"))?;
    if let Some(at) = find_nul(&input, "input")
        .or_else(|| find_nul(&playbook_json, "playbook"))
        .or_else(|| find_nul(&labels_json, "labels"))
    {
        return Err(Problem::new(
            Code::InvalidRequest,
            format!("{at}: text may not contain the NUL character (U+0000)"),
        ));
    }
    let resolved = Resolved {
        playbook,
        playbook_version,
        input,
        labels: request.labels,
        tenant: principal.tenant,
    };
    if params.dry_run {
        let (execution_id, route) = state.mint()?;
        return Ok(Json(DryRun {
            dry_run: true,
            execution_id,
            shard: route.shard,
            epoch: route.epoch,
            playbook_name: resolved.playbook.name.clone(),
            playbook_version,
            plan: resolved.playbook.plan(),
        })
        .into_response());
    }
    match idempotency_key {
        Some(key) => submit_idempotent(&state, resolved, &key).await,
        None => submit_fresh(&state, resolved).await,
    }
}

/// A submit with its playbook resolved and validated, before it has an id.
#[derive(Debug, Serialize)]
struct Resolved {
    playbook: Playbook,
    playbook_version: Option<u32>,
    input: serde_json::Value,
    labels: Labels,
    tenant: String,
}

impl Resolved {
    fn command(&self, execution_id: ExecutionId) -> SubmitCommand {
        SubmitCommand {
            execution_id,
            playbook: self.playbook.clone(),
            playbook_version: self.playbook_version,
            input: self.input.clone(),
            labels: self.labels.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

/// The playbook to run and its catalog version.
async fn resolve(
    state: &AppState,
    tenant: &str,
    spec: PlaybookSpec,
) -> Result<(Playbook, Option<u32>), Problem> {
    match spec.steps {
        Some(steps) => {
            if spec.version.is_some() {
                return Err(Problem::new(
                    Code::InvalidRequest,
                    "playbook.version: only a catalog reference (a name and a version, no steps) has a version",
                ));
            }
            Ok((
                Playbook {
                    name: spec.name,
                    input: spec.input,
                    steps,
                    max_gotos: spec.max_gotos,
                },
                None,
            ))
        }
        None => {
            if spec.input.is_some() {
                return Err(Problem::new(
                    Code::InvalidRequest,
                    "playbook.input: a catalog reference takes no input; give the execution's input at the top level",
                ));
            }
            if spec.max_gotos.is_some() {
                return Err(Problem::new(
                    Code::InvalidRequest,
                    "playbook.max_gotos: a catalog reference takes no max_gotos; the catalog's playbook sets it",
                ));
            }
            let entry = state
                .dispatcher
                .catalog_get(tenant, &spec.name, spec.version)
                .await?
                .ok_or_else(|| playbook_not_found(&spec.name, spec.version))?;
            Ok((entry.playbook, Some(entry.version)))
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&key.len()))
        .filter(|key| key.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::new(
                Code::InvalidRequest,
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Submits under an idempotency key: the first request with the key records the id it minted;
/// any other with the same key and body gets that execution (submitting it again by id is
/// harmless: the shard stores an id once), and one with another body is refused.
async fn submit_idempotent(
    state: &AppState,
    request: Resolved,
    key: &str,
) -> Result<Response, Problem> {
    // The resolved request, so the same body in JSON or YAML, or by catalog reference to the
    // same version, is the same request.
    let digest_input = serde_json::to_vec(&request)
        .map_err(|_| Problem::new(Code::Internal, "could not digest the request"))?;
    let (execution_id, route) = state.mint()?;
    let record = Record {
        execution_id,
        request_digest: hex_digest(&digest_input),
    };
    match state
        .dispatcher
        .claim_idempotency_key(&hex_digest(format!("{}\n{key}", request.tenant).as_bytes()), &record)
        .await?
    {
        Claim::First => {
            // A concurrent replay may have stored this id first: then `created` is false, and
            // the execution is still this request's.
            let receipt = state
                .dispatcher
                .submit(route, &request.command(execution_id))
                .await?;
            Ok(created(execution_id, receipt, StatusCode::CREATED, false))
        }
        Claim::Earlier(earlier) if earlier.request_digest != record.request_digest => {
            Err(Problem::new(
                Code::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request body; use a new key for a new request",
            )
            .with_execution_id(earlier.execution_id))
        }
        Claim::Earlier(earlier) => {
            let route = state.route(earlier.execution_id)?;
            let receipt = state
                .dispatcher
                .submit(route, &request.command(earlier.execution_id))
                .await?;
            Ok(created(earlier.execution_id, receipt, StatusCode::OK, true))
        }
    }
}

fn created(
    execution_id: ExecutionId,
    receipt: noetl_contract::message::SubmitReceipt,
    status: StatusCode,
    replayed: bool,
) -> Response {
    let links = Links::for_execution(execution_id);
    let location = HeaderValue::from_str(&links.this).ok();
    let body = Submitted {
        execution_id,
        shard: receipt.shard,
        status: receipt.status,
        created_at: receipt.created_at,
        links,
    };
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Some(location) = location {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// The gateway mints a fresh id for every submit, so a shard that already holds the id means
/// two minters shared a node id (or a restart rewound the clock): mint another, never hand the
/// caller someone else's execution.
async fn submit_fresh(state: &AppState, request: Resolved) -> Result<Response, Problem> {
    for _ in 0..MINT_ATTEMPTS {
        let (execution_id, route): (ExecutionId, Route) = state.mint()?;
        let receipt = state
            .dispatcher
            .submit(route, &request.command(execution_id))
            .await?;
        if !receipt.created {
            metrics::counter!("noetl_gateway_id_collisions_total").increment(1);
            tracing::error!(%execution_id, node = %execution_id.node(), "minted an id that already exists; is another gateway using this node id?");
            continue;
        }
        return Ok(created(execution_id, receipt, StatusCode::CREATED, false));
    }
    Err(Problem::new(
        Code::IdCollision,
        "every id this gateway minted already existed; its node id is probably shared with another gateway",
    ))
}

/// Fresh ids tried before giving up on a submit whose ids keep colliding.
const MINT_ATTEMPTS: usize = 3;

/// An execution with the state of every step, and its links.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionResponse {
    #[serde(flatten)]
    pub execution: ExecutionView,
    pub links: Links,
}

impl ExecutionResponse {
    /// Asks the execution's shard to read (`Get`) or cancel (`Cancel`) it, and links the answer.
    async fn ask(request: ExecutionRequest, kind: ShardRequest) -> Result<Json<Self>, Problem> {
        let route = request.route()?;
        let execution = request
            .state
            .dispatcher
            .execution(kind, route, request.id, request.tenant)
            .await?;
        let links = Links::for_execution(execution.execution_id);
        Ok(Json(Self { execution, links }))
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/executions/{id}",
    tag = "executions",
    operation_id = "get_execution",
    summary = "Get an execution",
    description = "The execution as its shard has it now, with the state of every step.",
    params(IdPath),
    responses((status = 200, description = "The execution.", body = ExecutionResponse)),
)]
pub async fn get(request: ExecutionRequest) -> Result<Json<ExecutionResponse>, Problem> {
    ExecutionResponse::ask(request, ShardRequest::Get).await
}

/// `POST /api/v1/executions/{id}/cancel`: idempotent; answers with the execution as it is now.
#[utoipa::path(
    post,
    path = "/api/v1/executions/{id}/cancel",
    tag = "executions",
    operation_id = "cancel_execution",
    summary = "Cancel an execution",
    description = "Cancels the execution's unfinished steps. Idempotent: cancelling a finished \
        execution changes nothing. Answers with the execution as it is now.",
    params(IdPath),
    responses((status = 200, description = "The execution after the cancel.", body = ExecutionResponse)),
)]
pub async fn cancel(request: ExecutionRequest) -> Result<Json<ExecutionResponse>, Problem> {
    ExecutionResponse::ask(request, ShardRequest::Cancel).await
}

/// `DELETE /api/v1/executions/{id}`: a finished execution, from every table of its shard.
#[utoipa::path(
    delete,
    path = "/api/v1/executions/{id}",
    tag = "executions",
    operation_id = "delete_execution",
    summary = "Delete an execution",
    description = "Deletes a finished execution (succeeded, failed or cancelled) with its steps, \
        events and leftovers from its shard; afterwards the id is answered with 404 like one \
        that never existed, and listings no longer show it. An execution still pending or \
        running is refused with 409 `execution_not_terminal`: cancel it first.",
    params(IdPath),
    responses((status = 204, description = "Deleted.")),
)]
pub async fn delete(request: ExecutionRequest) -> Result<StatusCode, Problem> {
    let route = request.route()?;
    request
        .state
        .dispatcher
        .delete(route, request.id, request.tenant)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
