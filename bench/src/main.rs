//! Benchmark of noetl-dispatch on one machine, with baselines measured in the same run.
//!
//! - Submit: committed submits/s and submit latency through the gateway, beside the raw NATS
//!   request/reply rate.
//! - End to end ([`e2e`]): executions/s from submit to terminal state for a single `noop` step and a
//!   5-step chain, submit-to-terminal latency and dispatch latency (command committed → worker
//!   started), at several worker concurrencies.
//! - Listing ([`list`]): first-page latency of `GET /api/v1/executions` with every shard holding
//!   `--list-rows-per-shard` executions.
//!
//! Starts its own nats-server and PostgreSQL (durable: fsync and synchronous_commit on, as in
//! production) and the release `noetl-server`, `noetl-gateway` and `noetl-worker` binaries.
//! Figures are only comparable within one run: report ratios, not absolutes.

mod e2e;
mod list;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use noetl_test_support::{cargo_bin, free_port, NatsServer, Postgres, PostgresOptions, Process};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "noetl-bench",
    about = "Submit throughput and latency through the gateway"
)]
struct Args {
    /// Shard databases (one PostgreSQL instance, one database per shard).
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of each measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured load before the measured phase (connections, caches, JIT of the planner).
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// PostgreSQL with fsync off (faster, not what production runs).
    #[arg(long)]
    relaxed_durability: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Worker concurrencies for the end-to-end scenarios (comma-separated); the flag without a
    /// value skips them.
    #[arg(long, value_delimiter = ',', default_value = "2,64", num_args = 0..)]
    worker_concurrency: Vec<usize>,
    /// Executions per end-to-end scenario (the 5-step chain runs a fifth as many).
    #[arg(long, default_value_t = 2_000)]
    e2e_executions: usize,
    /// Executions loaded into each shard before measuring the listing; 0 skips it.
    #[arg(long, default_value_t = 0)]
    list_rows_per_shard: usize,
    /// Clients reading the first page at once.
    #[arg(long, default_value_t = 4)]
    list_concurrency: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct Phase {
    name: String,
    operations: u64,
    errors: u64,
    seconds: f64,
    per_second: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    shards: u32,
    concurrency: usize,
    durable_postgres: bool,
    phases: Vec<Phase>,
    submit_to_nats_ratio: f64,
    mean_commit_batch: Option<f64>,
    end_to_end: Vec<e2e::Scenario>,
    list: Option<list::ListReport>,
}

/// Runs `operation` from `concurrency` tasks for `duration`; counts successes and records
/// the latency of each in microseconds.
pub(crate) async fn load<F, Fut>(
    name: &str,
    concurrency: usize,
    duration: Duration,
    operation: F,
) -> Phase
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let operation = Arc::new(operation);
    let started = Instant::now();
    let deadline = started + duration;
    let workers = (0..concurrency).map(|_| {
        let operation = operation.clone();
        tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                if operation().await {
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    histogram.saturating_record(micros.max(1));
                } else {
                    errors += 1;
                }
            }
            (histogram, errors)
        })
    });
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut errors = 0;
    for worker in futures::future::join_all(workers).await {
        let (h, e) = worker.expect("load worker");
        histogram.add(h).expect("same bounds");
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Phase {
        name: name.to_owned(),
        operations: histogram.len(),
        errors,
        seconds,
        per_second: histogram.len() as f64 / seconds,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
    }
}

/// Raw NATS request/reply with a payload the size of a submit: the bus's own ceiling here.
async fn nats_baseline(
    url: &str,
    payload: Bytes,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let responder = async_nats::connect(url).await?;
    let mut requests = responder.subscribe("bench.echo").await?;
    responder.flush().await?;
    let echo = tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let _ = responder
                    .publish(reply, Bytes::from_static(b"{\"ok\":{}}"))
                    .await;
            }
        }
    });
    let requester = async_nats::connect(url).await?;
    let phase = load("raw NATS request/reply", concurrency, duration, move || {
        let (requester, payload) = (requester.clone(), payload.clone());
        async move { requester.request("bench.echo", payload).await.is_ok() }
    })
    .await;
    echo.abort();
    Ok(phase)
}

pub(crate) async fn wait_ready(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} never became ready")
}

/// Mean group-commit batch size, from the server's Prometheus summary.
fn mean_batch(metrics: &str) -> Option<f64> {
    let total = |suffix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("noetl_server_commit_batch_size_{suffix}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let count = total("count");
    (count > 0.0).then(|| total("sum") / count)
}

pub(crate) fn spawn(binary: &str, envs: &[(&str, String)]) -> Process {
    let mut command = Command::new(cargo_bin(binary));
    command
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    Process::spawn(command)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.shards >= 1 && args.concurrency >= 1 && args.seconds >= 1,
        "shards, concurrency and seconds must be positive"
    );
    eprintln!(
        "starting nats-server, PostgreSQL ({} shards), noetl-server and noetl-gateway…",
        args.shards
    );
    let nats = NatsServer::start();
    let pg = Postgres::start_with(PostgresOptions {
        durable: !args.relaxed_durability,
    });
    let shards = pg.create_shards("bench", args.shards);
    let (server_port, gateway_port) = (free_port(), free_port());
    let _server = spawn(
        "noetl-server",
        &[
            ("NOETL_NATS_URL", nats.url().to_owned()),
            ("NOETL_SHARDS", shards),
            ("NOETL_LISTEN", format!("127.0.0.1:{server_port}")),
        ],
    );
    let _gateway = spawn(
        "noetl-gateway",
        &[
            ("NOETL_NATS_URL", nats.url().to_owned()),
            ("NOETL_LISTEN", format!("127.0.0.1:{gateway_port}")),
        ],
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    wait_ready(&http, &format!("{gateway}/readyz"))
        .await
        .context("the gateway")?;

    let body = Bytes::from(serde_json::to_vec(&serde_json::json!({
        // A pool no worker serves: the submit phase measures submits, and its commands must
        // not queue ahead of the end-to-end scenarios'.
        "playbook": {"name": "bench", "steps": [{"name": "a", "action": "noop", "pool": "submit-only"}]},
        "input": {"n": 1},
        "labels": {"bench": "submit"}
    }))?);
    let submit = {
        let (http, url, body) = (
            http.clone(),
            format!("{gateway}/api/v1/executions"),
            body.clone(),
        );
        move || {
            let request = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone());
            async move { matches!(request.send().await, Ok(r) if r.status().as_u16() == 201) }
        }
    };
    let duration = Duration::from_secs(args.seconds);
    eprintln!("warming up for {} s…", args.warmup_seconds);
    load(
        "warm-up",
        args.concurrency,
        Duration::from_secs(args.warmup_seconds),
        submit.clone(),
    )
    .await;
    eprintln!("measuring raw NATS request/reply for {} s…", args.seconds);
    let nats_phase = nats_baseline(nats.url(), body.clone(), args.concurrency, duration).await?;
    eprintln!(
        "measuring committed submits through the gateway for {} s…",
        args.seconds
    );
    let submit_phase = load(
        "gateway submit (committed)",
        args.concurrency,
        duration,
        submit,
    )
    .await;

    let metrics = http
        .get(format!("http://127.0.0.1:{server_port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut end_to_end = Vec::new();
    for &workers in &args.worker_concurrency {
        let setup = e2e::Setup {
            http: &http,
            gateway: &gateway,
            nats_url: nats.url(),
            pg: &pg,
            shards: args.shards,
            submit_concurrency: args.concurrency,
        };
        end_to_end.extend(e2e::run(&setup, workers, args.e2e_executions).await?);
    }
    let list = if args.list_rows_per_shard > 0 {
        let pools: Vec<sqlx::PgPool> = (0..args.shards)
            .map(|i| sqlx::PgPool::connect_lazy(&pg.url(&format!("bench_{i}"))))
            .collect::<Result<_, _>>()?;
        Some(
            list::run(
                &http,
                &gateway,
                &pools,
                args.list_rows_per_shard,
                args.list_concurrency,
                duration,
            )
            .await?,
        )
    } else {
        None
    };
    let report = Report {
        shards: args.shards,
        concurrency: args.concurrency,
        durable_postgres: !args.relaxed_durability,
        submit_to_nats_ratio: submit_phase.per_second / nats_phase.per_second,
        phases: vec![nats_phase, submit_phase],
        mean_commit_batch: mean_batch(&metrics),
        end_to_end,
        list,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_table(report: &Report) {
    println!(
        "\n{} shards, concurrency {}, PostgreSQL durable: {}",
        report.shards, report.concurrency, report.durable_postgres
    );
    println!(
        "| {:<28} | {:>10} | {:>8} | {:>8} | {:>8} | {:>8} | {:>7} |",
        "phase", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
    );
    println!(
        "|{:-<30}|{:->12}|{:->10}|{:->10}|{:->10}|{:->10}|{:->9}|",
        "", "", "", "", "", "", ""
    );
    for p in &report.phases {
        println!(
            "| {:<28} | {:>10.0} | {:>8.2} | {:>8.2} | {:>8.2} | {:>8.2} | {:>7} |",
            p.name, p.per_second, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms, p.errors
        );
    }
    println!(
        "\ncommitted submits / raw NATS request-reply = {:.2}",
        report.submit_to_nats_ratio
    );
    if let Some(batch) = report.mean_commit_batch {
        println!("mean group-commit batch: {batch:.1} executions per transaction");
    }
    e2e::print_table(&report.end_to_end);
    if let Some(list) = &report.list {
        println!(
            "\nlisting, {} executions per shard (loaded in {:.0} s):",
            list.rows_per_shard, list.load_seconds
        );
        for p in &list.phases {
            println!(
                "| {:<32} | {:>8.0}/s | p50 {:>7.2} ms | p99 {:>7.2} ms | max {:>7.2} ms | errors {} |",
                p.name, p.per_second, p.p50_ms, p.p99_ms, p.max_ms, p.errors
            );
        }
    }
}
