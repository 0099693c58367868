//! `http`: one HTTP request.
//!
//! `with`: `url` (http or https), `method` (default `GET`), `headers` (name → value),
//! `body` (a string is sent as it is; any other JSON value is sent as JSON, with
//! `content-type: application/json` unless a header says otherwise), `timeout_ms` (optional;
//! the step's own timeout always applies).
//!
//! The result is `{status, headers, body, body_truncated, json}`: the body is capped at
//! `max_output_bytes` (lossy UTF-8), and `json` is present only when the response says it is
//! JSON and its whole body parses. Any answer, **including a 4xx or 5xx status**, is a
//! successful step: the status is recorded and later steps or the caller decide what it means.
//! Only failing to get an answer (bad arguments, connection, TLS, timeout) fails the step.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{capped_text, optional_count, ActionContext, ActionResult, Error, Typed};

#[derive(Debug)]
pub struct Http {
    client: reqwest::Client,
    max_output_bytes: usize,
}

impl Http {
    pub fn new(max_output_bytes: usize) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("noetl-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::HttpClient(e.to_string()))?;
        Ok(Self {
            client,
            max_output_bytes,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    url: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default, deserialize_with = "optional_count")]
    timeout_ms: Option<u64>,
}

fn default_method() -> String {
    "GET".to_owned()
}

impl Typed for Http {
    const NAME: &'static str = "http";
    type Args = Args;

    async fn call(&self, args: Args, _: &ActionContext) -> ActionResult {
        let request = self.request(args)?;
        let mut response = request
            .send()
            .await
            .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        let status = response.status().as_u16();
        let headers = headers_json(response.headers());
        let is_json = is_json(response.headers());
        let mut body = Vec::new();
        // One byte past the cap tells that the body was cut off; the rest is not read.
        while body.len() <= self.max_output_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Err(format!("reading the response failed: {}", error_chain(&e))),
            }
        }
        let complete = body.len() <= self.max_output_bytes;
        let parsed = if is_json && complete {
            serde_json::from_slice::<Value>(&body).ok()
        } else {
            None
        };
        let (body, body_truncated) = capped_text(body, self.max_output_bytes);
        let mut result = json!({
            "status": status,
            "headers": headers,
            "body": body,
            "body_truncated": body_truncated,
        });
        if let (Some(parsed), Some(fields)) = (parsed, result.as_object_mut()) {
            fields.insert("json".to_owned(), parsed);
        }
        Ok(result)
    }
}

impl Http {
    fn request(&self, args: Args) -> Result<reqwest::RequestBuilder, String> {
        let invalid = |what: String| format!("invalid arguments for http: {what}");
        let url = reqwest::Url::parse(&args.url)
            .map_err(|e| invalid(format!("url {:?}: {e}", args.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!("url {:?} is not http or https", args.url)));
        }
        let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| invalid(format!("method {:?}", args.method)))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &args.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("value of header {name}")))?;
            headers.append(name, value);
        }
        let body = match args.body {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.into_bytes()),
            Some(document) => {
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                Some(serde_json::to_vec(&document).map_err(|e| invalid(e.to_string()))?)
            }
        };
        let mut request = self.client.request(method, url).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        if let Some(ms) = args.timeout_ms {
            request = request.timeout(Duration::from_millis(ms));
        }
        Ok(request)
    }
}

/// Response headers as `{name: value}`; repeated headers are joined with `, `.
fn headers_json(headers: &HeaderMap) -> Value {
    let mut joined: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        joined
            .entry(name.as_str())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    json!(joined)
}

/// `application/json` or any `…+json` media type.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media_type == "application/json" || media_type.ends_with("+json")
}

/// reqwest's top-level message is terse ("error sending request"); the causes say why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::run_attempt;
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::Router;

    /// A throwaway HTTP server on a free loopback port; it stops with the test's runtime.
    async fn serve() -> String {
        let app = Router::new()
            .route(
                "/json",
                get(|| async {
                    (
                        [(CONTENT_TYPE, "application/json; charset=utf-8")],
                        r#"{"answer": 42}"#,
                    )
                }),
            )
            .route("/big", get(|| async { "y".repeat(10_000) }))
            .route(
                "/echo",
                post(|headers: axum::http::HeaderMap, body: String| async move {
                    let content_type = headers
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let custom = headers
                        .get("x-step")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    format!("{content_type}|{custom}|{body}")
                }),
            )
            .route(
                "/missing",
                get(|| async { (StatusCode::NOT_FOUND, [("x-reason", "gone")], "nope") }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    async fn run(with: Value) -> ActionResult {
        let http = Http::new(1024).expect("client");
        run_attempt(&http, with, 1).await
    }

    /// The result of a GET of `path` on a fresh [`serve`].
    async fn fetch(path: &str) -> Value {
        let base = serve().await;
        run(json!({ "url": format!("{base}{path}") }))
            .await
            .expect("an answer is a success")
    }

    #[tokio::test]
    async fn a_json_response_is_parsed() {
        let result = fetch("/json").await;
        assert_eq!(result["status"], 200);
        assert_eq!(result["json"], json!({"answer": 42}));
        assert_eq!(result["body"], r#"{"answer": 42}"#);
        assert_eq!(
            result["headers"]["content-type"],
            "application/json; charset=utf-8"
        );
    }

    #[tokio::test]
    async fn a_large_body_is_capped_and_not_parsed() {
        let result = fetch("/big").await;
        assert_eq!(result["body"], "y".repeat(1024));
        assert_eq!(result["body_truncated"], true);
        assert!(result.get("json").is_none(), "{result}");
    }

    #[tokio::test]
    async fn method_headers_and_a_json_body_are_sent() {
        let base = serve().await;
        let result = run(json!({
            "url": format!("{base}/echo"),
            "method": "post",
            "headers": {"X-Step": "fetch"},
            "body": {"a": 1},
        }))
        .await
        .expect("succeeds");
        assert_eq!(result["body"], r#"application/json|fetch|{"a":1}"#);
        assert!(result.get("json").is_none(), "text/plain is not JSON");

        let text = run(json!({"url": format!("{base}/echo"), "method": "POST", "body": "raw"}))
            .await
            .expect("succeeds");
        assert_eq!(text["body"], "||raw");
    }

    #[tokio::test]
    async fn an_error_status_is_a_recorded_success() {
        let result = fetch("/missing").await;
        assert_eq!(result["status"], 404);
        assert_eq!(result["headers"]["x-reason"], "gone");
        assert_eq!(result["body"], "nope");
    }

    #[tokio::test]
    async fn a_request_past_its_timeout_fails() {
        let base = serve().await;
        let error = run(json!({"url": format!("{base}/slow"), "timeout_ms": 50}))
            .await
            .expect_err("times out");
        assert!(error.starts_with("request failed"), "{error}");
    }

    #[tokio::test]
    async fn bad_arguments_are_clear_errors() {
        let error = run(json!({"url": "ftp://example.com/x"}))
            .await
            .expect_err("not http");
        assert!(error.contains("is not http or https"), "{error}");
        let error = run(json!({"url": "http://127.0.0.1:1/", "method": "GE T"}))
            .await
            .expect_err("bad method");
        assert!(error.contains("method"), "{error}");
        let error = run(json!({})).await.expect_err("url is required");
        assert!(error.contains("url"), "{error}");
    }
}
