//! `http`: one HTTP request.
//!
//! `with`: `url` (http or https), `method` (default `GET`), `headers` (name → value),
//! `body` (a string is sent as it is; any other JSON value is sent as JSON, with
//! `content-type: application/json` unless a header says otherwise), `timeout_ms` (optional,
//! at most `http_timeout_ms`; the step's own timeout always applies).
//!
//! What a request may reach is its pool's egress policy ([`crate::egress`]): a refused address
//! fails the step with `egress_denied`, and every other failure to get an answer (refused
//! connection, timeout, TLS or protocol error) with the one text `request_failed: no HTTP
//! answer from <origin>`, so that errors tell nothing of which ports are open. Redirects are
//! not followed unless `http_max_redirects` says so, each hop checked like the first request.
//!
//! The result is `{status, headers, body, body_truncated, headers_truncated, json}`: the body
//! is capped at `max_output_bytes` (lossy UTF-8), and so are the headers' names and values
//! together; `json` is present only when the response says it is JSON and its whole body
//! parses. Any answer, **including a 4xx or 5xx status**, is a successful step: the status is
//! recorded and later steps or the caller decide what it means.
//! Only failing to get an answer (bad arguments, connection, TLS, timeout) fails the step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{redirect, Method, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{capped_text, optional_count, ActionContext, ActionResult, Error, Typed};
use crate::egress::{Denied, Egress, Policy, Resolver};

/// The `http` action: one client per pool, each resolving through its pool's egress policy.
#[derive(Debug)]
pub struct Http {
    pools: BTreeMap<String, PoolClient>,
    /// For a pool this worker was not configured with (none reaches it): no allow-list.
    other: PoolClient,
    max_output_bytes: usize,
    timeout: Duration,
}

#[derive(Debug)]
struct PoolClient {
    client: reqwest::Client,
    policy: Arc<Policy>,
}

impl PoolClient {
    fn new(policy: Policy, egress: &Egress) -> Result<Self, Error> {
        let policy = Arc::new(policy);
        let max_redirects = egress.max_redirects;
        let redirects = if max_redirects == 0 {
            redirect::Policy::none()
        } else {
            let policy = policy.clone();
            // Host names of each hop go through the resolver; IP literals are checked here.
            redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max_redirects {
                    attempt.stop()
                } else if let Err(denied) = policy.check_url(attempt.url()) {
                    attempt.error(denied)
                } else {
                    attempt.follow()
                }
            })
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("noetl-worker/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(Resolver {
                policy: policy.clone(),
            }))
            // A proxy would connect on the worker's behalf, out of the policy's sight.
            .no_proxy()
            .redirect(redirects)
            .timeout(egress.timeout)
            .build()
            .map_err(|e| Error::HttpClient(e.to_string()))?;
        Ok(Self { client, policy })
    }
}

impl Http {
    /// A client for each of `pools`, with its `http_allow`.
    pub fn new(max_output_bytes: usize, egress: &Egress, pools: &[String]) -> Result<Self, Error> {
        let mut clients = BTreeMap::new();
        for pool in pools {
            clients.insert(pool.clone(), PoolClient::new(egress.policy(pool), egress)?);
        }
        let other = Policy {
            deny: egress.deny.clone(),
            ..Policy::default()
        };
        Ok(Self {
            pools: clients,
            other: PoolClient::new(other, egress)?,
            max_output_bytes,
            timeout: egress.timeout,
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

    async fn call(&self, args: Args, ctx: &ActionContext) -> ActionResult {
        let pool = self.pools.get(ctx.pool.as_ref()).unwrap_or(&self.other);
        let (url, request) = self.request(&pool.client, args)?;
        if let Err(denied) = pool.policy.check_url(&url) {
            return Err(refused(&denied, ctx));
        }
        let origin = url.origin().ascii_serialization();
        let mut response = request
            .send()
            .await
            .map_err(|error| match denied_in(&error) {
                Some(denied) => refused(denied, ctx),
                None => no_answer(&origin, error, ctx),
            })?;
        let status = response.status().as_u16();
        let (headers, headers_truncated) = headers_json(response.headers(), self.max_output_bytes);
        let is_json = is_json(response.headers());
        let mut body = Vec::new();
        // One byte past the cap tells that the body was cut off; the rest is not read.
        while body.len() <= self.max_output_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(error) => {
                    let error = error_chain(&error.without_url());
                    tracing::debug!(pool = %ctx.pool, %origin, %error, "an http answer broke off");
                    return Err(format!(
                        "request_failed: the answer from {origin} broke off"
                    ));
                }
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
            "headers_truncated": headers_truncated,
        });
        if let (Some(parsed), Some(fields)) = (parsed, result.as_object_mut()) {
            fields.insert("json".to_owned(), parsed);
        }
        Ok(result)
    }
}

/// The step's error for a refused address: the same whatever the reason, which only the
/// worker's log (at debug) gives.
fn refused(denied: &Denied, ctx: &ActionContext) -> String {
    tracing::debug!(pool = %ctx.pool, host = %denied.host, reason = %denied.reason, "http egress denied");
    metrics::counter!("noetl_worker_http_egress_denied_total", "pool" => ctx.pool.to_string())
        .increment(1);
    format!(
        "egress_denied: pool {:?} may not reach {} (loopback, link-local, private and the \
         cluster's own addresses are refused unless the pool's http_allow lists them)",
        ctx.pool, denied.host
    )
}

/// The step's error when no answer came: one text for a refused connection, a timeout, a TLS
/// or protocol error, so that it tells nothing of which ports are open; the worker's log (at
/// debug) says which.
fn no_answer(origin: &str, error: reqwest::Error, ctx: &ActionContext) -> String {
    // Without the URL, whose path, query or user info may hold a secret.
    let error = error_chain(&error.without_url());
    tracing::debug!(pool = %ctx.pool, %origin, %error, "an http request got no answer");
    format!("request_failed: no HTTP answer from {origin}")
}

/// The policy refusal among the causes of `error`, if it is one (from the resolver or the
/// redirect policy).
fn denied_in(error: &reqwest::Error) -> Option<&Denied> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(denied) = cause.downcast_ref::<Denied>() {
            return Some(denied);
        }
        source = cause.source();
    }
    None
}

impl Http {
    fn request(
        &self,
        client: &reqwest::Client,
        args: Args,
    ) -> Result<(Url, reqwest::RequestBuilder), String> {
        let invalid = |what: String| format!("invalid arguments for http: {what}");
        let url = Url::parse(&args.url).map_err(|e| invalid(format!("url {:?}: {e}", args.url)))?;
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
        let mut request = client.request(method, url.clone()).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        // `http_timeout_ms` bounds every request; a step may ask for less.
        let timeout = args.timeout_ms.map_or(self.timeout, |ms| {
            Duration::from_millis(ms).min(self.timeout)
        });
        Ok((url, request.timeout(timeout)))
    }
}

/// Response headers as `{name: value}`; repeated headers are joined with `, `.
/// Headers past `max` bytes of names and values (as text) are left out, and the `bool` says so:
/// a server may send some 400 KB of them, and a byte past ASCII grows to three as text.
fn headers_json(headers: &HeaderMap, max: usize) -> (Value, bool) {
    let mut joined: BTreeMap<&str, String> = BTreeMap::new();
    let mut size = 0;
    let mut truncated = false;
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        size += name.as_str().len() + value.len();
        if size > max {
            truncated = true;
            break;
        }
        joined
            .entry(name.as_str())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    (json!(joined), truncated)
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
mod tests;
