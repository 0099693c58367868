//! The gateway's connections under hostile clients: a client dripping its headers (slowloris)
//! or sending nothing is closed after `header_read_timeout_ms` while others are served, one
//! dripping its body is answered 504 at `http_timeout_ms`, past `max_connections` new
//! connections wait in the listen backlog until one closes, the gateway staying up, and a
//! tenant's event streams are bounded and their slots freed.

use std::time::Duration;

use noetl_test_support::listen_backlog;
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{
    eventually, gateway_settings, hello_request, Cluster, Gateway, Token, DEADLINE,
};

/// The gateway's port, from its API's base URL.
fn port_of(base_url: &str) -> u16 {
    base_url
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("a port in {base_url}"))
}

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the gateway")
}

/// Sends `GET path` on a connection of its own (closed after the answer) and returns the
/// answer's status line.
async fn get_once(port: u16, path: &str) -> String {
    let mut stream = connect(port).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    status_line(&mut stream).await
}

/// Reads until the gateway closes the connection, and returns the first line read (empty
/// when it closed without answering).
async fn status_line(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    // A reset after (or instead of) an answer counts as closed.
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.lines().next().unwrap_or_default().to_owned()
}

/// Reads from `stream` until the gateway closes it, and returns everything read.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut read = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buffer)).await {
            Err(_) => panic!(
                "the gateway kept the connection open; read so far: {}",
                String::from_utf8_lossy(&read)
            ),
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&read).into_owned(),
            Ok(Ok(n)) => read.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed_while_others_are_served() {
    let cluster = Cluster::builder()
        .tune(|_, gateway| gateway.header_read_timeout_ms = 500)
        .start()
        .await;
    let port = port_of(&cluster.base_url);

    // Slowloris: a request line, then one header line after another, never the blank line.
    let mut slow = connect(port).await;
    slow.write_all(b"GET /api/v1/topology HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .expect("send the request line");
    let (mut reader, mut writer) = slow.into_split();
    let drip = tokio::spawn(async move {
        let mut line = 0_u64;
        while writer
            .write_all(format!("X-Drip-{line}: 1\r\n").as_bytes())
            .await
            .is_ok()
        {
            line += 1;
            // The attacker's pace, not a wait for the gateway.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let closed = tokio::spawn(async move {
        let mut read = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, reader.read_to_end(&mut read))
            .await
            .expect("the gateway closes the dripping connection");
        String::from_utf8_lossy(&read).into_owned()
    });
    // Meanwhile other clients are served.
    while !closed.is_finished() {
        let (status, body) = cluster.get_json("/api/v1/topology").await;
        assert_eq!(status, 200, "{body}");
    }
    let answered = closed.await.expect("reader task");
    assert!(
        !answered.starts_with("HTTP/1.1 200"),
        "the dripping request was served: {answered}"
    );
    drip.abort();

    // A connection that sends nothing is closed too.
    let mut silent = connect(port).await;
    assert_eq!(until_closed(&mut silent).await, "");

    // So is one left idle after a request (keep-alive), once its answer was sent.
    let mut idle = connect(port).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .expect("send the request");
    let answered = until_closed(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    let (status, _) = cluster.get_json("/healthz").await;
    assert_eq!(status, 200);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_a_byte_at_a_time_is_cut_at_the_request_deadline() {
    let cluster = Cluster::builder()
        .tune(|_, gateway| gateway.http_timeout_ms = 2_000)
        .start()
        .await;
    let port = port_of(&cluster.base_url);
    let (mut reader, mut writer) = connect(port).await.into_split();
    writer
        .write_all(
            b"POST /api/v1/executions HTTP/1.1\r\nHost: gateway\r\n\
              Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
        )
        .await
        .expect("send the head");
    let drip = tokio::spawn(async move {
        while writer.write_all(b" ").await.is_ok() {
            // The attacker's pace, not a wait for the gateway.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, reader.read_to_end(&mut answer))
        .await
        .expect("the gateway answers and closes the connection");
    drip.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    let (status, _) = cluster.get_json("/healthz").await;
    assert_eq!(status, 200);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_ones_wait_until_one_closes() {
    let cluster = Cluster::builder().start().await;
    // A gateway of its own, which no pooled client of the harness holds a connection to.
    let mut settings = gateway_settings(cluster.nats.url());
    settings.max_connections = 3;
    settings.sse_streams_per_tenant = 1;
    settings.max_sse_streams = 2;
    // Idle connections stay until the test closes them.
    settings.header_read_timeout_ms = 600_000;
    let gateway = Gateway::start(settings).await;
    let port = port_of(&gateway.api.base_url);
    assert!(get_once(port, "/healthz").await.contains(" 200 "));

    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect(port).await);
    }
    // Past the cap: the first asks for something, the others say nothing.
    let mut waiting = connect(port).await;
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut more = Vec::new();
    for _ in 0..2 {
        more.push(connect(port).await);
    }
    // The gateway took the first three and left the others in the backlog.
    eventually("three connections in the backlog", DEADLINE, || async {
        match listen_backlog(port)? {
            3 => Ok(()),
            queued => Err(format!("{queued} in the backlog")),
        }
    })
    .await;

    // One closes: the waiting request is taken and answered.
    drop(idle.remove(0));
    let answered = status_line(&mut waiting).await;
    assert!(answered.contains(" 200 "), "{answered:?}");

    // The gateway is still up, and serves again once the idle ones are gone.
    drop(idle);
    drop(more);
    let answered = eventually("the gateway to answer", DEADLINE, || async {
        let answered = get_once(port, "/healthz").await;
        answered
            .contains(" 200 ")
            .then_some(answered.clone())
            .ok_or(answered)
    })
    .await;
    assert!(answered.starts_with("HTTP/1.1 200"));
    let (status, _) = gateway.api.get_json("/healthz").await;
    assert_eq!(status, 200);
    gateway.stop().await;
    cluster.stop().await;
}

/// The cluster's API as `token`, asking for an execution's event stream.
async fn open_stream(cluster: &Cluster, token: &str, id: &str) -> reqwest::Response {
    cluster
        .with_token(token)
        .request(Method::GET, &format!("/api/v1/executions/{id}/stream"))
        .send()
        .await
        .expect("the gateway answers")
}

/// The `code` and `Retry-After` of a refused stream.
async fn refusal(response: reqwest::Response) -> (u16, Option<String>, String) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (
        status,
        retry_after,
        body["code"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_streams_gets_429_and_a_closed_or_ended_stream_frees_its_slot() {
    let cluster = Cluster::builder()
        .tokens(&[
            Token::new("a", "tenant-a", &["submit", "read"], "token-a"),
            Token::new("b", "tenant-b", &["submit", "read"], "token-b"),
        ])
        .tune(|_, gateway| {
            gateway.sse_streams_per_tenant = 2;
            gateway.max_sse_streams = 3;
        })
        .start()
        .await;
    // No worker: the executions keep running, and their streams stay open.
    let a = cluster
        .with_token("token-a")
        .submit(&hello_request())
        .await
        .to_string();
    let b = cluster
        .with_token("token-b")
        .submit(&hello_request())
        .await
        .to_string();

    let first = open_stream(&cluster, "token-a", &a).await;
    let second = open_stream(&cluster, "token-a", &a).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let (status, retry_after, code) = refusal(open_stream(&cluster, "token-a", &a).await).await;
    assert_eq!((status, code.as_str()), (429, "stream_quota_exceeded"));
    assert!(retry_after.is_some(), "a 429 says when to retry");

    // Another tenant has streams of its own, up to the gateway's total.
    let other = open_stream(&cluster, "token-b", &b).await;
    assert_eq!(other.status(), 200);
    let (status, _, code) = refusal(open_stream(&cluster, "token-b", &b).await).await;
    assert_eq!((status, code.as_str()), (503, "too_many_streams"));

    // A client that goes away frees its slot.
    drop(first);
    let reopened = eventually("a slot of tenant-a to be free again", DEADLINE, || async {
        let response = open_stream(&cluster, "token-a", &a).await;
        match response.status().as_u16() {
            200 => Ok(response),
            _ => Err(format!("{:?}", refusal(response).await)),
        }
    })
    .await;

    // A stream that ends frees its slot too: both of tenant-a's end with the execution.
    let (status, body) = cluster
        .with_token("token-a")
        .post_json(
            &format!("/api/v1/executions/{a}/cancel"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for stream in [second, reopened] {
        let text = stream.text().await.expect("the stream ends");
        assert!(text.contains("event: end\ndata: cancelled"), "{text}");
    }
    let a2 = cluster
        .with_token("token-a")
        .submit(&hello_request())
        .await
        .to_string();
    let mut again = Vec::new();
    for _ in 0..2 {
        let response = eventually(
            "tenant-a's ended streams to free their slots",
            DEADLINE,
            || async {
                let response = open_stream(&cluster, "token-a", &a2).await;
                match response.status().as_u16() {
                    200 => Ok(response),
                    _ => Err(format!("{:?}", refusal(response).await)),
                }
            },
        )
        .await;
        again.push(response);
    }
    drop(again);
    drop(other);
    cluster.stop().await;
}
