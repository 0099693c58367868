//! A gateway's HTTP API as one caller sees it.

use noetl_contract::ExecutionId;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

use super::{eventually, hello_request, id_of, DEADLINE};

/// The API of one gateway (or the ops endpoints of any process) at `base_url`, called with a
/// bearer token when the caller has one.
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base_url: String,
    token: Option<String>,
}

impl Api {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base_url: base_url.into(),
            token: None,
        }
    }

    /// The same API, called with `token`.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A request to `path`, with the caller's token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`, returning the status and the JSON body (`Null` when it has none).
    pub async fn answer(request: RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        Self::answer(self.request(Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::answer(self.request(Method::POST, path).json(body)).await
    }

    /// Submits `body`, expecting a 201, and returns the new execution's id.
    pub async fn submit(&self, body: &Value) -> ExecutionId {
        let (status, receipt) = self.post_json("/api/v1/executions", body).await;
        assert_eq!(status, 201, "{receipt}");
        id_of(&receipt)
    }

    /// Submits [`hello_request`], returning the whole response (headers too).
    pub async fn submit_hello(&self) -> reqwest::Result<reqwest::Response> {
        self.request(Method::POST, "/api/v1/executions")
            .json(&hello_request())
            .send()
            .await
    }

    /// Polls an execution until `done(body)`, returning the last body.
    pub async fn wait_for_execution(
        &self,
        id: ExecutionId,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, DEADLINE, || async {
            let (status, body) = self.get_json(&format!("/api/v1/executions/{id}")).await;
            if status == 200 && done(&body) {
                Ok(body)
            } else {
                Err(body.to_string())
            }
        })
        .await
    }

    /// Polls an execution until it has ended (succeeded, failed or cancelled).
    pub async fn wait_for_end(&self, id: ExecutionId) -> Value {
        self.wait_for_execution(id, "the execution to end", |body| {
            matches!(
                body["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await
    }

    /// Polls an execution until it has succeeded.
    pub async fn wait_for_success(&self, id: ExecutionId) -> Value {
        self.wait_for_execution(id, "the execution to succeed", |body| {
            body["status"] == "succeeded"
        })
        .await
    }

    /// Every event of an execution, in order.
    pub async fn events(&self, id: ExecutionId) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let (status, page) = self
                .get_json(&format!(
                    "/api/v1/executions/{id}/events?after_seq={after}&limit=100"
                ))
                .await;
            assert_eq!(status, 200, "{page}");
            events.extend(page["events"].as_array().cloned().unwrap_or_default());
            match page["next_after_seq"].as_i64() {
                Some(next) => after = next,
                None => return events,
            }
        }
    }

    /// Polls `/readyz` until `done(status, body)` holds, or panics after [`DEADLINE`].
    pub async fn wait_readyz(&self, what: &str, done: impl Fn(u16, &Value) -> bool) {
        eventually(what, DEADLINE, || async {
            let response = self
                .request(Method::GET, "/readyz")
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if done(status, &body) {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        })
        .await;
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self, what: &str) {
        self.wait_readyz(what, |status, _| status == 200).await;
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Result<String, String> {
        let response = self
            .request(Method::GET, "/metrics")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        response.text().await.map_err(|e| e.to_string())
    }
}
