//! Benchmark of noetl-dispatch on one machine, with baselines and peers measured in the same run.
//!
//! For each shard count it starts a fresh cluster ([`cluster`]) and measures:
//! - submit only: committed submits/s and latency through the gateway at each client concurrency,
//!   then at half of the peak rate;
//! - end to end ([`e2e`]): a single `noop` step, a 5-step chain and a fan-out of 10 joined by
//!   one, at each client concurrency, from the shard databases' own timestamps;
//! - CPU seconds per 1,000 executions and peak memory of every process ([`procs`]).
//!
//! Also: the parts' own ceilings ([`baselines`]), Celery and graphile-worker doing the same
//! no-op work ([`peers`]), submit and listing cost as one shard grows to millions of executions
//! ([`growth`], loaded with [`list`]'s bulk path), and the report ([`report`]): results.json,
//! results.md and PNG charts in a results directory.
//!
//! Everything runs on loopback: its own nats-server and PostgreSQL (durable: fsync and
//! synchronous_commit on, as in production), the release binaries, a private redis-server.
//! Figures are only comparable within one run: read the ratios, not the absolutes.

mod baselines;
mod children;
mod cluster;
mod e2e;
mod growth;
mod list;
mod peers;
mod procs;
mod report;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use noetl_test_support::{cargo_bin, Process};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::procs::ProcessCost;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "noetl-bench",
    about = "Throughput, latency and cost of noetl-dispatch beside raw NATS/PostgreSQL and peer dispatchers"
)]
pub struct Args {
    /// A small run that checks the harness end to end in well under 3 minutes (not a speed).
    #[arg(long)]
    quick: bool,
    /// Shard counts to measure, each on a fresh cluster (one PostgreSQL, a database per shard).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    shards: Vec<u32>,
    /// Client concurrencies of the sweep: requests in flight at once.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Worker concurrencies: steps run at once by the one worker process. The end-to-end
    /// scenarios run at each (the worker is restarted between them); the peers run at the
    /// highest, and are compared with our runs at that one.
    #[arg(long, value_delimiter = ',', default_value = "2,64")]
    worker_concurrency: Vec<usize>,
    /// Length of each time-boxed phase (submit only, baselines, growth).
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Unmeasured submits before the first measured phase of a cluster.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Executions per end-to-end run of a single step (chains run a fifth, fan-outs a tenth): at
    /// 64 clients 10,000 take a few seconds, long enough that the first second's ramp and
    /// `/proc`'s 10 ms CPU ticks weigh little.
    #[arg(long, default_value_t = 10_000)]
    e2e_executions: usize,
    /// Stored executions in one shard at which growth is measured; the flag without a value
    /// skips growth.
    #[arg(long, value_delimiter = ',', default_value = "0,1000000,2500000,5000000", num_args = 0..)]
    growth_checkpoints: Vec<usize>,
    /// Submitting clients during growth.
    #[arg(long, default_value_t = 16)]
    growth_concurrency: usize,
    /// Executions loaded into each shard of the last cluster before measuring the listing; 0
    /// skips it.
    #[arg(long, default_value_t = 0)]
    list_rows_per_shard: usize,
    /// Clients reading the first page at once.
    #[arg(long, default_value_t = 4)]
    list_concurrency: usize,
    /// Do not install or run Celery and graphile-worker.
    #[arg(long)]
    skip_peers: bool,
    /// Tasks per peer run (default: as many as the single-step end-to-end run).
    #[arg(long)]
    peer_executions: Option<usize>,
    /// Where the peers are installed (a Python venv, node_modules).
    #[arg(long, default_value = ".state/bench")]
    state_dir: PathBuf,
    /// Where results go (default: <state-dir>/results/<UTC timestamp>).
    #[arg(long)]
    results_dir: Option<PathBuf>,
    /// PostgreSQL with fsync off (faster, not what production runs).
    #[arg(long)]
    relaxed_durability: bool,
}

impl Args {
    /// `--quick` replaces the sizes with tiny ones.
    fn effective(mut self) -> Self {
        if self.quick {
            self.shards = vec![1, 2];
            self.concurrency = vec![1, 8];
            self.worker_concurrency = vec![2, 8];
            self.seconds = 1;
            self.warmup_seconds = 1;
            self.e2e_executions = 50;
            self.growth_checkpoints = vec![0, 20_000];
            self.growth_concurrency = 4;
            self.list_rows_per_shard = 0;
            self.peer_executions = Some(50);
        }
        // Ascending, so the worker restarts with more slots each time and the last (the peers')
        // is the highest.
        self.worker_concurrency.sort_unstable();
        self.worker_concurrency.dedup();
        self
    }

    /// The worker concurrency the peers run at: the highest measured.
    pub(crate) fn peer_worker_concurrency(&self) -> usize {
        self.worker_concurrency.last().copied().unwrap_or(1)
    }
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: histogram.max() as f64 / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub operations: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub latency: Percentiles,
}

/// A submit-only phase of one cluster.
#[derive(Debug, Serialize)]
pub struct SubmitRun {
    pub shards: u32,
    pub client_concurrency: usize,
    /// Submits/s the clients were paced to, when they were.
    pub target_rate: Option<f64>,
    pub phase: Phase,
    pub cpu: Vec<ProcessCost>,
    pub cpu_seconds_per_1000_total: f64,
}

#[derive(Debug, Serialize)]
pub struct ClusterMemory {
    pub shards: u32,
    pub mean_commit_batch: Option<f64>,
    pub peak: Vec<procs::PeakMemory>,
}

/// Runs `operation` from `concurrency` tasks for `duration`; counts successes and records
/// the latency of each in microseconds. With a `rate`, the tasks together start at most that
/// many operations per second (each on its own schedule), else each starts the next as soon as
/// the last ends.
pub async fn load<F, Fut>(
    name: &str,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
    operation: F,
) -> Phase
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let operation = Arc::new(operation);
    let started = Instant::now();
    let deadline = started + duration;
    let period = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r.max(1e-3)));
    let workers = (0..concurrency).map(|i| {
        let operation = operation.clone();
        tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut errors = 0u64;
            let mut pacing = period.map(|p| {
                // Spread the tasks' schedules over one period.
                let offset = p.mul_f64(i as f64 / concurrency as f64);
                let mut interval =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, p);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
            while Instant::now() < deadline {
                if let Some(interval) = pacing.as_mut() {
                    interval.tick().await;
                }
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
    Phase {
        name: name.to_owned(),
        operations: histogram.len(),
        errors,
        seconds,
        per_second: histogram.len() as f64 / seconds,
        latency: Percentiles::of(&histogram),
    }
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

/// A submit whose step runs in a pool no worker serves: submit-only phases measure submits, and
/// their commands never queue ahead of the end-to-end scenarios'.
fn submit_only_body() -> anyhow::Result<Bytes> {
    Ok(Bytes::from(serde_json::to_vec(&serde_json::json!({
        "playbook": {"name": "bench", "steps": [{"name": "a", "action": "noop", "pool": "submit-only"}]},
        "input": {"n": 1},
        "labels": {"bench": "submit"}
    }))?))
}

pub(crate) fn submitter(
    http: &reqwest::Client,
    gateway: &str,
    body: Bytes,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> + Clone + Send + Sync + 'static
{
    let (http, url) = (http.clone(), format!("{gateway}/api/v1/executions"));
    move || {
        let request = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        Box::pin(async move { matches!(request.send().await, Ok(r) if r.status().as_u16() == 201) })
    }
}

/// A submit-only phase with the CPU every process spent on it.
pub(crate) async fn submit_run(
    cluster: &Cluster,
    http: &reqwest::Client,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
) -> anyhow::Result<SubmitRun> {
    let name = match rate {
        Some(r) => format!("submit, paced to {r:.0}/s"),
        None => "submit (committed)".to_owned(),
    };
    eprintln!(
        "{name}: {} shard(s), {concurrency} client(s), {} s…",
        cluster.shards,
        duration.as_secs()
    );
    let before = cluster.watched.snapshot();
    let phase = load(
        &name,
        concurrency,
        duration,
        rate,
        submitter(http, &cluster.gateway, submit_only_body()?),
    )
    .await;
    let cpu = cluster
        .watched
        .snapshot()
        .cost_since(&before, phase.operations);
    Ok(SubmitRun {
        shards: cluster.shards,
        client_concurrency: concurrency,
        target_rate: rate,
        cpu_seconds_per_1000_total: procs::total_per_1000(&cpu),
        phase,
        cpu,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse().effective();
    anyhow::ensure!(
        !args.shards.is_empty()
            && args.shards.iter().all(|&s| s >= 1)
            && !args.concurrency.is_empty()
            && args.concurrency.iter().all(|&c| c >= 1)
            && args.seconds >= 1
            && !args.worker_concurrency.is_empty()
            && args.worker_concurrency.iter().all(|&w| w >= 1),
        "shards, concurrencies, worker concurrency and seconds must be positive"
    );
    let results_dir = args.results_dir.clone().unwrap_or_else(|| {
        args.state_dir
            .join("results")
            .join(report::timestamp_for_path())
    });
    std::fs::create_dir_all(&results_dir)
        .with_context(|| format!("creating {}", results_dir.display()))?;
    let started = Instant::now();
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(max_concurrency.max(args.growth_concurrency))
        .build()?;
    let duration = Duration::from_secs(args.seconds);
    let peers_installed = if args.skip_peers {
        Err("skipped: --skip-peers".to_owned())
    } else {
        peers::install(&args.state_dir.join("peers")).await
    };

    let mut results = report::Results::new(&args);
    for (index, &shards) in args.shards.iter().enumerate() {
        let mut cluster = Cluster::start(
            &http,
            shards,
            args.worker_concurrency[0],
            !args.relaxed_durability,
        )
        .await?;
        load(
            "warm-up",
            max_concurrency,
            Duration::from_secs(args.warmup_seconds),
            None,
            submitter(&http, &cluster.gateway, submit_only_body()?),
        )
        .await;
        if index == 0 {
            let pool = cluster.side_database("bench_baseline")?;
            results.baselines = Some(
                baselines::run(
                    cluster.nats.url(),
                    &pool,
                    submit_only_body()?,
                    max_concurrency,
                    duration,
                )
                .await?,
            );
            pool.close().await;
        }
        let mut peak: f64 = 0.0;
        for &concurrency in &args.concurrency {
            let run = submit_run(&cluster, &http, concurrency, duration, None).await?;
            peak = peak.max(run.phase.per_second);
            results.submit.push(run);
        }
        results
            .submit
            .push(submit_run(&cluster, &http, max_concurrency, duration, Some(peak / 2.0)).await?);
        for &workers in &args.worker_concurrency {
            cluster.worker_concurrency(&http, workers).await?;
            for kind in e2e::Kind::ALL {
                let executions = match kind {
                    e2e::Kind::Single => args.e2e_executions,
                    e2e::Kind::Chain5 => args.e2e_executions / 5,
                    e2e::Kind::FanOut10 => args.e2e_executions / 10,
                    e2e::Kind::Child1 => args.e2e_executions / 10,
                }
                .max(1);
                for &concurrency in &args.concurrency {
                    results.e2e.push(
                        e2e::run(&cluster, &http, kind, concurrency, workers, executions).await?,
                    );
                }
            }
        }
        if index == 0 {
            results.peers = Some(match &peers_installed {
                Ok(installed) => {
                    peers::run(
                        installed,
                        &cluster,
                        &args.concurrency,
                        args.peer_worker_concurrency(),
                        args.peer_executions.unwrap_or(args.e2e_executions),
                    )
                    .await
                }
                Err(reason) => peers::Peers::skipped(reason),
            });
        }
        if index + 1 == args.shards.len() && args.list_rows_per_shard > 0 {
            results.list = Some(
                list::run(
                    &http,
                    &cluster.gateway,
                    &cluster.pools,
                    args.list_rows_per_shard,
                    args.list_concurrency,
                    duration,
                )
                .await?,
            );
        }
        let metrics = http
            .get(&cluster.server_metrics)
            .send()
            .await?
            .text()
            .await?;
        results.memory.push(ClusterMemory {
            shards,
            mean_commit_batch: mean_batch(&metrics),
            peak: cluster.watched.peak_memory(),
        });
    }
    if !args.growth_checkpoints.is_empty() {
        let cluster = Cluster::start(
            &http,
            1,
            args.peer_worker_concurrency(),
            !args.relaxed_durability,
        )
        .await?;
        results.growth = Some(
            growth::run(
                &cluster,
                &http,
                &args.growth_checkpoints,
                args.growth_concurrency,
                args.list_concurrency,
                duration,
            )
            .await?,
        );
    }
    results.total_seconds = started.elapsed().as_secs_f64();
    let charts = peers_installed.as_ref().ok().map(|i| i.python.clone());
    report::write(&results_dir, &mut results, charts.as_deref())?;
    println!(
        "{}",
        std::fs::read_to_string(results_dir.join("results.md"))?
    );
    eprintln!(
        "results in {} ({:.0} s)",
        results_dir.display(),
        results.total_seconds
    );
    Ok(())
}
