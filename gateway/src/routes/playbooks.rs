//! The playbook catalog: `POST /api/v1/playbooks` publishes the next version of a playbook,
//! `GET /api/v1/playbooks` lists names with their newest version, and
//! `GET /api/v1/playbooks/{name}[/versions/{version}]` returns one version. It is stored
//! cluster-wide in a NATS key-value bucket (`noetl_bus::catalog`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use noetl_contract::message::CatalogEntry;
use noetl_contract::playbook::Playbook;
use serde::Serialize;

use crate::extract::ApiBody;
use crate::problem::{Code, Problem};
use crate::routes::executions::playbook_not_found;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct Published {
    pub name: String,
    pub version: u32,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct PlaybookVersion {
    pub name: String,
    pub version: u32,
    pub created_at: String,
    pub playbook: Playbook,
}

#[derive(Debug, Serialize)]
pub struct CatalogItem {
    pub name: String,
    pub latest_version: u32,
    pub updated_at: String,
}

#[derive(Debug, Serialize)]
pub struct CatalogList {
    pub playbooks: Vec<CatalogItem>,
}

fn rfc3339(unix_ms: i64) -> String {
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

pub async fn publish(
    State(state): State<Arc<AppState>>,
    ApiBody(playbook): ApiBody<Playbook>,
) -> Result<(StatusCode, Json<Published>), Problem> {
    playbook
        .validate()
        .map_err(|e| Problem::new(Code::InvalidPlaybook, e.to_string()))?;
    let entry = state.dispatcher.catalog_publish(&playbook).await?;
    tracing::info!(name = %entry.name, version = entry.version, "playbook published");
    Ok((
        StatusCode::CREATED,
        Json(Published {
            name: entry.name,
            version: entry.version,
            created_at: rfc3339(entry.created_at_ms),
        }),
    ))
}

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<CatalogList>, Problem> {
    let playbooks = state
        .dispatcher
        .catalog_list()
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

pub async fn latest(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<PlaybookVersion>, Problem> {
    let entry = state
        .dispatcher
        .catalog_get(&name, None)
        .await?
        .ok_or_else(|| playbook_not_found(&name, None))?;
    Ok(Json(entry.into()))
}

pub async fn version(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, u32)>, axum::extract::rejection::PathRejection>,
) -> Result<Json<PlaybookVersion>, Problem> {
    let Path((name, version)) = path.map_err(|_| {
        Problem::new(
            Code::InvalidRequest,
            "the version in /playbooks/{name}/versions/{version} must be a positive whole number",
        )
    })?;
    let entry = state
        .dispatcher
        .catalog_get(&name, Some(version))
        .await?
        .ok_or_else(|| playbook_not_found(&name, Some(version)))?;
    Ok(Json(entry.into()))
}
