//! Bearer tokens, tenants and scopes: another tenant's execution is a 404 exactly like a
//! missing one, on every endpoint, including for the ids next to it.

mod common;

use common::{
    digest, gateway_settings, hello_request, id_of, poll_readyz, start_gateway_with, Cluster,
};
use noetl_contract::ExecutionId;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Caller<'a> {
    http: &'a reqwest::Client,
    url: &'a str,
    token: Option<&'a str>,
}

impl Caller<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_executions_and_scopes_are_enforced() {
    let cluster = Cluster::start(2).await;
    let tokens = std::env::temp_dir().join(format!("noetl-tokens-{}.toml", std::process::id()));
    std::fs::write(
        &tokens,
        format!(
            r#"
[[tokens]]
name = "a"
tenant = "tenant-a"
scopes = ["submit", "read"]
sha256 = "{}"

[[tokens]]
name = "b"
tenant = "tenant-b"
scopes = ["submit", "read", "admin"]
sha256 = "{}"

[[tokens]]
name = "a-reader"
tenant = "tenant-a"
scopes = ["read"]
sha256 = "{}"
"#,
            digest("token-a"),
            digest("token-b"),
            digest("token-a-read")
        ),
    )
    .expect("write the tokens file");
    let settings = noetl_gateway::configuration::Settings {
        auth_tokens_file: Some(tokens.clone()),
        ..gateway_settings(cluster.nats.url())
    };
    let cancel = CancellationToken::new();
    let (url, task) = start_gateway_with(settings, &cancel).await;
    let http = reqwest::Client::new();
    poll_readyz(&http, &url, "the gateway to be ready", |status, _| {
        status == 200
    })
    .await;
    let a = Caller {
        http: &http,
        url: &url,
        token: Some("token-a"),
    };
    let b = Caller {
        http: &http,
        url: &url,
        token: Some("token-b"),
    };
    let reader = Caller {
        http: &http,
        url: &url,
        token: Some("token-a-read"),
    };
    let nobody = Caller {
        http: &http,
        url: &url,
        token: None,
    };
    let forged = Caller {
        http: &http,
        url: &url,
        token: Some("token-c"),
    };

    let (status, submitted) = a.post("/api/v1/executions", &hello_request()).await;
    assert_eq!(status, 201, "{submitted}");
    let id = id_of(&submitted);
    let (status, _) = a.get(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(status, 200);

    // Tenant B probing A's id and its neighbours gets what a missing id gets.
    let neighbours = [id.get() - 1, id.get(), id.get() + 1, id.get() + 4096];
    for raw in neighbours {
        let probe = ExecutionId::new(raw).expect("valid");
        for (status, body) in [
            b.get(&format!("/api/v1/executions/{probe}")).await,
            b.get(&format!("/api/v1/executions/{probe}/events")).await,
            b.get(&format!("/api/v1/executions/{probe}/stream")).await,
            b.post(&format!("/api/v1/executions/{probe}/cancel"), &json!({}))
                .await,
        ] {
            assert_eq!(
                (status, body["code"].as_str()),
                (404, Some("execution_not_found")),
                "{probe}: {body}"
            );
            assert!(!body.to_string().contains("tenant-a"), "{body}");
        }
    }
    let (_, listed) = b.get("/api/v1/executions").await;
    assert_eq!(listed["executions"], json!([]), "{listed}");
    let (_, listed) = a.get("/api/v1/executions").await;
    assert_eq!(
        listed["executions"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    // The same Idempotency-Key in two tenants is two keys.
    for caller in [&a, &b] {
        let response = http
            .post(format!("{url}/api/v1/executions"))
            .bearer_auth(caller.token.expect("a token"))
            .header("Idempotency-Key", "shared-key")
            .json(&hello_request())
            .send()
            .await
            .expect("submit");
        assert_eq!(response.status().as_u16(), 201);
    }

    // Scopes and missing or unknown tokens.
    let (status, body) = reader.post("/api/v1/executions", &hello_request()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _) = reader.get(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(status, 200);
    let playbook = hello_request()["playbook"].clone();
    let (status, body) = a.post("/api/v1/playbooks", &playbook).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _) = b.post("/api/v1/playbooks", &playbook).await;
    assert_eq!(status, 201);
    for caller in [&nobody, &forged] {
        let (status, body) = caller.get(&format!("/api/v1/executions/{id}")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{body}"
        );
    }
    // The document and the ops endpoints stay open unless configured otherwise.
    assert_eq!(nobody.get("/api/v1/openapi.json").await.0, 200);
    let healthz = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(healthz.status().as_u16(), 200);

    cancel.cancel();
    task.await.expect("task").expect("gateway stops cleanly");
    std::fs::remove_file(&tokens).ok();
    cluster.stop().await;
}
