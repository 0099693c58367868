//! `noetl-chaos`: runs a steady load of multi-step executions on a cluster of real processes
//! and injects one fault at a time (crashes, pauses, restarts of NATS and PostgreSQL, network
//! partitions, duplicate publishes); after each, waits for the backlog to drain and checks,
//! straight from the shard databases and the client's own log, that no execution was lost,
//! duplicated or misrouted. See `wiki/reliability.md`.
//!
//! - `noetl_chaos::cluster`: the processes, started and restarted from this thread (shared with
//!   `noetl-hostile`, as is `noetl_chaos::netns`, the namespace the partitions cut).
//! - [`load`]: the clients and their log of what they were told.
//! - [`capture`]: copies of commands and reports to publish again.
//! - [`faults`]: injecting and healing each fault.
//! - [`check`]: the invariants; [`children`]: those of the parents and their children.
//! - [`report`]: the table, printed and written as markdown and JSON.
//!
//! Like `noetl-bench`, it talks to NATS directly (to capture and re-publish messages), beside
//! the product.

mod capture;
mod check;
mod children;
mod faults;
mod load;
mod loops;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use noetl_chaos::cluster::{self, Cluster, Spec, Timing};
use noetl_chaos::{netns, now_ms};
use noetl_contract::id::CUSTOM_EPOCH_UNIX_MS;

use crate::check::Duplicates;
use crate::faults::{Fault, Holds, Rng};
use crate::load::{ClientLog, Load};
use crate::report::{Injection, Report};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A few minutes, every fault once with short holds (CI).
    Short,
    /// Every fault at least three times, partitions of 30–60 s, at least 10,000 executions.
    Full,
}

#[derive(Debug, Parser)]
#[command(
    name = "noetl-chaos",
    about = "Fault injection under load, checked against the shard databases"
)]
struct Args {
    #[arg(long, value_enum, default_value = "short")]
    mode: Mode,
    /// Shard databases (one PostgreSQL instance, one database per shard).
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Executions submitted per second.
    #[arg(long)]
    rate: Option<u32>,
    /// Rounds of every fault (default: 1 short, 3 full).
    #[arg(long)]
    rounds: Option<u32>,
    /// Only these faults (comma-separated, e.g. kill-server,restart-nats).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Fault>,
    /// Where each run gets its directory of results and logs.
    #[arg(long, default_value = ".state/chaos")]
    out: PathBuf,
    /// Seed of the random moments and victims (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
}

/// What a mode sets.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rounds: u32,
    rate: u32,
    min_executions: usize,
    holds: Holds,
    /// Steady load before each fault, chosen at random in this range (seconds).
    before_secs: (u64, u64),
}

const TIMING: Timing = Timing {
    step_lease_ms: 3_000,
    dispatch_lease_ms: 30_000,
    ack_wait_ms: 3_000,
};
/// Longest wait for the backlog to drain after a fault before its executions count as lost.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(180);

fn plan(mode: Mode) -> Plan {
    match mode {
        Mode::Short => Plan {
            rounds: 1,
            rate: 10,
            min_executions: 0,
            holds: Holds {
                pause: Duration::from_secs(6),
                outage: Duration::from_secs(3),
                partition_secs: (8, 10),
            },
            before_secs: (1, 3),
        },
        Mode::Full => Plan {
            rounds: 3,
            rate: 20,
            min_executions: 10_000,
            holds: Holds {
                pause: Duration::from_secs(10),
                outage: Duration::from_secs(8),
                partition_secs: (30, 60),
            },
            before_secs: (3, 10),
        },
    }
}

/// The smallest execution id minted at `unix_ms`: every id below it was minted earlier.
fn first_id_at(unix_ms: i64) -> i64 {
    (unix_ms - CUSTOM_EPOCH_UNIX_MS) << 22
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to listen for SIGTERM")?;
    // On a signal the run is dropped where it stands, and with it every process it started and
    // the network namespace.
    tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; every process stopped"),
        _ = terminate.recv() => anyhow::bail!("terminated; every process stopped"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut plan = plan(args.mode);
    if let Some(rounds) = args.rounds {
        plan.rounds = rounds;
    }
    if let Some(rate) = args.rate {
        plan.rate = rate;
    }
    let seed = args.seed.unwrap_or_else(|| now_ms().unsigned_abs());
    let mut rng = Rng::new(seed);
    let mode = format!("{:?}", args.mode).to_lowercase();
    let dir = args.out.join(format!("{mode}-{}", now_ms() / 1000));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("failed to create {}", logs.display()))?;
    eprintln!(
        "noetl-chaos {mode}: seed {seed}, results in {}",
        dir.display()
    );

    let netns = match netns::Netns::create() {
        Ok(netns) => Some(netns),
        Err(e) => {
            eprintln!("SKIPPING the partition faults: no network namespace ({e:#}); they need root and iproute2");
            None
        }
    };
    let mut faults: Vec<Fault> = if args.only.is_empty() {
        Fault::ALL.to_vec()
    } else {
        args.only.clone()
    };
    let skipped: Vec<Fault> = faults
        .iter()
        .copied()
        .filter(|f| f.needs_netns() && netns.is_none())
        .collect();
    faults.retain(|f| !skipped.contains(f));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("failed to build the HTTP client")?;
    eprintln!(
        "starting nats-server, PostgreSQL ({} shards), 2 servers, 2 workers, a gateway…",
        args.shards
    );
    let spec = Spec {
        shards: args.shards,
        servers: 2,
        workers: 2,
        timing: TIMING,
        nats_args: Vec::new(),
        server_env: Vec::new(),
        worker_env: Vec::new(),
        gateway_env: Vec::new(),
    };
    let mut cluster = Cluster::start(spec, netns, &dir, &http).await?;
    let nats = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.nats.url())
        .await
        .context("failed to connect to NATS")?;
    let captured = capture::start(&nats, cluster.shard_count).await?;
    let log = Arc::new(ClientLog::create(&dir.join("client-log.jsonl"))?);
    let run_id = format!("chaos-{seed}");
    let load = Load::start(
        http.clone(),
        &cluster.gateway_url,
        plan.rate,
        8,
        &run_id,
        log.clone(),
    );

    warm_up(&log, &captured).await?;
    let started = Instant::now();
    let mut injections = Vec::new();
    let mut checked = 0;
    let mut duplicates_before = Duplicates::default();
    let mut misrouted_before = 0;
    for round in 0..plan.rounds {
        let mut order = faults.clone();
        // A different order every round.
        for i in (1..order.len()).rev() {
            let j = usize::try_from(rng.below(i as u64 + 1)).unwrap_or_default();
            order.swap(i, j);
        }
        for fault in order {
            let before = Duration::from_secs(rng.between(plan.before_secs.0, plan.before_secs.1));
            tokio::time::sleep(before).await;
            // Unfinished at the moment of the fault: the executions it can hurt, beside those
            // submitted while it lasts.
            let in_flight = check::unfinished_before(&cluster.pools, first_id_at(now_ms()))
                .await
                .unwrap_or_default();
            let acked_at_start = log.len();
            let t0 = Instant::now();
            eprint!(
                "[{:>5.0}s] round {} {:<40}",
                started.elapsed().as_secs_f64(),
                round + 1,
                fault.describe()
            );
            let detail =
                faults::inject(fault, &mut cluster, &nats, &captured, plan.holds, &mut rng).await?;
            let healed_ms = now_ms();
            let healed = Instant::now();
            let acked_at_heal = log.len();
            cluster.wait_ready(&http).await?;
            let recovery = recover(&cluster, first_id_at(healed_ms), healed).await;
            let acks = log.since(checked);
            let acks = &acks[..acked_at_heal.saturating_sub(checked).min(acks.len())];
            checked = acked_at_heal;
            let (mut lost, failed) = check::lost(&cluster.pools, cluster.shard_count, acks).await?;
            let family = children::check(&cluster.pools, cluster.shard_count, acks).await?;
            lost.extend(family.lost);
            let looped = loops::check(&cluster.pools, cluster.shard_count, acks).await?;
            lost.extend(looped.lost);
            let duplicates = check::duplicates(&cluster.pools, log.keys_answered_twice()).await?;
            let misrouted = check::misrouted(&cluster.pools, cluster.shard_count).await?;
            let injection = Injection {
                fault,
                round: round + 1,
                detail,
                fault_ms: duration_ms(healed - t0),
                in_flight,
                executions: log.len() - acked_at_start,
                lost: lost.len() as u64,
                lost_ids: lost.iter().take(20).map(ToString::to_string).collect(),
                duplicated: duplicates.total().saturating_sub(duplicates_before.total())
                    + family.duplicated
                    + looped.duplicated,
                misrouted: misrouted.saturating_sub(misrouted_before) + family.misrouted,
                children: family.children,
                mislinked: family.mislinked,
                failed,
                recovery_ms: recovery.map(duration_ms),
            };
            duplicates_before = duplicates;
            misrouted_before = misrouted;
            eprintln!(" {}", injection.summary());
            injections.push(injection);
        }
    }
    while log.len() < plan.min_executions {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    load.stop().await;
    log.flush();

    eprintln!("load stopped; waiting for every execution to end…");
    let drained = recover(&cluster, first_id_at(now_ms() + 1_000), Instant::now()).await;
    let all = log.since(0);
    let (mut lost, failed) = check::lost(&cluster.pools, cluster.shard_count, &all).await?;
    let family = children::check(&cluster.pools, cluster.shard_count, &all).await?;
    lost.extend(family.lost);
    let looped = loops::check(&cluster.pools, cluster.shard_count, &all).await?;
    lost.extend(looped.lost);
    let mut duplicates = check::duplicates(&cluster.pools, log.keys_answered_twice()).await?;
    duplicates.children_twice = family.duplicated;
    duplicates.items_twice = looped.duplicated;
    let misrouted = check::misrouted(&cluster.pools, cluster.shard_count).await?;
    let report = Report {
        mode,
        seed,
        shards: args.shards,
        netns: cluster.netns.is_some(),
        skipped: skipped.clone(),
        seconds: started.elapsed().as_secs(),
        executions: all.len(),
        refused_submits: log.refused(),
        failed_executions: failed,
        final_lost: lost.len() as u64,
        final_lost_ids: lost.iter().take(50).map(ToString::to_string).collect(),
        final_duplicates: duplicates,
        final_misrouted: misrouted + family.misrouted,
        final_children: family.children,
        final_mislinked: family.mislinked,
        final_drain_ms: drained.map(duration_ms),
        injections,
    };
    drop(cluster);
    // The copies of the binaries are 100 MB and say nothing the logs do not.
    let _ = std::fs::remove_dir_all(dir.join("bin"));
    let table = report.markdown();
    println!("{table}");
    report.write(&dir)?;
    eprintln!("results: {}", dir.display());
    if report.passed() {
        Ok(())
    } else {
        anyhow::bail!("invariants violated; see {}", dir.display())
    }
}

/// Waits until executions complete and enough commands and reports went by to copy.
async fn warm_up(log: &ClientLog, captured: &capture::Captured) -> anyhow::Result<()> {
    let deadline = Instant::now() + cluster::READY;
    let enough = |queue: &std::sync::Mutex<std::collections::VecDeque<capture::Copy>>| {
        queue
            .lock()
            .map(|q| q.len() >= faults::DUPLICATES)
            .unwrap_or(false)
    };
    while !(log.len() >= 20 && enough(&captured.commands) && enough(&captured.reports)) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no steady load after {:?}: {} executions acknowledged",
            cluster::READY,
            log.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Time from `healed` until no execution below `bound` is unfinished (`None`: not within the
/// deadline).
async fn recover(cluster: &Cluster, bound: i64, healed: Instant) -> Option<Duration> {
    let deadline = healed + RECOVERY_DEADLINE;
    loop {
        // A database that is still coming back counts as not recovered yet.
        if let Ok(0) = check::unfinished_before(&cluster.pools, bound).await {
            return Some(healed.elapsed());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use noetl_contract::{ExecutionId, NodeId};

    #[test]
    fn first_id_at_bounds_the_ids_of_its_millisecond_from_below() {
        let ms = 1_795_000_000_123;
        let first = ExecutionId::from_parts(ms, NodeId::try_from(0).expect("node 0"), 0)
            .expect("a valid id");
        let last_before = ExecutionId::from_parts(
            ms - 1,
            NodeId::try_from(u32::from(NodeId::MAX)).expect("the largest node"),
            4_095,
        )
        .expect("a valid id");
        assert_eq!(first_id_at(ms), first.get());
        assert!(last_before.get() < first_id_at(ms));
    }
}
