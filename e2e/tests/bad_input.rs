//! Bad input gets a 4xx problem document with a stable code, never a 500; the gateway stays up.

mod common;

use common::{hello_request, Cluster};
use serde_json::{json, Value};

async fn expect_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "for {code}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json", "for {code}");
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a person-readable detail: {body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_documents() {
    let cluster = Cluster::start(2).await;
    let http = &cluster.http;
    let submit = cluster.url("/api/v1/executions");
    let post_raw = |body: Vec<u8>| {
        http.post(&submit)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let r = post_raw(b"{\"playbook\": ".to_vec()).await.expect("answer");
    expect_problem(r, 400, "invalid_json").await;

    let mut wrong_type = hello_request();
    wrong_type["playbook"]["steps"][0]["needs"] = json!("greet");
    let r = post_raw(serde_json::to_vec(&wrong_type).expect("json"))
        .await
        .expect("answer");
    let body = expect_problem(r, 400, "invalid_request").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("playbook.steps[0].needs"),
        "{body}"
    );

    let r = post_raw(br#"{"playbook": {"name": "x", "steps": []}, "colour": 1}"#.to_vec())
        .await
        .expect("answer");
    expect_problem(r, 400, "invalid_request").await;

    let mut cyclic = hello_request();
    cyclic["playbook"]["steps"][0]["needs"] = json!(["wait"]);
    let r = post_raw(serde_json::to_vec(&cyclic).expect("json"))
        .await
        .expect("answer");
    let body = expect_problem(r, 400, "invalid_playbook").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("cycle"),
        "{body}"
    );

    let mut unknown_action = hello_request();
    unknown_action["playbook"]["steps"][1]["action"] = json!("teleport");
    let r = post_raw(serde_json::to_vec(&unknown_action).expect("json"))
        .await
        .expect("answer");
    let body = expect_problem(r, 400, "invalid_playbook").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("playbook.steps[1].action"),
        "{body}"
    );

    let mut oversized = hello_request();
    oversized["input"] = json!({"blob": "x".repeat(1024 * 1024)});
    let r = post_raw(serde_json::to_vec(&oversized).expect("json"))
        .await
        .expect("answer");
    expect_problem(r, 413, "payload_too_large").await;

    let r = http
        .post(&submit)
        .body(serde_json::to_vec(&hello_request()).expect("json"))
        .send()
        .await
        .expect("answer");
    expect_problem(r, 415, "unsupported_media_type").await;

    let r = http
        .get(cluster.url("/api/v1/nowhere"))
        .send()
        .await
        .expect("answer");
    expect_problem(r, 404, "route_not_found").await;

    let r = http
        .delete(cluster.url("/api/v1/executions"))
        .send()
        .await
        .expect("answer");
    expect_problem(r, 405, "method_not_allowed").await;

    for bad_id in ["abc", "-5", "1e9", "99999999999999999999"] {
        let r = http
            .get(cluster.url(&format!("/api/v1/executions/{bad_id}")))
            .send()
            .await
            .expect("answer");
        expect_problem(r, 400, "invalid_execution_id").await;
        let r = http
            .get(cluster.url(&format!("/api/v1/route/{bad_id}")))
            .send()
            .await
            .expect("answer");
        expect_problem(r, 400, "invalid_execution_id").await;
    }

    let r = http
        .get(cluster.url("/api/v1/executions/325"))
        .send()
        .await
        .expect("answer");
    expect_problem(r, 404, "execution_not_found").await;

    // Still serving after all of that.
    let (status, _) = cluster
        .post_json("/api/v1/executions", &hello_request())
        .await;
    assert_eq!(status, 201);
    let r = http
        .get(cluster.url("/healthz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 200);
    cluster.stop().await;
}
