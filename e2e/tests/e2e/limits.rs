//! Limits and backpressure: a tenant over its rate gets 429 with `Retry-After` (others do not
//! notice), an oversized body gets 413 without the gateway buffering it, and a shard with as
//! much work in flight as it takes answers 503 at once instead of queueing.

use noetl_test_support::{free_port, Process};
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{binary, eventually, hello_request, id_of, Api, Cluster, Token, DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_gets_429_with_retry_after_and_other_tenants_do_not() {
    let cluster = Cluster::builder()
        .tokens(&[
            Token::new("a", "tenant-a", &["read"], "token-a"),
            Token::new("b", "tenant-b", &["read"], "token-b"),
        ])
        .tune(|_, gateway| {
            gateway.rate_limit_per_second = 1;
            gateway.rate_limit_burst = 3;
        })
        .start()
        .await;
    let get = |token: &str| {
        cluster
            .with_token(token)
            .request(Method::GET, "/api/v1/topology")
            .send()
    };

    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..20 {
        let response = get("token-a").await.expect("the gateway answers");
        statuses.push(response.status().as_u16());
        if response.status().as_u16() == 429 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            let body: Value = response.json().await.expect("a problem document");
            limited = Some((retry_after, body));
        }
    }
    // The burst is let through whole, then the tenant is held to its rate.
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    let (retry_after, body) = limited.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    assert!(retry_after.is_some_and(|secs| secs >= 1), "{retry_after:?}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert_eq!(body["status"], 429, "{body}");
    // Another tenant has its own budget.
    let other = get("token-b").await.expect("the gateway answers");
    assert_eq!(other.status().as_u16(), 200);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_the_gateway_does_not_buffer_them() {
    let cluster = Cluster::builder().start().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = binary("noetl-gateway", cluster.nats.url(), &listen);
    command.env("NOETL_BODY_LIMIT_BYTES", (1024 * 1024).to_string());
    let gateway = Process::spawn(command);
    Api::new(format!("http://{listen}"))
        .wait_ready("the gateway process to be ready")
        .await;
    let before = peak_memory_kib(gateway.id());

    // 16 clients at once, each offering 64 MiB: buffered, that would be a gigabyte.
    const OFFERED: usize = 64 * 1024 * 1024;
    let uploads: Vec<_> = (0..16)
        .map(|_| tokio::spawn(upload(port, OFFERED)))
        .collect();
    for upload in uploads {
        let (status_line, body) = upload.await.expect("upload task");
        assert!(status_line.contains(" 413 "), "{status_line}\n{body}");
        assert!(body.contains("payload_too_large"), "{body}");
    }
    let grown_mib = (peak_memory_kib(gateway.id()) - before) / 1024;
    assert!(
        grown_mib < 128,
        "the gateway's peak memory grew by {grown_mib} MiB while refusing oversized bodies"
    );
    drop(gateway);
    cluster.stop().await;
}

/// Posts a chunked body of up to `offered` bytes on a raw connection, writing until the gateway
/// stops reading, and returns the response's status line and body.
async fn upload(port: u16, offered: usize) -> (String, String) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        let head = "POST /api/v1/executions HTTP/1.1\r\nHost: gateway\r\n\
                    Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        for _ in 0..offered / chunk.len() {
            writer.write_all(&framed).await?;
        }
        writer.write_all(b"0\r\n\r\n").await
    });
    let mut response = Vec::new();
    // The gateway answers and closes; a reset after the answer is expected.
    let _ = reader.read_to_end(&mut response).await;
    write.abort();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// Peak resident memory (VmHWM) of a process.
fn peak_memory_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in kB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_with_its_requests_in_flight_answers_503_at_once() {
    let cluster = Cluster::builder()
        .tune(|server, _| server.max_in_flight = 1)
        .start()
        .await;
    let pool = cluster.pool(0).await;
    // Holding the executions table keeps the first submit in flight on the shard.
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE executions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let first = {
        let api = Api::clone(&cluster);
        tokio::spawn(async move { api.post_json("/api/v1/executions", &hello_request()).await })
    };
    eventually("the first submit to wait on the lock", DEADLINE, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string())?;
        (waiting > 0)
            .then_some(())
            .ok_or_else(|| "no backend waits on a lock".to_owned())
    })
    .await;

    let response = cluster.submit_hello().await.expect("the gateway answers");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("a problem document");
    assert_eq!(body["code"], "shard_overloaded", "{body}");

    lock.rollback().await.expect("release the lock");
    let (status, body) = first.await.expect("first submit");
    assert_eq!(status, 201, "{body}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM executions WHERE execution_id = $1")
        .bind(id_of(&body).get())
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(
        stored, 1,
        "the refused submit stored nothing, the first one is stored"
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(total, 1, "the refused submit stored nothing");
    pool.close().await;
    cluster.stop().await;
}
