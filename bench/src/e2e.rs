//! End-to-end scenarios: submit executions through the gateway from `client_concurrency`
//! clients, let the cluster's worker run them, and measure from the shard databases' own
//! timestamps, so the measurement adds next to no load (waiting for the end counts only the
//! executions still in flight): executions/s from the first submit to the last
//! terminal state, submit-to-terminal latency (`updated_at - created_at` of each execution) and
//! dispatch latency (command committed → worker started: from the commit of the submit's
//! transaction, `pg_xact_commit_timestamp` of its first event row, to the first step's
//! `started_at`, when the worker started its action, by the worker's clock: handoff to the
//! relay, JetStream, worker pull, and for an action with effects the starting check; `noop`
//! has none). For `child-1` the dispatch latency is the child's ([`children::dispatch`]).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use noetl_contract::message::DEFAULT_TENANT;
use serde::Serialize;

use crate::children;
use crate::cluster::Cluster;
use crate::procs::{self, ProcessCost};
use crate::Percentiles;

/// The playbooks: every step a `noop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One step.
    Single,
    /// Five steps, each needing the one before.
    Chain5,
    /// Ten independent steps, then one that needs all ten.
    FanOut10,
    /// One `playbook` step whose child (a playbook of one step) runs on the shard its id
    /// routes to: the other one half the time with two shards.
    Child1,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Single, Kind::Chain5, Kind::FanOut10, Kind::Child1];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Single => "noop-1",
            Kind::Chain5 => "chain-5",
            Kind::FanOut10 => "fan-out-10",
            Kind::Child1 => "child-1",
        }
    }

    pub fn steps(self) -> usize {
        match self {
            Kind::Single => 1,
            Kind::Chain5 => 5,
            Kind::FanOut10 => 11,
            Kind::Child1 => 1,
        }
    }

    fn playbook(self, name: &str) -> serde_json::Value {
        let step = |name: String, needs: Vec<String>| serde_json::json!({"name": name, "action": "noop", "needs": needs});
        let steps: Vec<serde_json::Value> = match self {
            Kind::Single => vec![step("s0".into(), vec![])],
            Kind::Chain5 => (0..5)
                .map(|i| {
                    let needs = if i == 0 {
                        vec![]
                    } else {
                        vec![format!("s{}", i - 1)]
                    };
                    step(format!("s{i}"), needs)
                })
                .collect(),
            Kind::FanOut10 => (0..10)
                .map(|i| step(format!("s{i}"), vec![]))
                .chain([step(
                    "join".into(),
                    (0..10).map(|i| format!("s{i}")).collect(),
                )])
                .collect(),
            Kind::Child1 => vec![
                serde_json::json!({"name": "s0", "action": "playbook", "with": {
                    "playbook": {"name": children::child_name(name), "steps": [step("s0".into(), vec![])]}
                }}),
            ],
        };
        serde_json::json!({"playbook": {"name": name, "steps": steps}})
    }
}

#[derive(Debug, Serialize)]
pub struct Scenario {
    pub name: String,
    pub shards: u32,
    pub client_concurrency: usize,
    pub worker_concurrency: usize,
    pub executions: usize,
    pub steps_per_execution: usize,
    pub failed: i64,
    pub seconds: f64,
    pub executions_per_second: f64,
    /// Submit to terminal state.
    pub e2e: Percentiles,
    /// Submit's commit to the first step's start.
    pub dispatch: Percentiles,
    /// First step: start → result recorded (the action plus the report round trip).
    pub step_p50_ms: f64,
    pub cpu: Vec<ProcessCost>,
    pub cpu_seconds_per_1000_total: f64,
}

/// One execution, timed by its shard database (microseconds; end in Unix seconds).
#[derive(Debug, sqlx::FromRow)]
struct Timing {
    total_us: f64,
    dispatch_us: Option<f64>,
    step_us: Option<f64>,
    status: String,
    ended: f64,
}

const DEADLINE: Duration = Duration::from_secs(600);

fn unix_seconds_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub async fn run(
    cluster: &Cluster,
    http: &reqwest::Client,
    kind: Kind,
    client_concurrency: usize,
    worker_concurrency: usize,
    executions: usize,
) -> anyhow::Result<Scenario> {
    // A playbook name per run, so the databases tell this scenario's executions apart.
    let name = format!(
        "{}-s{}-w{worker_concurrency}-c{client_concurrency}",
        kind.name(),
        cluster.shards
    );
    eprintln!(
        "end to end: {executions} × {name}, {client_concurrency} client(s), worker concurrency {worker_concurrency}…"
    );
    let body = Bytes::from(serde_json::to_vec(&kind.playbook(&name))?);
    let url = format!("{}/api/v1/executions", cluster.gateway);
    let cpu_before = cluster.watched.snapshot();
    let started = Instant::now();
    let started_unix = unix_seconds_now();
    let submitted = futures::stream::iter(0..executions)
        .map(|_| {
            let request = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone());
            async move { matches!(request.send().await, Ok(r) if r.status().as_u16() == 201) }
        })
        .buffer_unordered(client_concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    if submitted != executions {
        bail!("only {submitted} of {executions} submits were accepted");
    }
    loop {
        // Every submit was committed, so what is not pending or running has ended. Counted
        // through the status index, this reads only the executions still in flight; a count of
        // the terminal ones would scan every execution of every phase so far, 20 times a second,
        // and that load would be charged to PostgreSQL's CPU per execution.
        let mut unfinished = 0;
        for pool in &cluster.pools {
            unfinished += sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM executions
                 WHERE tenant = $1 AND status IN ('pending', 'running') AND playbook_name = $2",
            )
            .bind(DEFAULT_TENANT)
            .bind(&name)
            .fetch_one(pool)
            .await?;
        }
        if unfinished == 0 {
            break;
        }
        if started.elapsed() > DEADLINE {
            bail!(
                "{name}: {unfinished} of {executions} executions had not ended within {DEADLINE:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = cluster
        .watched
        .snapshot()
        .cost_since(&cpu_before, executions as u64);
    let mut e2e = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut dispatch = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut step = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut failed = 0;
    // The last terminal state as the database recorded it, not when polling noticed it.
    let mut last_end = started_unix;
    for pool in &cluster.pools {
        let rows: Vec<Timing> = sqlx::query_as(
            "SELECT EXTRACT(EPOCH FROM (e.updated_at - e.created_at))::float8 * 1e6 AS total_us,
                    EXTRACT(EPOCH FROM (s.started_at - pg_xact_commit_timestamp(ev.xmin)))::float8
                        * 1e6 AS dispatch_us,
                    EXTRACT(EPOCH FROM (s.finished_at - s.started_at))::float8 * 1e6 AS step_us,
                    e.status,
                    EXTRACT(EPOCH FROM e.updated_at)::float8 AS ended
             FROM executions e JOIN execution_steps s
               ON s.execution_id = e.execution_id AND s.step_index = 0
             -- Written by the submit's transaction and never updated, so its xmin is that
             -- transaction's.
             JOIN execution_events ev ON ev.execution_id = e.execution_id AND ev.seq = 1
             WHERE e.playbook_name = $1",
        )
        .bind(&name)
        .fetch_all(pool)
        .await?;
        for Timing {
            total_us,
            dispatch_us,
            step_us,
            status,
            ended,
        } in rows
        {
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
            last_end = last_end.max(ended);
        }
    }
    if kind == Kind::Child1 {
        // The parent's step has no worker: what counts is how soon its child's first step
        // starts after the parent's submit committed the child's start.
        dispatch = children::dispatch(cluster, &name).await?;
    }
    let seconds = (last_end - started_unix).max(1e-3);
    Ok(Scenario {
        name: kind.name().to_owned(),
        shards: cluster.shards,
        client_concurrency,
        worker_concurrency,
        executions,
        steps_per_execution: kind.steps(),
        failed,
        seconds,
        executions_per_second: executions as f64 / seconds,
        e2e: Percentiles::of(&e2e),
        dispatch: Percentiles::of(&dispatch),
        step_p50_ms: step.value_at_quantile(0.5) as f64 / 1000.0,
        cpu_seconds_per_1000_total: procs::total_per_1000(&cpu),
        cpu,
    })
}
