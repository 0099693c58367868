//! Request extractors whose rejections are problem documents, never axum's plain-text ones.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use noetl_contract::playbook::Playbook;
use noetl_contract::{noetl, ExecutionId, Route};
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use crate::auth::Principal;
use crate::problem::{Code, Problem};
use crate::state::AppState;

/// A JSON or YAML body: 415 for another content type, 413 over the limit, 400 for a body that
/// does not parse or whose shape does not match (naming the field, e.g.
/// `playbook.steps[0].needs`).
#[derive(Debug)]
pub struct ApiBody<T>(pub T);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

fn format_of(content_type: &str) -> Option<Format> {
    let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Some(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" => Some(Format::Yaml),
        other if other.starts_with("application/") && other.ends_with("+json") => {
            Some(Format::Json)
        }
        _ => None,
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let (format, bytes) = read(request, state).await?;
        parse(format, &bytes).map(ApiBody)
    }
}

/// The body's format (415 unless JSON or YAML) and bytes (413 over the limit).
async fn read<S: Send + Sync>(request: Request, state: &S) -> Result<(Format, Bytes), Problem> {
    let format = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(format_of)
        .ok_or_else(|| {
            Problem::new(
                Code::UnsupportedMediaType,
                "send the body as `Content-Type: application/json` or `application/yaml`",
            )
        })?;
    let bytes = Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(Code::PayloadTooLarge, rejection.body_text())
            } else {
                Problem::new(Code::InvalidRequest, rejection.body_text())
            }
        })?;
    Ok((format, bytes))
}

fn parse<T: DeserializeOwned>(format: Format, bytes: &[u8]) -> Result<T, Problem> {
    match format {
        Format::Json => parse_json(bytes),
        Format::Yaml => parse_yaml(bytes),
    }
}

/// A body that carries a playbook: read as [`ApiBody`] does, except that a NoETL playbook
/// (wiki/playbooks.md, "NoETL playbooks"), as the whole body or in the body's
/// [`CarriesPlaybook::FIELD`], is translated into ours first. Its errors are 400
/// `invalid_playbook` naming the place in the NoETL document.
#[derive(Debug)]
pub struct PlaybookBody<T>(pub T);

/// A body [`PlaybookBody`] reads.
pub trait CarriesPlaybook: DeserializeOwned {
    /// The field that may hold a playbook, when the body is more than one.
    const FIELD: Option<&'static str>;
    /// The body that a whole-body NoETL playbook stands for.
    fn from_playbook(playbook: Playbook) -> Self;
}

impl CarriesPlaybook for Playbook {
    const FIELD: Option<&'static str> = None;

    fn from_playbook(playbook: Playbook) -> Self {
        playbook
    }
}

impl<S: Send + Sync, T: CarriesPlaybook> FromRequest<S> for PlaybookBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let (format, bytes) = read(request, state).await?;
        // Ours has no `apiVersion` (an unknown field in it is refused anyway), so only a body
        // that names one is read twice.
        if !bytes.windows(10).any(|window| window == b"apiVersion") {
            return parse(format, &bytes).map(PlaybookBody);
        }
        let mut body: serde_json::Value = parse(format, &bytes)?;
        if noetl::is_noetl(&body) {
            return Ok(PlaybookBody(T::from_playbook(translate(&body, "")?)));
        }
        let Some(field) = T::FIELD else {
            return parse(format, &bytes).map(PlaybookBody);
        };
        match body.get_mut(field) {
            Some(inner) if noetl::is_noetl(inner) => {
                let playbook = translate(inner, &format!("{field}."))?;
                *inner = serde_json::to_value(playbook)
                    .map_err(|_| Problem::new(Code::Internal, "could not encode the playbook"))?;
                serde_path_to_error::deserialize(body)
                    .map(PlaybookBody)
                    .map_err(|e| shape_error(e.path().to_string(), e.into_inner()))
            }
            _ => parse(format, &bytes).map(PlaybookBody),
        }
    }
}

/// A NoETL playbook as ours; an error names its place, after `prefix`.
fn translate(document: &serde_json::Value, prefix: &str) -> Result<Playbook, Problem> {
    noetl::translate(document)
        .map_err(|e| Problem::new(Code::InvalidPlaybook, format!("{prefix}{e}")))
}

/// A body whose shape does not match, naming the field.
fn shape_error(path: String, error: impl std::fmt::Display) -> Problem {
    let at = if path == "." {
        String::new()
    } else {
        format!("{path}: ")
    };
    Problem::new(Code::InvalidRequest, format!("{at}{error}"))
}

fn parse_yaml<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    crate::yaml::check_expansion(bytes).map_err(|budget| {
        Problem::new(
            Code::YamlExpansionLimit,
            format!(
                "the YAML body's aliases expand it past {budget} nodes (twice its length in \
                 bytes): write the repeated parts out instead of `&anchor`/`*alias`, or send JSON"
            ),
        )
    })?;
    serde_path_to_error::deserialize(yaml_serde::Deserializer::from_slice(bytes))
        .map_err(|e| shape_error(e.path().to_string(), e.into_inner()))
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => shape_error(path, inner),
            _ => Problem::new(Code::InvalidJson, inner.to_string()),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| Problem::new(Code::InvalidJson, e.to_string()))?;
    Ok(value)
}

/// The `{id}` path parameter as an execution id: 400 unless plain decimal digits.
#[derive(Debug, Clone, Copy)]
pub struct IdParam(pub ExecutionId);

impl<S: Send + Sync> FromRequestParts<S> for IdParam {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| Problem::new(Code::InvalidExecutionId, e.body_text()))?;
        raw.parse()
            .map(IdParam)
            .map_err(|e: noetl_contract::id::Error| {
                Problem::new(Code::InvalidExecutionId, e.to_string())
            })
    }
}

/// What a request about one execution (`/executions/{id}…`) needs: the state, the caller's
/// tenant and the execution's id (400 unless valid). Routing the id is left to the handler
/// ([`ExecutionRequest::route`]), once it has checked its other parameters.
#[derive(Debug)]
pub struct ExecutionRequest {
    pub state: Arc<AppState>,
    pub tenant: String,
    pub id: ExecutionId,
}

impl ExecutionRequest {
    /// The shard the execution lives on (410 when it was retired with its data discarded).
    pub fn route(&self) -> Result<Route, Problem> {
        self.state.route(self.id)
    }
}

impl FromRequestParts<Arc<AppState>> for ExecutionRequest {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        // The authentication middleware puts the caller there before any handler runs.
        let tenant = parts
            .extensions
            .get::<Principal>()
            .map(|principal| principal.tenant.clone())
            .ok_or_else(|| Problem::new(Code::Internal, "internal error"))?;
        let IdParam(id) = IdParam::from_request_parts(parts, state).await?;
        Ok(Self {
            state: Arc::clone(state),
            tenant,
            id,
        })
    }
}

/// The `{id}` path parameter as the OpenAPI document describes it ([`IdParam`] reads it).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct IdPath {
    /// An execution id: decimal digits, at most 9223372036854775807.
    id: ExecutionId,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        count: u32,
    }

    #[test]
    fn yaml_bodies_parse_and_name_the_field_on_error() {
        let body: Body = parse_yaml(b"items:\n  - count: 3\n").expect("valid YAML");
        assert_eq!(body.items.len(), 1);
        let shape = parse_yaml::<Body>(b"items:\n  - count: three\n").expect_err("type");
        let text = serde_json::to_string(&shape).expect("serialize");
        assert!(text.contains("items[0].count"), "{text}");
        assert_eq!(
            format_of("application/yaml; charset=utf-8"),
            Some(Format::Yaml)
        );
        assert_eq!(format_of("application/problem+json"), Some(Format::Json));
        assert_eq!(format_of("text/plain"), None);
    }

    #[test]
    fn syntax_errors_and_shape_errors_get_different_codes() {
        let syntax = parse_json::<Body>(b"{\"items\": [").expect_err("truncated");
        assert_eq!(syntax.code(), Code::InvalidJson);
        let shape = parse_json::<Body>(br#"{"items": [{"count": "three"}]}"#).expect_err("type");
        assert_eq!(shape.code(), Code::InvalidRequest);
        let text = serde_json::to_string(&shape).expect("serialize");
        assert!(text.contains("items[0].count"), "{text}");
        let trailing = parse_json::<Body>(br#"{"items": []} extra"#).expect_err("trailing");
        assert_eq!(trailing.code(), Code::InvalidJson);
    }
}
