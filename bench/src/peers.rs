//! Peers doing the same no-op work in the same run: Celery 5 with a Redis broker and result
//! backend, and graphile-worker on the harness's own PostgreSQL.
//!
//! [`install`] puts them under the state directory (a Python venv from PyPI, which also holds
//! matplotlib for the charts, and node_modules from npm); [`run`] starts a private
//! redis-server (no persistence) and one worker process per peer with the benchmark's worker
//! concurrency, and runs the small drivers in `bench/peers/` at each client concurrency.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use hdrhistogram::Histogram;
use noetl_test_support::{free_port, Process};
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::procs::{self, PeakMemory, ProcessCost, Watched};
use crate::Percentiles;

pub const CELERY: &str = "celery[redis]==5.5.3";
pub const MATPLOTLIB: &str = "matplotlib==3.10.7";
pub const GRAPHILE_WORKER: &str = "graphile-worker@0.16.6";

/// The drivers, beside this crate's sources.
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

#[derive(Debug, Clone)]
pub struct Installed {
    /// Where the peers live; their workers' logs go there too.
    dir: PathBuf,
    pub python: PathBuf,
    celery: PathBuf,
    node_modules: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct PeerRun {
    pub client_concurrency: usize,
    pub executions: usize,
    pub failed: u64,
    pub seconds: f64,
    pub executions_per_second: f64,
    pub e2e: Percentiles,
    pub cpu: Vec<ProcessCost>,
    pub cpu_seconds_per_1000_total: f64,
}

#[derive(Debug, Serialize)]
pub struct Peer {
    pub name: String,
    pub version: String,
    pub worker_concurrency: usize,
    pub runs: Vec<PeerRun>,
    pub peak_memory: Vec<PeakMemory>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Peers {
    pub skipped: Option<String>,
    pub peers: Vec<Peer>,
}

impl Peers {
    pub fn skipped(reason: &str) -> Self {
        eprintln!("peers {reason}");
        Self {
            skipped: Some(reason.to_owned()),
            peers: Vec::new(),
        }
    }
}

fn succeed(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        Err(format!(
            "{what} failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ))
    }
}

/// Installs the peers (and matplotlib) under `dir` unless already there; the error says why
/// they cannot be, and the run goes on without them.
pub async fn install(dir: &Path) -> Result<Installed, String> {
    let dir = std::path::absolute(dir).map_err(|e| e.to_string())?;
    let venv = dir.join("venv");
    let installed = Installed {
        dir: dir.clone(),
        python: venv.join("bin/python"),
        celery: venv.join("bin/celery"),
        node_modules: dir.join("node/node_modules"),
    };
    let marker = dir.join(format!("installed {CELERY} {MATPLOTLIB} {GRAPHILE_WORKER}"));
    if marker.exists() {
        return Ok(installed);
    }
    eprintln!(
        "installing the peers into {}: {CELERY}, {MATPLOTLIB} (PyPI), {GRAPHILE_WORKER} (npm)…",
        dir.display()
    );
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for program in ["python3", "npm", "node", "redis-server"] {
        if which(program).is_none() {
            return Err(format!(
                "skipped: {program} is not installed (scripts/ensure-deps.sh --bench installs it)"
            ));
        }
    }
    let dir_for_task = dir.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let dir = dir_for_task;
        succeed(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(dir.join("venv")),
            "python3 -m venv",
        )?;
        succeed(
            Command::new(dir.join("venv/bin/pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                CELERY,
                MATPLOTLIB,
            ]),
            "pip install",
        )?;
        succeed(
            Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(dir.join("node"))
                .arg(GRAPHILE_WORKER),
            "npm install",
        )
    })
    .await
    .map_err(|e| e.to_string())??;
    std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
    Ok(installed)
}

/// A peer worker's stderr, kept for when a run fails.
fn log(installed: &Installed, name: &str) -> Stdio {
    std::fs::File::create(installed.dir.join(name)).map_or_else(|_| Stdio::null(), Stdio::from)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// What a driver prints.
#[derive(Debug, Deserialize)]
struct DriverOutput {
    seconds: f64,
    latencies_ms: Vec<f64>,
    failed: u64,
}

fn drive(command: &mut Command) -> anyhow::Result<DriverOutput> {
    let output = noetl_test_support::run(command, "peer driver").map_err(anyhow::Error::msg)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .context("peer driver printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("peer driver printed {line:?}"))
}

/// Runs one peer's driver at each client concurrency (after one small unmeasured run that
/// waits for its worker to be up).
/// What every peer run shares.
#[derive(Debug, Clone)]
struct Workload {
    concurrencies: Vec<usize>,
    worker_concurrency: usize,
    executions: usize,
}

/// `processes` (name, pid) are the peer's servers, watched with their descendants; the CPU of
/// a run also counts the harness's own.
fn sweep(
    name: &str,
    version: &str,
    processes: &[(&str, u32)],
    workload: &Workload,
    driver: &dyn Fn(usize, usize) -> Command,
) -> Peer {
    let mut servers = Watched::default();
    for (process, pid) in processes {
        servers.add(process, *pid);
    }
    let watched = servers.clone().with_self();
    let Workload {
        ref concurrencies,
        worker_concurrency,
        executions,
    } = *workload;
    let mut peer = Peer {
        name: name.to_owned(),
        version: version.to_owned(),
        worker_concurrency,
        runs: Vec::new(),
        peak_memory: Vec::new(),
        error: None,
    };
    let result = (|| -> anyhow::Result<()> {
        drive(&mut driver(20, 1)).context("warm-up")?;
        for &concurrency in concurrencies.iter() {
            eprintln!("peer {name}: {executions} no-op tasks, {concurrency} client(s), worker concurrency {worker_concurrency}…");
            let before = watched.snapshot();
            let out = drive(&mut driver(executions, concurrency))?;
            let cpu = watched.snapshot().cost_since(&before, executions as u64);
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
            for ms in &out.latencies_ms {
                histogram.saturating_record((ms * 1000.0).max(1.0) as u64);
            }
            peer.runs.push(PeerRun {
                client_concurrency: concurrency,
                executions,
                failed: out.failed,
                seconds: out.seconds,
                executions_per_second: executions as f64 / out.seconds.max(1e-3),
                e2e: Percentiles::of(&histogram),
                cpu_seconds_per_1000_total: procs::total_per_1000(&cpu),
                cpu,
            });
        }
        Ok(())
    })();
    if let Err(error) = result {
        let error = error.context(format!(
            "{name} (its worker's log is in the peers' directory)"
        ));
        eprintln!("peer {error:#}");
        peer.error = Some(format!("{error:#}"));
    }
    // The harness's own peak says nothing about the peer.
    peer.peak_memory = servers.peak_memory();
    peer
}

pub async fn run(
    installed: &Installed,
    cluster: &Cluster,
    concurrencies: &[usize],
    worker_concurrency: usize,
    executions: usize,
) -> Peers {
    let installed = installed.clone();
    let workload = Workload {
        concurrencies: concurrencies.to_vec(),
        worker_concurrency,
        executions,
    };
    let postgres_pid = cluster.watched.pid_of("postgres");
    let graphile_db = cluster
        .side_database("bench_graphile")
        .map(|_| cluster.pg.url("bench_graphile"));
    let result = tokio::task::spawn_blocking(move || {
        vec![
            celery(&installed, &workload),
            match graphile_db {
                Ok(url) => graphile(&installed, &url, postgres_pid, &workload),
                Err(error) => failed("graphile-worker", &format!("{error:#}")),
            },
        ]
    })
    .await;
    match result {
        Ok(peers) => Peers {
            skipped: None,
            peers,
        },
        Err(error) => Peers::skipped(&format!("failed: {error}")),
    }
}

fn failed(name: &str, error: &str) -> Peer {
    Peer {
        name: name.to_owned(),
        version: String::new(),
        worker_concurrency: 0,
        runs: Vec::new(),
        peak_memory: Vec::new(),
        error: Some(error.to_owned()),
    }
}

fn celery(installed: &Installed, workload: &Workload) -> Peer {
    let port = free_port();
    let mut redis = Command::new("redis-server");
    redis
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null());
    let redis = Process::spawn(redis);
    let redis_url = format!("redis://127.0.0.1:{port}");
    let mut worker = Command::new(&installed.celery);
    worker
        .args([
            "-A",
            "celery_app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
        ])
        .arg(workload.worker_concurrency.to_string())
        .args([
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ])
        .current_dir(scripts())
        .env("BENCH_REDIS_URL", &redis_url)
        .stdout(Stdio::null())
        .stderr(log(installed, "celery-worker.log"));
    let worker = Process::spawn(worker);
    let python = installed.python.clone();
    let peer = sweep(
        "Celery (Redis broker, threads pool)",
        CELERY,
        &[("redis-server", redis.id()), ("celery worker", worker.id())],
        workload,
        &|count, concurrency| {
            let mut command = Command::new(&python);
            command
                .arg(scripts().join("celery_driver.py"))
                .args([count.to_string(), concurrency.to_string()])
                .current_dir(scripts())
                .env("BENCH_REDIS_URL", &redis_url);
            command
        },
    );
    drop((worker, redis));
    peer
}

fn graphile(
    installed: &Installed,
    url: &str,
    postgres_pid: Option<u32>,
    workload: &Workload,
) -> Peer {
    let mut worker = Command::new("node");
    worker
        .arg(scripts().join("graphile_worker.js"))
        .args([url, &workload.worker_concurrency.to_string()])
        .env("NODE_PATH", &installed.node_modules)
        .stdout(Stdio::null())
        .stderr(log(installed, "graphile-worker.log"));
    let worker = Process::spawn(worker);
    let mut servers = vec![("graphile-worker (node)", worker.id())];
    servers.extend(postgres_pid.map(|pid| ("postgres", pid)));
    let report =
        std::env::temp_dir().join(format!("noetl-bench-graphile-{}.json", std::process::id()));
    let node_modules = installed.node_modules.clone();
    let peer = sweep(
        "graphile-worker (PostgreSQL)",
        GRAPHILE_WORKER,
        &servers,
        workload,
        &|count, concurrency| {
            let mut command = Command::new("node");
            command
                .arg(scripts().join("graphile_driver.js"))
                .args([url, &count.to_string(), &concurrency.to_string()])
                .arg(&report)
                .env("NODE_PATH", &node_modules);
            command
        },
    );
    drop(worker);
    let _ = std::fs::remove_file(&report);
    peer
}
