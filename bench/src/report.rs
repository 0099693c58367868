//! The results of one run: `results.json` (everything measured), `results.md` (the tables,
//! the ratios and the targets) and PNG charts drawn by `bench/charts.py` with the matplotlib of
//! the peers' venv.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde::Serialize;

use crate::baselines::Baselines;
use crate::e2e::Scenario;
use crate::growth::Growth;
use crate::list::ListReport;
use crate::peers::Peers;
use crate::{Args, ClusterMemory, SubmitRun};

mod markdown;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub started_utc: String,
    pub command: String,
    pub machine: Machine,
    pub quick: bool,
    pub durable_postgres: bool,
    /// The end-to-end scenarios ran at each.
    pub worker_concurrency: Vec<usize>,
    /// The peers ran at this one, the highest.
    pub peer_worker_concurrency: usize,
    pub total_seconds: f64,
    pub baselines: Option<Baselines>,
    pub submit: Vec<SubmitRun>,
    pub e2e: Vec<Scenario>,
    pub peers: Option<Peers>,
    pub growth: Option<Growth>,
    pub list: Option<ListReport>,
    pub memory: Vec<ClusterMemory>,
    pub summary: Option<Summary>,
}

/// The ratios and targets, computed from the rest.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub peak_submits_per_second: f64,
    pub peak_submit_shards: u32,
    pub submit_to_nats_request_reply: Option<f64>,
    pub submit_to_jetstream_publish: Option<f64>,
    pub submit_to_postgres_rows: Option<f64>,
    /// Per shard count: (paced rate, achieved rate, p99 ms).
    pub half_peak_submit_p99_ms: Vec<(u32, f64, f64, f64)>,
    pub best_e2e_single_per_second: f64,
    pub best_e2e_single_shards: u32,
    pub best_e2e_single_workers: usize,
    /// The lowest dispatch p50 of the single-step runs: (shards, worker concurrency, clients,
    /// ms).
    pub lowest_single_dispatch_p50: Option<(u32, usize, usize, f64)>,
    /// The better peer's best run: (peer, worker concurrency, tasks/s).
    pub best_peer: Option<(String, usize, f64)>,
    /// Our best single-step executions/s at the better peer's worker concurrency.
    pub best_e2e_single_at_peer_workers: Option<f64>,
    pub ours_over_best_peer: Option<f64>,
    pub growth_cost_ratio: Option<f64>,
    /// (paced rate, ratio) of the growth run's paced phases.
    pub growth_paced_cost_ratio: Option<(f64, f64)>,
}

impl Results {
    pub fn new(args: &Args) -> Self {
        Self {
            started_utc: timestamp(false),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine: machine(),
            quick: args.quick,
            durable_postgres: !args.relaxed_durability,
            worker_concurrency: args.worker_concurrency.clone(),
            peer_worker_concurrency: args.peer_worker_concurrency(),
            total_seconds: 0.0,
            baselines: None,
            submit: Vec::new(),
            e2e: Vec::new(),
            peers: None,
            growth: None,
            list: None,
            memory: Vec::new(),
            summary: None,
        }
    }

    fn summarize(&self) -> Summary {
        let unpaced = || self.submit.iter().filter(|r| r.target_rate.is_none());
        let peak = unpaced().max_by(|a, b| a.phase.per_second.total_cmp(&b.phase.per_second));
        let peak_rate = peak.map_or(0.0, |r| r.phase.per_second);
        let ratio = |base: f64| (base > 0.0).then(|| peak_rate / base);
        let singles = || self.e2e.iter().filter(|s| s.name == "noop-1");
        let fastest = |a: &&Scenario, b: &&Scenario| {
            a.executions_per_second.total_cmp(&b.executions_per_second)
        };
        let best = singles().max_by(fastest);
        let best_peer = self.peers.as_ref().and_then(|p| {
            p.peers
                .iter()
                .flat_map(|peer| {
                    peer.runs.iter().map(move |r| {
                        (
                            peer.name.clone(),
                            peer.worker_concurrency,
                            r.executions_per_second,
                        )
                    })
                })
                .max_by(|a, b| a.2.total_cmp(&b.2))
        });
        let best_rate = best.map_or(0.0, |s| s.executions_per_second);
        // Compared at equal worker concurrency.
        let best_at_peer_workers = best_peer.as_ref().and_then(|(_, workers, _)| {
            singles()
                .filter(|s| s.worker_concurrency == *workers)
                .max_by(fastest)
                .map(|s| s.executions_per_second)
        });
        Summary {
            peak_submits_per_second: peak_rate,
            peak_submit_shards: peak.map_or(0, |r| r.shards),
            submit_to_nats_request_reply: self
                .baselines
                .as_ref()
                .and_then(|b| ratio(b.nats_request_reply.per_second)),
            submit_to_jetstream_publish: self
                .baselines
                .as_ref()
                .and_then(|b| ratio(b.jetstream_publish.per_second)),
            submit_to_postgres_rows: self
                .baselines
                .as_ref()
                .and_then(|b| ratio(b.postgres_rows_per_second)),
            half_peak_submit_p99_ms: self
                .submit
                .iter()
                .filter_map(|r| {
                    Some((
                        r.shards,
                        r.target_rate?,
                        r.phase.per_second,
                        r.phase.latency.p99_ms,
                    ))
                })
                .collect(),
            best_e2e_single_per_second: best_rate,
            best_e2e_single_shards: best.map_or(0, |s| s.shards),
            best_e2e_single_workers: best.map_or(0, |s| s.worker_concurrency),
            lowest_single_dispatch_p50: singles()
                .min_by(|a, b| a.dispatch.p50_ms.total_cmp(&b.dispatch.p50_ms))
                .map(|s| {
                    (
                        s.shards,
                        s.worker_concurrency,
                        s.client_concurrency,
                        s.dispatch.p50_ms,
                    )
                }),
            ours_over_best_peer: best_peer
                .as_ref()
                .zip(best_at_peer_workers)
                .filter(|(p, _)| p.2 > 0.0)
                .map(|(p, ours)| ours / p.2),
            best_e2e_single_at_peer_workers: best_at_peer_workers,
            best_peer,
            growth_cost_ratio: self.growth.as_ref().map(|g| g.cost_ratio_last_to_first),
            growth_paced_cost_ratio: self
                .growth
                .as_ref()
                .map(|g| (g.paced_rate, g.paced_cost_ratio_last_to_first)),
        }
    }
}

fn timestamp(for_path: bool) -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = if for_path {
        "[year][month][day]T[hour][minute][second]Z"
    } else {
        "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
    };
    time::format_description::parse_borrowed::<2>(format)
        .ok()
        .and_then(|f| now.format(&f).ok())
        .unwrap_or_else(|| now.unix_timestamp().to_string())
}

pub fn timestamp_for_path() -> String {
    timestamp(true)
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |text: &str, key: &str| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_owned())
    };
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: field(&cpuinfo, "model name").unwrap_or_default(),
        memory_gib: field(&meminfo, "MemTotal")
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// Writes results.json and results.md, then the charts when a Python with matplotlib is there.
pub fn write(dir: &Path, results: &mut Results, python: Option<&Path>) -> anyhow::Result<()> {
    results.summary = Some(results.summarize());
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    std::fs::write(dir.join("results.md"), markdown::markdown(results))?;
    match python {
        Some(python) => {
            let status = Command::new(python)
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("charts.py"))
                .arg(&json)
                .arg(dir)
                .status()
                .context("running bench/charts.py")?;
            anyhow::ensure!(status.success(), "bench/charts.py failed");
        }
        None => {
            eprintln!("charts skipped: no venv with matplotlib (the peers' install did not run)")
        }
    }
    Ok(())
}
