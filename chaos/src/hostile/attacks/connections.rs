//! The gateway's connections and event streams (finding 9 of issue 27), as in
//! `e2e/tests/e2e/connections.rs`: clients dripping their headers (slowloris), connections past
//! `max_connections` held silent, and event streams past `sse_streams_per_tenant`. The suite's
//! gateway runs with small bounds ([`super::GatewayBounds`]) so that each row ends in seconds.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use noetl_test_support::listen_backlog;
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{every, problem, Ctx, Outcome};

/// Connections dripping their headers at once: under the suite gateway's `max_connections`.
const SLOWLORIS: usize = 50;
/// Connections opened past the suite gateway's `max_connections`.
const PAST_THE_CAP: usize = 32;
/// Streams asked for past the tenant's quota.
const EXTRA_STREAMS: usize = 4;
/// The attacker's pace between two header lines.
const DRIP: Duration = Duration::from_millis(100);

impl Ctx {
    /// The gateway's `host:port`.
    fn gateway_address(&self) -> anyhow::Result<&str> {
        self.gateway
            .strip_prefix("http://")
            .with_context(|| format!("no http:// in {}", self.gateway))
    }

    /// How long a connection the gateway should close may stay open before the row fails:
    /// generous, the closing itself is what is checked, not its timing.
    fn close_deadline(&self) -> Duration {
        self.bounds.header_read_timeout * 10 + Duration::from_secs(10)
    }
}

/// Reads from `stream` until the gateway closes it: an outcome that is ok when it closed
/// without sending a byte.
async fn closed_silently(mut stream: impl AsyncRead + Unpin, deadline: Duration) -> Outcome {
    let mut read = Vec::new();
    // A reset counts as closed, as an end of stream does.
    match tokio::time::timeout(deadline, stream.read_to_end(&mut read)).await {
        Err(_) => Outcome {
            ok: false,
            seen: format!("still open after {deadline:?}"),
        },
        Ok(_) if read.is_empty() => Outcome {
            ok: true,
            seen: "closed without an answer".to_owned(),
        },
        Ok(_) => Outcome {
            ok: false,
            seen: format!(
                "answered {:?}",
                String::from_utf8_lossy(&read)
                    .lines()
                    .next()
                    .unwrap_or_default()
            ),
        },
    }
}

/// 50 connections each send a request line, then one header line after another, never the
/// blank line: the gateway closes each after `header_read_timeout_ms`, without an answer.
pub async fn slowloris(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let address = ctx.gateway_address()?;
    let mut connections = Vec::new();
    for _ in 0..SLOWLORIS {
        let mut stream = TcpStream::connect(address)
            .await
            .context("failed to connect to the gateway")?;
        stream
            .write_all(b"GET /api/v1/executions HTTP/1.1\r\nHost: gateway\r\n")
            .await
            .context("failed to send a request line")?;
        connections.push(stream);
    }
    let deadline = ctx.close_deadline();
    let outcomes = join_all(connections.into_iter().map(|stream| async move {
        let (reader, mut writer) = stream.into_split();
        let drip = tokio::spawn(async move {
            let mut line = 0_u64;
            while writer
                .write_all(format!("X-Drip-{line}: 1\r\n").as_bytes())
                .await
                .is_ok()
            {
                line += 1;
                // The attacker's pace, not a wait for the gateway.
                tokio::time::sleep(DRIP).await;
            }
        });
        let outcome = closed_silently(reader, deadline).await;
        drip.abort();
        outcome
    }))
    .await;
    Ok(every(outcomes))
}

/// `max_connections` + 32 connections opened at once and held silent: the gateway takes up to
/// its cap, the others wait in the listen backlog (seen there), and every one of them is closed
/// without an answer once its header deadline passes; B's requests wait at most that long.
pub async fn flood(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let address = ctx.gateway_address()?;
    let port: u16 = address
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .with_context(|| format!("no port in {address}"))?;
    let count = ctx.bounds.max_connections + PAST_THE_CAP;
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        connections.push(
            TcpStream::connect(address)
                .await
                .context("failed to connect to the gateway")?,
        );
    }
    let deadline = ctx.close_deadline();
    let closed = tokio::spawn(join_all(
        connections
            .into_iter()
            .map(|stream| closed_silently(stream, deadline)),
    ));
    // Watches the backlog while the connections are held: some must wait there.
    let mut most_waiting = 0;
    while !closed.is_finished() {
        most_waiting = most_waiting.max(listen_backlog(port).map_err(anyhow::Error::msg)?);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut outcome = every(closed.await.context("the connections' task")?);
    outcome.ok &= most_waiting > 0;
    outcome.seen = format!(
        "{}; up to {most_waiting} waited in the backlog",
        outcome.seen
    );
    Ok(outcome)
}

/// A opens `sse_streams_per_tenant` + 4 event streams of one running execution: the ones past
/// the quota are refused 429 `stream_quota_exceeded`; the streams end with the execution.
pub async fn streams(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let id = ctx
        .submit(&json!({"playbook": {"name": "long", "steps": [
            {"name": "nap", "action": "sleep", "with": {"ms": 20_000}}
        ]}}))
        .await?;
    ctx.wait(&id, |view| view["steps"][0]["status"] == "running")
        .await?;
    let path = format!("/api/v1/executions/{id}/stream");
    let mut open = Vec::new();
    let mut all = Vec::new();
    for _ in 0..ctx.bounds.sse_streams_per_tenant {
        let response = ctx
            .request(Method::GET, &path)
            .send()
            .await
            .context("the gateway did not answer a stream")?;
        let status = response.status().as_u16();
        all.push(Outcome {
            ok: status == 200,
            seen: format!("{status}"),
        });
        open.push(response);
    }
    for _ in 0..EXTRA_STREAMS {
        all.push(problem(
            Ctx::answer(ctx.request(Method::GET, &path)).await?,
            429,
            "stream_quota_exceeded",
        ));
    }
    let (status, body) = ctx
        .post_json(&format!("/api/v1/executions/{id}/cancel"), &json!({}))
        .await?;
    anyhow::ensure!(status == 200, "cancel answered {status}: {body}");
    drop(open);
    Ok(every(all))
}
