//! Sizes on every NATS hop (finding 2), results over the execution's cap (finding 4) and a report
//! forged over NATS with a worker's credentials (finding 8), against NATS's `max_payload` and
//! the server's `step_result_max_bytes` of the suite's cluster (`e2e/tests/e2e/payload.rs`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use noetl_contract::command::{ReportAck, StepOutcome, StepReport};
use noetl_contract::step::{Attempt, AttemptToken, StepIndex, TOKEN_BYTES};
use noetl_contract::subject::{self, ShardRequest};
use noetl_contract::ExecutionId;
use reqwest::Method;
use serde_json::{json, Value};

use super::{every, problem, step_failed, Ctx, Outcome};

/// The pool whose `http` steps may reach the local HTTP target.
const FETCH_POOL: &str = "fetch";

/// A step that renders a `with` a little over `max_payload`, and one after it.
pub async fn command_too_large(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let template = format!("{{{{ 'a' * {} }}}}", ctx.max_payload + 4_096);
    let view = ctx
        .run_to_end(&json!({"playbook": {"name": "big", "steps": [
            {"name": "big", "action": "noop", "with": {"blob": template}},
            {"name": "after", "action": "noop", "needs": ["big"]}
        ]}}))
        .await?;
    Ok(step_failed(&view, "big", "command_too_large"))
}

/// Eight clients at once, each offering a chunked body of 64 MiB (half a gigabyte, if the
/// gateway buffered them): each is answered 413 once it passes the body limit.
pub async fn oversized_bodies(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let address = ctx
        .gateway
        .strip_prefix("http://")
        .context("an http:// gateway")?
        .to_owned();
    let uploads = (0..8).map(|_| upload(&address, 64 * 1024 * 1024));
    let answers = futures::future::try_join_all(uploads).await?;
    Ok(every(
        answers
            .into_iter()
            .map(|(status, body)| {
                // The problem document, whether the answer is chunked or not.
                let document = body
                    .find('{')
                    .zip(body.rfind('}'))
                    .and_then(|(from, to)| body.get(from..=to))
                    .and_then(|json| serde_json::from_str::<Value>(json).ok())
                    .unwrap_or(Value::Null);
                problem((status, document), 413, "payload_too_large")
            })
            .collect(),
    ))
}

/// Posts a chunked body of up to `offered` bytes on a raw connection (with A's token),
/// writing until the gateway stops reading: the answer's status and body.
async fn upload(address: &str, offered: usize) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .context("failed to connect to the gateway")?;
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /api/v1/executions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        super::TOKEN_A
    );
    let write = tokio::spawn(async move {
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
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    Ok((status, body.to_owned()))
}

/// Numbers written `9e15` are re-encoded `9000000000000000.0`: a body under `max_payload`
/// makes a request to the shard over it.
pub async fn submit_grows(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let count = ctx.max_payload / 8;
    let numbers = vec!["9e15"; count].join(",");
    let body = format!(
        r#"{{"playbook": {{"name": "numbers", "steps": [{{"name": "a", "action": "noop"}}]}},
            "input": {{"numbers": [{numbers}]}}}}"#
    );
    anyhow::ensure!(body.len() < ctx.max_payload, "{} bytes", body.len());
    let seen = ctx
        .post_raw("/api/v1/executions", "application/json", body)
        .await?;
    Ok(problem(seen, 413, "payload_too_large"))
}

/// A playbook under the gateway's body limit, over `max_payload` once stored.
pub async fn publish_too_large(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let playbook = json!({"name": "large", "steps": [
        {"name": "s", "action": "noop", "with": {"note": "x".repeat(ctx.max_payload * 2)}}
    ]});
    let seen = ctx.post_json("/api/v1/playbooks", &playbook).await?;
    Ok(problem(seen, 413, "payload_too_large"))
}

/// An `http` body of NULs, each six bytes once encoded: a report over `max_payload`.
pub async fn result_too_large(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let url = format!("{}/nul/{}", ctx.target, ctx.max_payload / 3);
    let view = ctx
        .run_to_end(&json!({"playbook": {"name": "nuls", "steps": [
            {"name": "fetch", "action": "http", "pool": FETCH_POOL, "with": {"url": url}}
        ]}}))
        .await?;
    Ok(step_failed(&view, "fetch", "result_too_large"))
}

/// Six results of three quarters of `step_result_max_bytes` each: every one fits alone,
/// together they pass `execution_results_max_bytes` (and would outgrow a reply). The steps past
/// it fail with `result_too_large`; the execution reads (200), a small page of its events reads,
/// and its stream ends.
pub async fn large_results(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let size = ctx.step_result_max_bytes * 3 / 4;
    anyhow::ensure!(
        6 * size > ctx.execution_results_max_bytes,
        "six results of {size} bytes fit under execution_results_max_bytes"
    );
    let url = format!("{}/text/{size}", ctx.target);
    let steps: Vec<Value> = (0..6)
        .map(|n| json!({"name": format!("s{n}"), "action": "http", "pool": FETCH_POOL, "with": {"url": url}}))
        .collect();
    let id = ctx
        .submit(&json!({"playbook": {"name": "wide", "steps": steps}}))
        .await?;
    // The stream ends once the execution has: it is the wait.
    let stream = ctx
        .request(Method::GET, &format!("/api/v1/executions/{id}/stream"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .context("the stream did not start")?
        .text()
        .await
        .context("the stream did not end")?;
    let ended = stream.contains("event: end\ndata: failed");
    let (status, view) = ctx.get_json(&format!("/api/v1/executions/{id}")).await?;
    let failed: Vec<Outcome> = view["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|step| step["status"] == "failed")
        .filter_map(|step| step["name"].as_str())
        .map(|name| step_failed(&view, name, "result_too_large"))
        .collect();
    let over = every(failed);
    let (page, _) = ctx
        .get_json(&format!("/api/v1/executions/{id}/events?limit=3"))
        .await?;
    Ok(Outcome {
        ok: status == 200 && over.ok && page == 200 && ended,
        seen: format!(
            "{status}; failed steps {}; page {page}; stream {}",
            over.seen,
            if ended { "ended" } else { "did not end" }
        ),
    })
}

/// A client holding a worker's NATS credentials, but not the attempt's token, reports a result
/// for A's own running step, without a token and with a guessed one: the shard refuses both
/// (`stale`) and the step keeps running.
pub async fn forged_report(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let raw = ctx
        .submit(&json!({"playbook": {"name": "forged", "steps": [
            {"name": "nap", "action": "sleep", "with": {"ms": 20_000}}
        ]}}))
        .await?;
    ctx.wait(&raw, |view| view["steps"][0]["status"] == "running")
        .await?;
    let id: ExecutionId = raw.parse().context("an execution id")?;
    let shard = noetl_contract::shard_of(id, ctx.shard_count);
    let mut acks = Vec::new();
    for token in [None, Some(AttemptToken::from_bytes([7; TOKEN_BYTES]))] {
        let now = noetl_bus::unix_now_ms();
        let report = StepReport {
            execution_id: id,
            step_index: StepIndex::new(0),
            attempt: Attempt::new(1),
            token,
            outcome: StepOutcome::Succeeded {
                result: json!({"forged": true}),
            },
            started_at_ms: now,
            finished_at_ms: now,
            worker: "stolen".to_owned(),
            item: None,
        };
        let ack: ReportAck = noetl_bus::request(
            &ctx.nats,
            subject::shard_request(ShardRequest::Result, shard, id),
            &report,
            Duration::from_secs(5),
        )
        .await
        .context("the shard did not answer the report")?;
        acks.push(ack);
    }
    let (_, view) = ctx.get_json(&format!("/api/v1/executions/{raw}")).await?;
    let still_running = view["steps"][0]["status"] == "running";
    let (status, body) = ctx
        .post_json(&format!("/api/v1/executions/{raw}/cancel"), &json!({}))
        .await?;
    anyhow::ensure!(status == 200, "cancel answered {status}: {body}");
    Ok(Outcome {
        ok: acks.iter().all(|ack| *ack == ReportAck::Stale) && still_running,
        seen: format!(
            "{acks:?}; step {}",
            view["steps"][0]["status"].as_str().unwrap_or("?")
        ),
    })
}
