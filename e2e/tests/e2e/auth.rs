//! Bearer tokens, tenants and scopes: another tenant's execution is a 404 exactly like a
//! missing one, on every endpoint, including for the ids next to it.

use noetl_contract::ExecutionId;
use reqwest::Method;
use serde_json::json;

use crate::harness::{assert_problem, hello_request, id_of, Api, Cluster, Token};

const TOKENS: [Token; 3] = [
    Token::new("a", "tenant-a", &["submit", "read"], "token-a"),
    Token::new("b", "tenant-b", &["submit", "read", "admin"], "token-b"),
    Token::new("a-reader", "tenant-a", &["read"], "token-a-read"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_executions_and_scopes_are_enforced() {
    let cluster = Cluster::builder().shards(2).tokens(&TOKENS).start().await;
    let a = cluster.with_token("token-a");
    let b = cluster.with_token("token-b");
    let reader = cluster.with_token("token-a-read");
    let nobody = Api::clone(&cluster);
    let forged = cluster.with_token("token-c");

    let (status, submitted) = a.post_json("/api/v1/executions", &hello_request()).await;
    assert_eq!(status, 201, "{submitted}");
    let id = id_of(&submitted);
    let (status, _) = a.get_json(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(status, 200);

    // Tenant B probing A's id and its neighbours gets what a missing id gets.
    let neighbours = [id.get() - 1, id.get(), id.get() + 1, id.get() + 4096];
    for raw in neighbours {
        let probe = ExecutionId::new(raw).expect("valid");
        for (status, body) in [
            b.get_json(&format!("/api/v1/executions/{probe}")).await,
            b.get_json(&format!("/api/v1/executions/{probe}/events"))
                .await,
            b.get_json(&format!("/api/v1/executions/{probe}/stream"))
                .await,
            b.post_json(&format!("/api/v1/executions/{probe}/cancel"), &json!({}))
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
    let (_, listed) = b.get_json("/api/v1/executions").await;
    assert_eq!(listed["executions"], json!([]), "{listed}");
    let (_, listed) = a.get_json("/api/v1/executions").await;
    assert_eq!(
        listed["executions"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    // The same Idempotency-Key in two tenants is two keys.
    for caller in [&a, &b] {
        let request = caller
            .request(Method::POST, "/api/v1/executions")
            .header("Idempotency-Key", "shared-key")
            .json(&hello_request());
        let (status, body) = Api::answer(request).await;
        assert_eq!(status, 201, "{body}");
    }

    // Scopes and missing or unknown tokens.
    let (status, body) = reader
        .post_json("/api/v1/executions", &hello_request())
        .await;
    assert_problem(status, &body, 403, "forbidden");
    let (status, _) = reader.get_json(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(status, 200);
    let playbook = hello_request()["playbook"].clone();
    let (status, body) = a.post_json("/api/v1/playbooks", &playbook).await;
    assert_problem(status, &body, 403, "forbidden");
    let (status, _) = b.post_json("/api/v1/playbooks", &playbook).await;
    assert_eq!(status, 201);
    for caller in [&nobody, &forged] {
        let (status, body) = caller.get_json(&format!("/api/v1/executions/{id}")).await;
        assert_problem(status, &body, 401, "unauthorized");
    }
    // The document and the ops endpoints stay open unless configured otherwise.
    assert_eq!(nobody.get_json("/api/v1/openapi.json").await.0, 200);
    assert_eq!(nobody.get_json("/healthz").await.0, 200);
    cluster.stop().await;
}
