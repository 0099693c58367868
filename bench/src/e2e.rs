//! End-to-end scenarios: submit executions through the gateway as fast as `submit_concurrency`
//! clients can, let one worker (with a given concurrency) run them, and measure from the shard
//! databases' own timestamps, so the measurement adds no load: executions/s from the first
//! submit to the last terminal state, submit-to-terminal latency (`updated_at - created_at` of
//! each execution) and dispatch latency (first step's `started_at - created_at`: commit, outbox,
//! relay, JetStream, worker pull, first heartbeat).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use noetl_test_support::{free_port, Postgres};
use serde::Serialize;
use sqlx::PgPool;

/// What every scenario shares.
pub struct Setup<'a> {
    pub http: &'a reqwest::Client,
    pub gateway: &'a str,
    pub nats_url: &'a str,
    pub pg: &'a Postgres,
    pub shards: u32,
    pub submit_concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct Scenario {
    pub name: String,
    pub submit_concurrency: usize,
    pub worker_concurrency: usize,
    pub executions: usize,
    pub failed: i64,
    pub seconds: f64,
    pub executions_per_second: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub dispatch_p50_ms: f64,
    pub dispatch_p99_ms: f64,
    /// First step: first heartbeat → result recorded (the action plus the report round trip).
    pub step_p50_ms: f64,
}

const DEADLINE: Duration = Duration::from_secs(600);
/// Executions of the light scenario: one submit at a time, so no backlog forms and dispatch
/// latency is the pipeline's own (commit → outbox → relay → JetStream → worker).
const LIGHT_EXECUTIONS: usize = 200;

/// How hard a scenario pushes.
#[derive(Debug, Clone, Copy)]
struct Load {
    submit_concurrency: usize,
    executions: usize,
}

/// Runs the single-step and the 5-step scenarios with one worker of `workers` concurrency.
pub async fn run(
    setup: &Setup<'_>,
    workers: usize,
    executions: usize,
) -> anyhow::Result<Vec<Scenario>> {
    let port = free_port();
    let _worker = crate::spawn(
        "noetl-worker",
        &[
            ("NOETL_NATS_URL", setup.nats_url.to_owned()),
            ("NOETL_LISTEN", format!("127.0.0.1:{port}")),
            ("NOETL_CONCURRENCY", workers.to_string()),
        ],
    );
    crate::wait_ready(setup.http, &format!("http://127.0.0.1:{port}/readyz"))
        .await
        .context("the worker")?;
    let light = Load {
        submit_concurrency: 1,
        executions: LIGHT_EXECUTIONS,
    };
    let heavy = Load {
        submit_concurrency: setup.submit_concurrency,
        executions,
    };
    let chain = Load {
        executions: (executions / 5).max(1),
        ..heavy
    };
    Ok(vec![
        scenario(setup, workers, "noop-1-light", 1, light).await?,
        scenario(setup, workers, "noop-1", 1, heavy).await?,
        scenario(setup, workers, "noop-chain-5", 5, chain).await?,
    ])
}

fn body(name: &str, steps: usize) -> anyhow::Result<Bytes> {
    let steps: Vec<serde_json::Value> = (0..steps)
        .map(|i| {
            let needs: Vec<String> = if i == 0 {
                vec![]
            } else {
                vec![format!("s{}", i - 1)]
            };
            serde_json::json!({"name": format!("s{i}"), "action": "noop", "needs": needs})
        })
        .collect();
    Ok(Bytes::from(serde_json::to_vec(
        &serde_json::json!({"playbook": {"name": name, "steps": steps}}),
    )?))
}

async fn scenario(
    setup: &Setup<'_>,
    workers: usize,
    kind: &str,
    steps: usize,
    load: Load,
) -> anyhow::Result<Scenario> {
    let executions = load.executions;
    // A playbook name per run, so the databases tell this scenario's executions apart.
    let name = format!("{kind}-w{workers}");
    eprintln!(
        "end to end: {executions} × {name} ({steps} step(s)), {} submitting, worker concurrency {workers}…",
        load.submit_concurrency
    );
    let body = body(&name, steps)?;
    let url = format!("{}/api/v1/executions", setup.gateway);
    let started = Instant::now();
    let submitted = futures::stream::iter(0..executions)
        .map(|_| {
            let request = setup
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone());
            async move { matches!(request.send().await, Ok(r) if r.status().as_u16() == 201) }
        })
        .buffer_unordered(load.submit_concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    if submitted != executions {
        bail!("only {submitted} of {executions} submits were accepted");
    }
    let pools: Vec<PgPool> = (0..setup.shards)
        .map(|i| PgPool::connect_lazy(&setup.pg.url(&format!("bench_{i}"))))
        .collect::<Result<_, _>>()?;
    loop {
        let mut terminal = 0;
        for pool in &pools {
            terminal += sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM executions WHERE playbook_name = $1
                 AND status IN ('succeeded', 'failed', 'cancelled')",
            )
            .bind(&name)
            .fetch_one(pool)
            .await?;
        }
        if terminal as usize >= executions {
            break;
        }
        if started.elapsed() > DEADLINE {
            bail!("{name}: only {terminal} of {executions} executions ended within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut e2e = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut dispatch = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut step = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut failed = 0;
    for pool in &pools {
        let rows: Vec<(f64, Option<f64>, Option<f64>, String)> = sqlx::query_as(
            "SELECT EXTRACT(EPOCH FROM (e.updated_at - e.created_at))::float8 * 1e6,
                    EXTRACT(EPOCH FROM (s.started_at - e.created_at))::float8 * 1e6,
                    EXTRACT(EPOCH FROM (s.finished_at - s.started_at))::float8 * 1e6,
                    e.status
             FROM executions e JOIN execution_steps s
               ON s.execution_id = e.execution_id AND s.step_index = 0
             WHERE e.playbook_name = $1",
        )
        .bind(&name)
        .fetch_all(pool)
        .await?;
        for (total_us, dispatch_us, step_us, status) in rows {
            e2e.saturating_record(total_us.max(1.0) as u64);
            if let Some(us) = dispatch_us {
                dispatch.saturating_record(us.max(1.0) as u64);
            }
            if let Some(us) = step_us {
                step.saturating_record(us.max(1.0) as u64);
            }
            if status != "succeeded" {
                failed += 1;
            }
        }
        pool.close().await;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Scenario {
        name,
        submit_concurrency: load.submit_concurrency,
        worker_concurrency: workers,
        executions,
        failed,
        seconds,
        executions_per_second: executions as f64 / seconds,
        e2e_p50_ms: ms(&e2e, 0.5),
        e2e_p99_ms: ms(&e2e, 0.99),
        dispatch_p50_ms: ms(&dispatch, 0.5),
        dispatch_p99_ms: ms(&dispatch, 0.99),
        step_p50_ms: ms(&step, 0.5),
    })
}

pub fn print_table(scenarios: &[Scenario]) {
    if scenarios.is_empty() {
        return;
    }
    println!("\nend to end (submit → terminal), measured from the shard databases:");
    println!(
        "| {:<18} | {:>7} | {:>6} | {:>10} | {:>10} | {:>10} | {:>12} | {:>12} | {:>9} | {:>6} |",
        "scenario",
        "workers",
        "execs",
        "execs/s",
        "e2e p50",
        "e2e p99",
        "dispatch p50",
        "dispatch p99",
        "step p50",
        "failed"
    );
    println!(
        "|{:-<20}|{:->9}|{:->8}|{:->12}|{:->12}|{:->12}|{:->14}|{:->14}|{:->11}|{:->8}|",
        "", "", "", "", "", "", "", "", "", ""
    );
    for s in scenarios {
        println!(
            "| {:<18} | {:>7} | {:>6} | {:>10.0} | {:>7.1} ms | {:>7.1} ms | {:>9.2} ms | {:>9.2} ms | {:>6.2} ms | {:>6} |",
            s.name, s.worker_concurrency, s.executions, s.executions_per_second, s.e2e_p50_ms, s.e2e_p99_ms,
            s.dispatch_p50_ms, s.dispatch_p99_ms, s.step_p50_ms, s.failed
        );
    }
}
