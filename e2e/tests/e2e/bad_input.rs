//! Bad input gets a 4xx problem document with a stable code, never a 500; the gateway stays up.

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{hello_request, Cluster};

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

/// `hello_request()` as JSON bytes, changed by `change`.
fn hello_changed(change: fn(&mut Value)) -> Vec<u8> {
    let mut request = hello_request();
    change(&mut request);
    serde_json::to_vec(&request).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_documents() {
    let cluster = Cluster::builder().shards(2).start().await;
    let post_raw = |body: Vec<u8>| {
        cluster
            .request(Method::POST, "/api/v1/executions")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // (body, status, code, a part of the detail)
    let cases: [(Vec<u8>, u16, &str, Option<&str>); 6] = [
        (b"{\"playbook\": ".to_vec(), 400, "invalid_json", None),
        (
            hello_changed(|r| r["playbook"]["steps"][0]["needs"] = json!("greet")),
            400,
            "invalid_request",
            Some("playbook.steps[0].needs"),
        ),
        (
            br#"{"playbook": {"name": "x", "steps": []}, "colour": 1}"#.to_vec(),
            400,
            "invalid_request",
            None,
        ),
        (
            hello_changed(|r| r["playbook"]["steps"][0]["needs"] = json!(["wait"])),
            400,
            "invalid_playbook",
            Some("cycle"),
        ),
        (
            hello_changed(|r| r["playbook"]["steps"][1]["action"] = json!("teleport")),
            400,
            "invalid_playbook",
            Some("playbook.steps[1].action"),
        ),
        (
            hello_changed(|r| r["input"] = json!({"blob": "x".repeat(1024 * 1024)})),
            413,
            "payload_too_large",
            None,
        ),
    ];
    for (body, status, code, detail) in cases {
        let r = post_raw(body).await.expect("answer");
        let problem = expect_problem(r, status, code).await;
        if let Some(detail) = detail {
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(detail),
                "{problem}"
            );
        }
    }

    let r = cluster
        .request(Method::POST, "/api/v1/executions")
        .body(serde_json::to_vec(&hello_request()).expect("json"))
        .send()
        .await
        .expect("answer");
    expect_problem(r, 415, "unsupported_media_type").await;

    let send = |method: Method, path: String| cluster.request(method, &path).send();
    let r = send(Method::GET, "/api/v1/nowhere".into())
        .await
        .expect("answer");
    expect_problem(r, 404, "route_not_found").await;
    let r = send(Method::DELETE, "/api/v1/executions".into())
        .await
        .expect("answer");
    expect_problem(r, 405, "method_not_allowed").await;
    for bad_id in ["abc", "-5", "1e9", "99999999999999999999"] {
        for path in [
            format!("/api/v1/executions/{bad_id}"),
            format!("/api/v1/route/{bad_id}"),
        ] {
            let r = send(Method::GET, path).await.expect("answer");
            expect_problem(r, 400, "invalid_execution_id").await;
        }
    }
    let r = send(Method::GET, "/api/v1/executions/325".into())
        .await
        .expect("answer");
    expect_problem(r, 404, "execution_not_found").await;

    // Still serving after all of that.
    let (status, _) = cluster
        .post_json("/api/v1/executions", &hello_request())
        .await;
    assert_eq!(status, 201);
    let (status, _) = cluster.get_json("/healthz").await;
    assert_eq!(status, 200);
    cluster.stop().await;
}
