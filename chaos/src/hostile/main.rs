//! `noetl-hostile`: the hostile-input suite of issue 27. One cluster of real processes
//! (nats-server, PostgreSQL, a server, a worker, a gateway with API tokens for two tenants);
//! tenant B runs a steady load while tenant A tries every attack of [`attacks::ALL`], one at a
//! time. Each row checks that the attack got its documented outcome, that B saw no error and no
//! p99 above its bound, that no process restarted and that each stayed under a memory bound.
//! See `wiki/limits.md`, "The hostile-input suite".
//!
//! - [`attacks`]: the rows.
//! - [`load`]: tenant B's steady load and its latencies, with where each execution's time went
//!   (its timestamps, and [`tap`]'s: when its command was published, its report sent).
//! - [`window`]: the windows B's load is measured in, and [`probe`], the control probe that
//!   tells a stall of the host from one of the processes under test.
//! - [`watch`]: resident memory and liveness of the processes.
//! - [`web`]: the local HTTP target of the `http` steps.
//! - [`report`]: the table, printed and written as markdown and JSON.

mod attacks;
mod load;
mod probe;
mod report;
mod tap;
mod watch;
mod web;
mod window;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use noetl_chaos::cluster::{Cluster, Spec, Timing};
use noetl_chaos::now_ms;

use crate::attacks::{Attack, Ctx, GatewayBounds, TOKEN_A, TOKEN_B};
use crate::load::Steady;
use crate::probe::Probe;
use crate::report::{Bounds, Report, Row};
use crate::tap::Tap;
use crate::watch::{Memory, Watched};
use crate::window::{millis, Span};

#[derive(Debug, Parser)]
#[command(
    name = "noetl-hostile",
    about = "Hostile input from one tenant while another runs a steady load"
)]
struct Args {
    /// Tenant B's executions per second.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// B's load alone before the attacks, measured for its baseline p99 (seconds).
    #[arg(long, default_value_t = 5)]
    baseline_secs: u64,
    /// Shortest window of B's load measured per attack (seconds); longer if the attack is, or
    /// until B submitted `--min-samples` executions in it.
    #[arg(long, default_value_t = 3)]
    window_secs: u64,
    /// B's executions every window (the baseline's too) holds at least: 100, so that the p99
    /// of a window is its second slowest, not its slowest.
    #[arg(long, default_value_t = 100)]
    min_samples: usize,
    /// B's p99 in an attack's window may be at most this many times its baseline…
    #[arg(long, default_value_t = 5.0)]
    p99_factor: f64,
    /// …the baseline counting as at least this (ms).
    #[arg(long, default_value_t = 250)]
    p99_floor_ms: u64,
    /// Peak resident memory allowed to each of gateway, server, worker and nats-server (MiB).
    #[arg(long, default_value_t = 512)]
    rss_bound_mib: u64,
    /// Only the attacks whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Where each run gets its directory of results and logs.
    #[arg(long, default_value = ".state/hostile")]
    out: PathBuf,
}

/// NATS's `max_payload` in the suite: small, so that messages over it stay under the
/// template budgets (as in the e2e tests).
const MAX_PAYLOAD: usize = 64 * 1024;
/// The server's `step_result_max_bytes`: under `MAX_PAYLOAD`, so a report can be over it.
const STEP_RESULT_MAX_BYTES: usize = 16 * 1024;
/// The server's `execution_results_max_bytes`: half of `MAX_PAYLOAD`, as the default is of
/// NATS's default, so that an execution at it still reads in one reply.
const EXECUTION_RESULTS_MAX_BYTES: usize = MAX_PAYLOAD / 2;
/// The server's `tenant_max_executions_in_flight` (per shard): B's load keeps a few executions
/// in flight (20 a second, each ending in well under a second), far under it.
const TENANT_MAX_EXECUTIONS_IN_FLIGHT: usize = 32;
/// The worker's `concurrency`: A's sleeping executions at the quota (up to twice it, one
/// shard full and the other nearly) leave most slots to B's steps.
const WORKER_CONCURRENCY: usize = 256;
/// The gateway's connection and stream bounds, small so that those rows end in seconds.
/// `max_connections` leaves the client's pooled keep-alive connections (a few at B's rate, up to
/// a dozen more during the rows of eight bodies and of event streams) a wide margin, and
/// `max_sse_streams` must stay below it.
const BOUNDS: GatewayBounds = GatewayBounds {
    header_read_timeout: Duration::from_millis(1_000),
    max_connections: 128,
    sse_streams_per_tenant: 8,
};
const MAX_SSE_STREAMS: usize = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to listen for SIGTERM")?;
    tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; every process stopped"),
        _ = terminate.recv() => anyhow::bail!("terminated; every process stopped"),
    }
}

/// The tokens file of the two tenants (SHA-256 digests, as `NOETL_AUTH_TOKENS_FILE` holds).
fn tokens_file(dir: &Path) -> anyhow::Result<PathBuf> {
    use sha2::Digest as _;
    let digest = |token: &str| -> String {
        sha2::Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let text: String = [("a", "tenant-a", TOKEN_A), ("b", "tenant-b", TOKEN_B)]
        .iter()
        .map(|(name, tenant, token)| {
            format!(
                "[[tokens]]\nname = {name:?}\ntenant = {tenant:?}\nscopes = [\"submit\", \"read\", \"admin\"]\nsha256 = {:?}\n\n",
                digest(token)
            )
        })
        .collect();
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).context("failed to write the tokens file")?;
    Ok(path)
}

fn spec(dir: &Path) -> anyhow::Result<Spec> {
    let nats_config = dir.join("nats.conf");
    std::fs::write(&nats_config, format!("max_payload: {MAX_PAYLOAD}\n"))
        .context("failed to write the NATS configuration")?;
    let env = |pairs: &[(&str, String)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    Ok(Spec {
        shards: 2,
        servers: 1,
        workers: 1,
        timing: Timing {
            step_lease_ms: 10_000,
            dispatch_lease_ms: 30_000,
            ack_wait_ms: 10_000,
        },
        nats_args: vec![
            "-c".to_owned(),
            nats_config.to_string_lossy().into_owned(),
            "-l".to_owned(),
            dir.join("logs")
                .join("nats.log")
                .to_string_lossy()
                .into_owned(),
        ],
        server_env: env(&[
            (
                "NOETL_STEP_RESULT_MAX_BYTES",
                STEP_RESULT_MAX_BYTES.to_string(),
            ),
            (
                "NOETL_EXECUTION_RESULTS_MAX_BYTES",
                EXECUTION_RESULTS_MAX_BYTES.to_string(),
            ),
            (
                "NOETL_TENANT_MAX_EXECUTIONS_IN_FLIGHT",
                TENANT_MAX_EXECUTIONS_IN_FLIGHT.to_string(),
            ),
            // B's own pool; `shell` stays open only to the tenant `default` (no token).
            ("NOETL_POOL_TENANTS", "b-only=tenant-b".to_owned()),
        ]),
        // The `fetch` pool may reach the local HTTP target on loopback; the default may not.
        worker_env: env(&[
            ("NOETL_POOLS", "default,fetch".to_owned()),
            ("NOETL_HTTP_ALLOW", "fetch=127.0.0.1/32".to_owned()),
            ("NOETL_HTTP_MAX_REDIRECTS", "3".to_owned()),
            ("NOETL_CONCURRENCY", WORKER_CONCURRENCY.to_string()),
        ]),
        gateway_env: env(&[
            (
                "NOETL_AUTH_TOKENS_FILE",
                tokens_file(dir)?.to_string_lossy().into_owned(),
            ),
            (
                "NOETL_HEADER_READ_TIMEOUT_MS",
                BOUNDS.header_read_timeout.as_millis().to_string(),
            ),
            ("NOETL_MAX_CONNECTIONS", BOUNDS.max_connections.to_string()),
            (
                "NOETL_SSE_STREAMS_PER_TENANT",
                BOUNDS.sse_streams_per_tenant.to_string(),
            ),
            ("NOETL_MAX_SSE_STREAMS", MAX_SSE_STREAMS.to_string()),
        ]),
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.out.join(format!("run-{}", now_ms() / 1000));
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("failed to create {}", dir.display()))?;
    eprintln!("noetl-hostile: results in {}", dir.display());
    // A pooled connection is dropped well before the gateway closes it as idle (at its header
    // deadline), so a request is never sent on a connection the gateway is closing.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(BOUNDS.header_read_timeout / 2)
        .build()
        .context("failed to build the HTTP client")?;
    let target = web::serve().await?;
    eprintln!("starting nats-server (max_payload {MAX_PAYLOAD}), PostgreSQL (2 shards), a server, a worker, a gateway…");
    let cluster = Cluster::start(spec(&dir)?, None, &dir, &http).await?;
    let watched: Vec<Watched> = ["gateway", "server", "worker", "nats"]
        .into_iter()
        .zip(pids(&cluster))
        .map(|(name, pid)| {
            let pid = pid.with_context(|| format!("the {name} has no pid"))?;
            Ok(Watched {
                name: name.to_owned(),
                pid,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let memory = Memory::start(watched);
    let nats = noetl_bus::connect(&noetl_bus::NatsConfig {
        url: cluster.nats.url().to_owned(),
        client_name: "noetl-hostile (a stolen worker credential)".to_owned(),
        security: noetl_bus::NatsSecurity::default(),
    })
    .await
    .context("failed to connect to NATS")?;
    // B's steps run in the pool `default`.
    let tap = Arc::new(Tap::start(&nats, "default", cluster.shard_count).await?);
    let ctx = Arc::new(Ctx {
        http: http.clone(),
        gateway: cluster.gateway_url.clone(),
        nats,
        shard_count: cluster.shard_count,
        target,
        max_payload: MAX_PAYLOAD,
        step_result_max_bytes: STEP_RESULT_MAX_BYTES,
        execution_results_max_bytes: EXECUTION_RESULTS_MAX_BYTES,
        tenant_max_executions_in_flight: TENANT_MAX_EXECUTIONS_IN_FLIGHT,
        bounds: BOUNDS,
    });
    let probe = Probe::start(dir.join("probe"));

    let load = Steady::start(http, &cluster.gateway_url, TOKEN_B, args.rate, tap);
    warm_up(&load).await?;
    let start = Instant::now();
    let span = |secs: u64| Span {
        at_least: Duration::from_secs(secs),
        samples: args.min_samples,
    };
    // B's load alone; measured once more if the host stalled meanwhile, as its p99 is the bound.
    let mut baseline = window::measure(
        &load,
        &probe,
        start,
        window::close(&load, start, span(args.baseline_secs)).await,
    )
    .await;
    let mut baseline_remeasured = None;
    if let Some(stall) = &baseline.host_stall {
        baseline_remeasured = Some(first_window(
            baseline.executions,
            baseline.p99_ms,
            baseline.slowest.as_deref(),
            stall,
        ));
        let from = Instant::now();
        let to = window::close(&load, from, span(args.baseline_secs)).await;
        baseline = window::measure(&load, &probe, from, to).await;
    }

    let attacks: Vec<&Attack> = attacks::ALL
        .iter()
        .filter(|a| {
            args.only
                .as_deref()
                .is_none_or(|only| a.name.contains(only))
        })
        .collect();
    let measured = Measuring {
        ctx: &ctx,
        load: &load,
        probe: &probe,
        memory: &memory,
        cluster: &cluster,
        span: span(args.window_secs),
        start,
    };
    let mut rows = Vec::new();
    for attack in &attacks {
        rows.push(measured.row(attack).await);
    }
    let mut report = Report {
        bounds: Bounds {
            p99_factor: args.p99_factor,
            p99_floor_ms: args.p99_floor_ms,
            rss_mib: args.rss_bound_mib,
            min_samples: args.min_samples,
        },
        rate: args.rate,
        baseline_executions: baseline.executions,
        baseline_errors: baseline.errors.len(),
        baseline_p99_ms: baseline.p99_ms,
        baseline_remeasured,
        processes: memory.watched().iter().map(|w| w.name.clone()).collect(),
        lifetime_peak_mib: Vec::new(),
        rows,
        not_covered: attacks::NOT_COVERED
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    };
    // A row that failed on B's p99 alone while the host stalled gets one more window.
    for (i, attack) in attacks.iter().enumerate() {
        if let Some(stall) = report.rows[i].host_stall.clone() {
            if report.may_remeasure(&report.rows[i]) {
                let row = &report.rows[i];
                let first = format!(
                    "{} (the second window's result counts)",
                    first_window(
                        row.b_executions,
                        row.b_p99_ms,
                        row.b_slowest.as_deref(),
                        &stall
                    )
                );
                let mut again = measured.row(attack).await;
                again.remeasured = Some(first);
                report.rows[i] = again;
            }
        }
    }
    load.stop().await;
    std::fs::write(dir.join("samples.csv"), load.csv(start))
        .context("failed to write samples.csv")?;
    report.lifetime_peak_mib = memory.lifetime_peak_mib();
    drop(memory);
    drop(probe);
    keep_logs(&cluster, &dir);
    drop(cluster);
    // The copies of the binaries are 100 MB and say nothing the logs do not.
    let _ = std::fs::remove_dir_all(dir.join("bin"));
    println!("{}", report.markdown());
    report.write(&dir)?;
    eprintln!("results: {}", dir.display());
    anyhow::ensure!(
        report.passed(),
        "a row failed its checks (outcome, B's errors or p99, restarts, memory); see {}",
        dir.display()
    );
    Ok(())
}

/// What a row's window needs besides its attack.
struct Measuring<'a> {
    ctx: &'a Arc<Ctx>,
    load: &'a Steady,
    probe: &'a Probe,
    memory: &'a Memory,
    cluster: &'a Cluster,
    span: Span,
    start: Instant,
}

impl Measuring<'_> {
    /// Runs `attack` in a window of its own and measures it: its row.
    async fn row(&self, attack: &Attack) -> Row {
        let (outcome, from, to) = window::attack(self.ctx, attack, self.load, self.span).await;
        let mut restarts = self.memory.gone();
        for (watched, pid) in self.memory.watched().iter().zip(pids(self.cluster)) {
            if pid != Some(watched.pid) {
                restarts.push(format!("{} (pid {pid:?})", watched.name));
            }
        }
        eprintln!(
            "[{:>5.1}s] {:<55} {} {}",
            self.start.elapsed().as_secs_f64(),
            attack.name,
            if outcome.ok { "ok:" } else { "UNEXPECTED:" },
            outcome.seen
        );
        let b = window::measure(self.load, self.probe, from, to).await;
        Row {
            finding: attack.finding.to_owned(),
            attack: attack.name.to_owned(),
            expected: attack.expected.to_owned(),
            seen: outcome.seen,
            outcome_ok: outcome.ok,
            b_executions: b.executions,
            b_errors: b.errors.len(),
            b_error_examples: b.errors.into_iter().take(3).collect(),
            b_p99_ms: b.p99_ms,
            b_slowest: b.slowest,
            host_stall: b.host_stall,
            remeasured: None,
            restarts,
            peak_rss_mib: self.memory.peak_mib(from, to),
            window_ms: millis(to - from),
        }
    }
}

/// What a window measured before it was measured again.
fn first_window(executions: usize, p99_ms: u64, slowest: Option<&str>, stall: &str) -> String {
    format!(
        "first window: {executions} executions, p99 {p99_ms} ms, slowest {}, during a stall of \
         the host ({stall} by the probe)",
        slowest.unwrap_or("-")
    )
}

/// Copies PostgreSQL's log beside the processes' logs (its data directory goes with it).
fn keep_logs(cluster: &Cluster, dir: &Path) {
    let _ = std::fs::copy(cluster.pg.log_path(), dir.join("logs").join("postgres.log"));
}

/// The pids of gateway, server, worker and nats-server, as the cluster knows them now.
fn pids(cluster: &Cluster) -> [Option<u32>; 4] {
    [
        cluster.gateway.pid(),
        cluster.servers[0].pid(),
        cluster.workers[0].pid(),
        Some(cluster.nats.pid()),
    ]
}

/// Waits until B's executions succeed: the cluster serves, and the baseline can start.
async fn warm_up(load: &Steady) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.succeeded() < 20 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "tenant B's executions do not succeed ({} so far)",
            load.succeeded()
        );
        tokio::time::sleep(load::POLL).await;
    }
    Ok(())
}
