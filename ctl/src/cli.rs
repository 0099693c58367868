//! The command-line grammar of `noetlctl` and what each command prints.
//!
//! Exit codes (stable, for scripts):
//! - `0`: done, or nothing to do ("no change");
//! - `1`: failed (NATS unreachable, no topology, an unexpected answer);
//! - `2`: the command line is wrong (clap);
//! - `3`: refused (a shard to add has no ready server, the shard is not draining, executions are
//!   unfinished, a change the topology does not allow);
//! - `4`: conflict (someone else changed the topology between read and write: run it again);
//! - `5`: not yet (`topology drain`: the shard still has unfinished executions).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use noetl_bus::Client;
use noetl_contract::playbook::Millis;
use noetl_contract::topology::RetiredData;
use noetl_contract::{ShardCount, ShardId, Topology};

use crate::topology::{self, Applied, Error, Planned};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_REFUSED: u8 = 3;
pub const EXIT_CONFLICT: u8 = 4;
pub const EXIT_NOT_YET: u8 = 5;

/// How long connecting to NATS may take before the command gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "noetlctl",
    version,
    about = "Operate a noetl-dispatch cluster",
    after_help = "Exit codes: 0 done or no change, 1 failed, 2 usage, 3 refused, 4 conflict (run again), 5 not yet (drain)."
)]
pub struct Cli {
    /// NATS of the cluster.
    #[arg(
        long,
        env = "NOETL_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The cluster topology: its epochs, the shards' states, and changes of the shard count.
    #[command(subcommand)]
    Topology(TopologyCommand),
}

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Print the epochs and every shard's state and readiness.
    Show {
        /// Print the topology document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dry run: what changing to N shards would do, and whether each shard is ready.
    Plan {
        #[arg(long = "shards", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        shards: u32,
        /// Activate no sooner than this from now (never sooner than the cluster's grace).
        #[arg(long, value_name = "DURATION", default_value = "0s")]
        grace: Millis,
    },
    /// Append an epoch with N shards, activating a grace from now.
    Apply {
        #[arg(long = "shards", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        shards: u32,
        /// Activate no sooner than this from now (never sooner than the cluster's grace).
        #[arg(long, value_name = "DURATION", default_value = "0s")]
        grace: Millis,
        /// Apply even when a shard to add has no ready server (its executions fail until one starts).
        #[arg(long)]
        force: bool,
        /// Return only once the new epoch is in force.
        #[arg(long)]
        wait: bool,
    },
    /// How far a draining shard is: exit 0 when it has no unfinished executions, 5 otherwise.
    Drain {
        shard: u32,
        /// Poll until it has none, or until --timeout.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        timeout: Millis,
    },
    /// Retire a drained shard for good, saying what happens to its database.
    Retire {
        shard: u32,
        /// keep: the database stays and its executions stay readable while a server serves it;
        /// discard: you will delete the database, and reads of its executions answer 410.
        #[arg(long, value_enum)]
        data: DataChoice,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DataChoice {
    Keep,
    Discard,
}

/// Runs the command and returns the process's exit code; messages go to stdout, errors to
/// stderr.
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = async {
        let client = connect(&cli.nats_url).await?;
        match cli.command {
            Command::Topology(command) => topology_command(&client, command).await,
        }
    }
    .await;
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("noetlctl: {e}");
            ExitCode::from(match e {
                Error::Refused(_) => EXIT_REFUSED,
                Error::Conflict(_) => EXIT_CONFLICT,
                Error::NoTopology | Error::Bus(_) => EXIT_FAILED,
            })
        }
    }
}

async fn connect(url: &str) -> Result<Client, Error> {
    let config = noetl_bus::NatsConfig {
        url: url.to_owned(),
        client_name: "noetlctl".to_owned(),
    };
    let unreachable = || {
        Error::Bus(noetl_bus::Error::Connect(format!(
            "cannot reach NATS at {} within {CONNECT_TIMEOUT:?}",
            noetl_contract::shards::redact(url)
        )))
    };
    let client = tokio::time::timeout(CONNECT_TIMEOUT, noetl_bus::connect(&config))
        .await
        .map_err(|_| unreachable())??;
    // The client retries in the background; make sure it actually got through.
    tokio::time::timeout(CONNECT_TIMEOUT, client.flush())
        .await
        .map_err(|_| unreachable())?
        .map_err(|_| unreachable())?;
    Ok(client)
}

fn shard_count(n: u32) -> Result<ShardCount, Error> {
    ShardCount::new(n).map_err(|e| Error::Refused(e.to_string()))
}

fn lead(millis: Millis) -> i64 {
    i64::try_from(millis.0).unwrap_or(i64::MAX)
}

async fn topology_command(client: &Client, command: TopologyCommand) -> Result<u8, Error> {
    match command {
        TopologyCommand::Show { json } => {
            let (current, revision) = topology::current(client).await?;
            if json {
                let document = serde_json::to_string_pretty(&current)
                    .map_err(|e| Error::Bus(noetl_bus::Error::Transport(e.to_string())))?;
                println!("{document}");
                return Ok(0);
            }
            let now_ms = noetl_bus::unix_now_ms();
            println!(
                "topology revision {revision}, grace {} ms",
                current.grace_ms()
            );
            print_epochs(&current, now_ms);
            let shards =
                topology::readiness(client, &current, current.max_shard_count().shards(), now_ms)
                    .await;
            println!("shards:");
            for shard in shards {
                println!(
                    "  {:>3}  {:<10}  {}",
                    shard.shard,
                    topology::state_name(shard.state),
                    if shard.ready {
                        "ready"
                    } else {
                        "no ready server"
                    }
                );
            }
            Ok(0)
        }
        TopologyCommand::Plan { shards, grace } => {
            let planned = topology::plan(client, shard_count(shards)?, lead(grace)).await?;
            print_plan(&planned);
            Ok(0)
        }
        TopologyCommand::Apply {
            shards,
            grace,
            force,
            wait,
        } => match topology::apply(client, shard_count(shards)?, lead(grace), force).await? {
            Applied::NoChange(planned) => {
                print_plan(&planned);
                Ok(0)
            }
            Applied::Written(planned) => {
                let next = planned
                    .plan
                    .next
                    .as_ref()
                    .expect("a written plan has a next topology");
                let epoch = next.latest();
                println!(
                    "applied: epoch {} with {} shards activates at {}",
                    epoch.epoch,
                    epoch.shard_count,
                    timestamp(epoch.activate_at_ms)
                );
                if wait {
                    let left = epoch.activate_at_ms - noetl_bus::unix_now_ms();
                    if left > 0 {
                        tokio::time::sleep(Duration::from_millis(left.unsigned_abs())).await;
                    }
                    println!("epoch {} is in force", epoch.epoch);
                }
                Ok(0)
            }
        },
        TopologyCommand::Drain {
            shard,
            wait,
            timeout,
        } => {
            let shard = ShardId::new(shard);
            let give_up = tokio::time::Instant::now() + Duration::from_millis(timeout.0);
            loop {
                let stats = topology::drain(client, shard).await?;
                println!(
                    "shard {shard}: draining, {} execution(s), {} unfinished",
                    stats.executions, stats.unfinished
                );
                if stats.unfinished == 0 {
                    println!("shard {shard} is drained: noetlctl topology retire {shard} --data keep|discard");
                    return Ok(0);
                }
                if !wait || tokio::time::Instant::now() >= give_up {
                    return Ok(EXIT_NOT_YET);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        TopologyCommand::Retire { shard, data } => {
            let data = match data {
                DataChoice::Keep => RetiredData::Kept,
                DataChoice::Discard => RetiredData::Discarded,
            };
            let shard = ShardId::new(shard);
            topology::retire(client, shard, data).await?;
            match data {
                RetiredData::Kept => println!(
                    "shard {shard} retired; its database stays, and its executions stay readable while a server serves it"
                ),
                RetiredData::Discarded => println!(
                    "shard {shard} retired; its executions now answer 410 Gone, and its database may be deleted"
                ),
            }
            Ok(0)
        }
    }
}

fn print_epochs(topology: &Topology, now_ms: i64) {
    let in_force = topology.epoch_at(now_ms).epoch;
    println!("epochs:");
    for epoch in topology.epochs() {
        let marker = if epoch.epoch == in_force {
            "  (in force)"
        } else if epoch.activate_at_ms > now_ms {
            "  (pending)"
        } else {
            ""
        };
        println!(
            "  {:>3}  {:>3} shards  from {}{marker}",
            epoch.epoch,
            epoch.shard_count,
            timestamp(epoch.activate_at_ms)
        );
    }
}

fn print_plan(planned: &Planned) {
    let plan = &planned.plan;
    if plan.next.is_none() {
        println!(
            "no change: the topology already has {} shards",
            plan.current
        );
        return;
    }
    println!("plan: {} -> {} shards", plan.current, plan.desired);
    if let Some(at) = plan.activate_at_ms() {
        let seconds = (at - planned.now_ms) as f64 / 1_000.0;
        println!("  activates at {} (in {seconds:.1} s)", timestamp(at));
    }
    if !plan.added.is_empty() {
        println!("  shards added:    {}", topology::list(&plan.added));
    }
    if !plan.draining.is_empty() {
        println!(
            "  shards draining: {} (they keep serving their executions; retire them once drained)",
            topology::list(&plan.draining)
        );
    }
    println!("  shard readiness:");
    for shard in &planned.shards {
        let needed = if plan.added.contains(&shard.shard) {
            "  (must be ready)"
        } else {
            ""
        };
        println!(
            "    {:>3}  {:<10}  {}{needed}",
            shard.shard,
            topology::state_name(shard.state),
            if shard.ready {
                "ready"
            } else {
                "no ready server"
            }
        );
    }
    let not_ready = planned.not_ready();
    if !not_ready.is_empty() {
        println!(
            "  apply would refuse: no ready server for shard(s) {}",
            topology::list(&not_ready)
        );
    }
}

fn timestamp(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix_ms} ms"))
}
