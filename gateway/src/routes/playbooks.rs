//! The playbook catalog: `POST /api/v1/playbooks` publishes the next version of a playbook,
//! `GET /api/v1/playbooks` lists names with their newest version, and
//! `GET /api/v1/playbooks/{name}[/versions/{version}]` returns one version, and
//! `DELETE /api/v1/playbooks/{name}/versions/{version}` deletes one. It is stored in a
//! NATS key-value bucket (`noetl_bus::catalog`), one namespace per tenant: a caller sees,
//! reads and publishes only its own tenant's playbooks; another tenant's are answered like
//! missing ones (404), and the same name in two tenants is two playbooks.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use noetl_contract::message::CatalogEntry;
use noetl_contract::playbook::Playbook;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::extract::PlaybookBody;
use crate::problem::{Code, Problem};
use crate::routes::children::playbook_not_found;
use crate::state::AppState;

/// The body of a publish: our playbook, or NoETL's.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum PublishBody {
    Ours(Playbook),
    Noetl(crate::routes::executions::NoetlPlaybook),
}

/// The version a publish stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    pub name: String,
    /// Numbered from 1 per name.
    #[schema(minimum = 1)]
    pub version: u32,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// One version of a playbook in the catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlaybookVersion {
    pub name: String,
    #[schema(minimum = 1)]
    pub version: u32,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    pub playbook: Playbook,
}

/// A playbook name in the catalog and its newest version.
#[derive(Debug, Serialize, ToSchema)]
pub struct CatalogItem {
    pub name: String,
    #[schema(minimum = 1)]
    pub latest_version: u32,
    /// RFC 3339: when the newest version was published.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// Every playbook name in the catalog, by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct CatalogList {
    pub playbooks: Vec<CatalogItem>,
}

/// Unix milliseconds as RFC 3339.
pub fn rfc3339(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl From<CatalogEntry> for PlaybookVersion {
    fn from(entry: CatalogEntry) -> Self {
        Self {
            name: entry.name,
            version: entry.version,
            created_at: rfc3339(entry.created_at_ms),
            playbook: entry.playbook,
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/playbooks",
    tag = "playbooks",
    operation_id = "publish_playbook",
    summary = "Publish a playbook",
    description = "Validates the playbook and stores it as the next version of its name in the \
        caller's tenant's catalog (versions are numbered from 1; another tenant's playbook of the \
        same name is another playbook). Executions submitted by reference run a stored version. \
        Refused (409 `catalog_quota_exceeded`) when the tenant's catalog would hold more than \
        `catalog_max_versions` versions or `catalog_max_bytes` bytes.",
    request_body(
        description = "The playbook, as JSON (`application/json`, or any `application/*+json`) \
            or YAML (`application/yaml`, `application/x-yaml`, `text/yaml`); or a NoETL playbook \
            (`apiVersion: noetl.io/v2`), translated into ours and stored as such.",
        content((PublishBody = "application/json"), (PublishBody = "application/yaml")),
    ),
    responses((status = 201, description = "Stored as a new version.", body = Published)),
)]
pub async fn publish(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    PlaybookBody(playbook): PlaybookBody<Playbook>,
) -> Result<(StatusCode, Json<Published>), Problem> {
    playbook
        .validate()
        .map_err(|e| Problem::new(Code::InvalidPlaybook, e.to_string()))?;
    let entry = state
        .dispatcher
        .catalog_publish(&principal.tenant, &playbook)
        .await?;
    tracing::info!(tenant = %principal.tenant, name = %entry.name, version = entry.version, "playbook published");
    Ok((
        StatusCode::CREATED,
        Json(Published {
            name: entry.name,
            version: entry.version,
            created_at: rfc3339(entry.created_at_ms),
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/playbooks",
    tag = "playbooks",
    operation_id = "list_playbooks",
    summary = "List the catalog",
    responses((status = 200, description = "Every name of the caller's tenant with its newest version.", body = CatalogList)),
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<CatalogList>, Problem> {
    let playbooks = state
        .dispatcher
        .catalog_list(&principal.tenant)
        .await?
        .into_iter()
        .map(|summary| CatalogItem {
            name: summary.name,
            latest_version: summary.latest_version,
            updated_at: rfc3339(summary.updated_at_ms),
        })
        .collect();
    Ok(Json(CatalogList { playbooks }))
}

#[utoipa::path(
    get,
    path = "/api/v1/playbooks/{name}",
    tag = "playbooks",
    operation_id = "get_playbook",
    summary = "The newest version of a playbook",
    params(("name" = String, Path, description = "The playbook's name.", pattern = "^[A-Za-z0-9_.-]{1,128}$")),
    responses((status = 200, description = "The newest version.", body = PlaybookVersion)),
)]
pub async fn latest(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<PlaybookVersion>, Problem> {
    let Path(name) = path.map_err(|e| Problem::new(Code::InvalidRequest, e.body_text()))?;
    let entry = state
        .dispatcher
        .catalog_get(&principal.tenant, &name, None)
        .await?
        .ok_or_else(|| playbook_not_found(&name, None))?;
    Ok(Json(entry.into()))
}

#[utoipa::path(
    get,
    path = "/api/v1/playbooks/{name}/versions/{version}",
    tag = "playbooks",
    operation_id = "get_playbook_version",
    summary = "One version of a playbook",
    params(
        ("name" = String, Path, description = "The playbook's name.", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        ("version" = u32, Path, description = "The version number (from 1)."),
    ),
    responses((status = 200, description = "That version.", body = PlaybookVersion)),
)]
pub async fn version(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    path: Result<VersionPath, axum::extract::rejection::PathRejection>,
) -> Result<Json<PlaybookVersion>, Problem> {
    let (name, version) = version_path(path)?;
    let entry = state
        .dispatcher
        .catalog_get(&principal.tenant, &name, Some(version))
        .await?
        .ok_or_else(|| playbook_not_found(&name, Some(version)))?;
    Ok(Json(entry.into()))
}

type VersionPath = Path<(String, u32)>;

/// The name and version of `/playbooks/{name}/versions/{version}`.
fn version_path(
    path: Result<VersionPath, axum::extract::rejection::PathRejection>,
) -> Result<(String, u32), Problem> {
    let Path(pair) = path.map_err(|e| {
        Problem::new(
            Code::InvalidRequest,
            format!(
                "/playbooks/{{name}}/versions/{{version}} takes a UTF-8 name and a whole-number version: {}",
                e.body_text()
            ),
        )
    })?;
    Ok(pair)
}

#[utoipa::path(
    delete,
    path = "/api/v1/playbooks/{name}/versions/{version}",
    tag = "playbooks",
    operation_id = "delete_playbook_version",
    summary = "Delete a version of a playbook",
    description = "Deletes one version from the caller's tenant's catalog and gives back its \
        quota; afterwards it is answered with 404. When it was the newest, the name's newest \
        version becomes the one before it (a name whose versions are all deleted leaves the \
        listing). A version number is never handed out again. Executions that ran it keep \
        their copy of the playbook.",
    params(
        ("name" = String, Path, description = "The playbook's name.", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        ("version" = u32, Path, description = "The version number (from 1)."),
    ),
    responses((status = 204, description = "Deleted.")),
)]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    path: Result<VersionPath, axum::extract::rejection::PathRejection>,
) -> Result<StatusCode, Problem> {
    let (name, version) = version_path(path)?;
    if !state
        .dispatcher
        .catalog_delete(&principal.tenant, &name, version)
        .await?
    {
        return Err(playbook_not_found(&name, Some(version)));
    }
    tracing::info!(tenant = %principal.tenant, %name, version, "playbook version deleted");
    Ok(StatusCode::NO_CONTENT)
}
