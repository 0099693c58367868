//! Request extractors whose rejections are problem documents, never axum's plain-text ones.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use noetl_contract::ExecutionId;
use serde::de::DeserializeOwned;

use crate::problem::{Code, Problem};

/// A JSON body: 415 without a JSON content type, 413 over the limit, 400 for bad JSON or a
/// shape that does not match (naming the field, e.g. `playbook.steps[0].needs`).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(Problem::new(
                Code::UnsupportedMediaType,
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(Code::PayloadTooLarge, rejection.body_text())
                } else {
                    Problem::new(Code::InvalidRequest, rejection.body_text())
                }
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let at = if path == "." {
                    String::new()
                } else {
                    format!("{path}: ")
                };
                Problem::new(Code::InvalidRequest, format!("{at}{inner}"))
            }
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
