use super::super::run_attempt;
use super::*;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use crate::egress::Rules;

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
            "/headers",
            get(|| async {
                // Bytes past ASCII are valid in a header value, and grow as text.
                let wide = axum::http::HeaderValue::from_bytes(&[0xff; 600]).expect("obs-text");
                ([("x-a", wide.clone()), ("x-b", wide)], "")
            }),
        )
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
            "/redirect",
            get(|query: axum::extract::RawQuery| async move {
                let to = query.0.unwrap_or_default();
                (StatusCode::FOUND, [(axum::http::header::LOCATION, to)], "")
            }),
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

/// Egress settings whose pool `default` may reach 127.0.0.1, following up to `redirects`.
fn loopback_allowed(redirects: usize) -> Egress {
    let allow = Rules::parse(&["127.0.0.1/32"]).expect("valid");
    Egress {
        allow: [("default".to_owned(), allow)].into(),
        max_redirects: redirects,
        ..Egress::default()
    }
}

/// Runs `with` in pool `default` under `egress`.
async fn run_under(egress: &Egress, with: Value) -> ActionResult {
    let http = Http::new(1024, egress, &["default".to_owned()]).expect("client");
    run_attempt(&http, with, 1).await
}

/// Runs `with` where the pool may reach the tests' loopback servers.
async fn run(with: Value) -> ActionResult {
    run_under(&loopback_allowed(0), with).await
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
async fn response_headers_are_capped() {
    let result = fetch("/headers").await;
    assert_eq!(result["headers_truncated"], true, "{result}");
    let kept = result["headers"].to_string().len();
    assert!(kept <= 1024 + 64, "{kept} bytes of headers");
    assert_eq!(fetch("/json").await["headers_truncated"], false);
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
    assert_eq!(error, format!("request_failed: no HTTP answer from {base}"));
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

/// The loopback port of a listener that was closed: nothing listens there now.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    port
}

/// URLs no pool reaches unless its `http_allow` names them, even with 127.0.0.1 allowed.
fn internal(port: u16) -> Vec<String> {
    vec![
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://127.0.0.2:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://10.0.0.1:{port}/"),
        format!("http://[::ffff:10.0.0.1]:{port}/"),
    ]
}

/// `error` with the port of `url` (scheme://host:port) replaced by `PORT`.
fn without_port(error: &str, port: u16) -> String {
    error.replace(&format!(":{port}"), ":PORT")
}

#[tokio::test]
async fn loopback_is_refused_by_default_whether_or_not_a_port_listens() {
    let base = serve().await;
    let open_port = base.rsplit(':').next().expect("a port");
    let open = run_under(&Egress::default(), json!({"url": format!("{base}/json")}))
        .await
        .expect_err("loopback is denied");
    assert!(open.starts_with("egress_denied: "), "{open}");
    let closed = closed_port().await;
    let shut = run_under(
        &Egress::default(),
        json!({ "url": format!("http://127.0.0.1:{closed}/json") }),
    )
    .await
    .expect_err("loopback is denied");
    assert_eq!(open, shut, "the same text, open port ({open_port}) or not");
}

#[tokio::test]
async fn metadata_mapped_and_named_loopback_are_refused() {
    let port = closed_port().await;
    let mut urls = internal(port);
    urls.push(format!("http://[::ffff:127.0.0.1]:{port}/"));
    urls.push(format!("http://localhost:{port}/"));
    for url in urls {
        let error = run_under(&Egress::default(), json!({ "url": url }))
            .await
            .expect_err("denied");
        assert!(error.starts_with("egress_denied: "), "{url}: {error}");
        assert!(!error.contains("connection"), "{error}");
    }
}

#[tokio::test]
async fn failures_to_connect_read_the_same_whatever_listens() {
    // Nothing listening, and a listener that accepts and hangs up without a word: a port
    // scanner would tell them apart by their errors.
    let closed = closed_port().await;
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mute_port = mute.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((connection, _)) = mute.accept().await {
            drop(connection);
        }
    });
    let mut errors = Vec::new();
    for port in [closed, mute_port] {
        let error = run(json!({ "url": format!("http://127.0.0.1:{port}/") }))
            .await
            .expect_err("no answer");
        errors.push(without_port(&error, port));
    }
    assert_eq!(
        errors[0],
        "request_failed: no HTTP answer from http://127.0.0.1:PORT"
    );
    assert_eq!(errors[0], errors[1]);
    let secret = format!("http://user:hunter2@127.0.0.1:{closed}/p?token=hunter3");
    let error = run(json!({ "url": secret })).await.expect_err("no answer");
    assert!(
        !error.contains("hunter"),
        "only the origin is named: {error}"
    );
}

#[tokio::test]
async fn an_allowed_address_is_reached() {
    let result = fetch("/json").await;
    assert_eq!(result["status"], 200);
}

#[tokio::test]
async fn a_followed_redirect_is_checked_like_the_first_request() {
    let base = serve().await;
    let egress = loopback_allowed(2);
    let result = run_under(
        &egress,
        json!({ "url": format!("{base}/redirect?{base}/json") }),
    )
    .await
    .expect("an allowed hop is followed");
    assert_eq!(result["json"], json!({"answer": 42}));
    for denied in internal(closed_port().await) {
        let error = run_under(
            &egress,
            json!({ "url": format!("{base}/redirect?{denied}") }),
        )
        .await
        .expect_err("the hop is denied");
        assert!(error.starts_with("egress_denied: "), "{denied}: {error}");
    }
}

#[tokio::test]
async fn a_redirect_not_followed_is_the_answer() {
    let base = serve().await;
    let once = format!("{base}/redirect?{base}/json");
    let twice = format!("{base}/redirect?{once}");
    // Redirects off (the default), and one redirect followed of two.
    for (redirects, url) in [(0, once), (1, twice)] {
        let result = run_under(&loopback_allowed(redirects), json!({ "url": url }))
            .await
            .expect("a 302 is an answer");
        assert_eq!(result["status"], 302, "{result}");
        assert_eq!(result["headers"]["location"], format!("{base}/json"));
    }
}

#[tokio::test]
async fn a_step_timeout_above_the_setting_is_capped() {
    let base = serve().await;
    let egress = Egress {
        timeout: Duration::from_millis(50),
        ..loopback_allowed(0)
    };
    let error = run_under(
        &egress,
        json!({"url": format!("{base}/slow"), "timeout_ms": 600_000}),
    )
    .await
    .expect_err("http_timeout_ms applies");
    assert_eq!(error, format!("request_failed: no HTTP answer from {base}"));
}
