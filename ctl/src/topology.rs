//! Topology commands (wiki/spec.md §3.3). Every change is computed by `noetl_contract::topology`,
//! checked with `check_successor` against the revision that was read, and written with
//! compare-and-set, so two operators applying at once cannot both win.
//! These are the only commands that talk to NATS; [`run`] carries them out and prints what they
//! found.

use clap::{Subcommand, ValueEnum};
use std::time::Duration;

use noetl_bus::Client;
use noetl_contract::message::{PingReply, ShardStats};
use noetl_contract::playbook::Millis;
use noetl_contract::subject;
use noetl_contract::topology::{Plan, RetiredData};
use noetl_contract::{ShardCount, ShardId, ShardState, Topology};

use crate::exit;
use crate::table::timestamp;

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

/// How long connecting to NATS may take before the command gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a shard's server gets to answer a ping or a stats request.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// A new epoch activates this much later than the grace requires, to cover the time between
/// planning it and the write reaching the bucket (the grace counts from the write).
const WRITE_MARGIN_MS: i64 = 1_000;

/// Why a command did not do what it was asked; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No server has created the topology yet.
    #[error(
        "the cluster has no topology yet: start a server first (it creates one from NOETL_SHARDS)"
    )]
    NoTopology,
    /// The change is not allowed now (a shard not ready, unfinished executions, …).
    #[error("refused: {0}")]
    Refused(String),
    /// Someone else changed the topology between read and write.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Bus(noetl_bus::Error),
}

impl From<noetl_bus::Error> for Error {
    fn from(error: noetl_bus::Error) -> Self {
        match error {
            noetl_bus::Error::Conflict(reason) => Error::Conflict(reason),
            other => Error::Bus(other),
        }
    }
}

impl From<noetl_contract::topology::ChangeError> for Error {
    fn from(error: noetl_contract::topology::ChangeError) -> Self {
        Error::Refused(error.to_string())
    }
}

/// The topology as read, with the revision a write must name.
pub async fn current(client: &Client) -> Result<(Topology, u64), Error> {
    noetl_bus::topology::read(client)
        .await?
        .ok_or(Error::NoTopology)
}

/// A shard, its state and whether a server answers for it with a working database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ShardReadiness {
    pub shard: ShardId,
    pub state: ShardState,
    pub ready: bool,
}

impl ShardReadiness {
    /// `shard  state  ready`, as `show` and `plan` print it.
    fn row(&self) -> String {
        let ready = if self.ready {
            "ready"
        } else {
            "no ready server"
        };
        format!("{:>3}  {:<10}  {ready}", self.shard, state_name(self.state))
    }
}

/// Pings every shard in `shards` in parallel.
pub async fn readiness(
    client: &Client,
    topology: &Topology,
    shards: impl Iterator<Item = ShardId>,
    now_ms: i64,
) -> Vec<ShardReadiness> {
    let shards: Vec<ShardId> = shards.collect();
    let answers = futures::future::join_all(shards.iter().map(|&shard| async move {
        noetl_bus::request::<_, PingReply>(client, subject::shard_ping(shard), &(), ASK_TIMEOUT)
            .await
            .is_ok_and(|reply| reply.database_ok)
    }))
    .await;
    shards
        .into_iter()
        .zip(answers)
        .map(|(shard, ready)| ShardReadiness {
            shard,
            state: topology.shard_state(shard, now_ms),
            ready,
        })
        .collect()
}

/// A plan with the readiness of every shard it concerns.
#[derive(Debug, Clone)]
pub struct Planned {
    pub current: Topology,
    pub revision: u64,
    pub plan: Plan,
    /// Every shard below the larger of the two counts (and any other that ever existed).
    pub shards: Vec<ShardReadiness>,
    pub now_ms: i64,
}

impl Planned {
    /// Shards that must be ready before the plan may be applied: those it adds.
    pub fn not_ready(&self) -> Vec<ShardId> {
        self.shards
            .iter()
            .filter(|s| self.plan.added.contains(&s.shard) && !s.ready)
            .map(|s| s.shard)
            .collect()
    }
}

/// Plans a change to `desired` shards activating no sooner than `lead_ms` (and never sooner
/// than the cluster's grace): a dry run that writes nothing.
pub async fn plan(client: &Client, desired: ShardCount, lead_ms: i64) -> Result<Planned, Error> {
    let (current, revision) = current(client).await?;
    let now_ms = noetl_bus::unix_now_ms();
    let plan = current.plan(desired, now_ms + WRITE_MARGIN_MS, lead_ms)?;
    let upto = current.max_shard_count().get().max(desired.get());
    let shards = readiness(client, &current, (0..upto).map(ShardId::new), now_ms).await;
    Ok(Planned {
        current,
        revision,
        plan,
        shards,
        now_ms,
    })
}

/// What `apply` did.
#[derive(Debug, Clone)]
pub enum Applied {
    /// The topology already had the desired shard count.
    NoChange(Planned),
    /// The new epoch is written; it activates at the plan's activation time.
    Written(Planned),
}

/// Applies a change to `desired` shards: refuses when a shard it adds has no ready server,
/// unless `force`.
pub async fn apply(
    client: &Client,
    desired: ShardCount,
    lead_ms: i64,
    force: bool,
) -> Result<Applied, Error> {
    let mut planned = plan(client, desired, lead_ms).await?;
    if planned.plan.next.is_none() {
        return Ok(Applied::NoChange(planned));
    }
    let not_ready = planned.not_ready();
    if !not_ready.is_empty() && !force {
        return Err(Error::Refused(format!(
            "no ready server for shard(s) {}: start their servers (migrated and subscribed) first, or pass --force",
            list(&not_ready)
        )));
    }
    // Asking the shards took time: plan the activation again from now.
    let now_ms = noetl_bus::unix_now_ms();
    planned.plan = planned
        .current
        .plan(desired, now_ms + WRITE_MARGIN_MS, lead_ms)?;
    let next = planned
        .plan
        .next
        .as_ref()
        .expect("the same change planned again is still a change");
    planned.current.check_successor(next, now_ms)?;
    noetl_bus::topology::write(client, next, planned.revision).await?;
    Ok(Applied::Written(planned))
}

/// Asks a shard's server how many executions it holds and how many are unfinished.
pub async fn stats(client: &Client, shard: ShardId) -> Result<ShardStats, Error> {
    noetl_bus::request(client, subject::shard_stats(shard), &(), ASK_TIMEOUT)
        .await
        .map_err(|e| match e {
            noetl_bus::Error::NoResponders { .. } | noetl_bus::Error::TimedOut { .. } => {
                Error::Refused(format!("no server answers for shard {shard}: {e}"))
            }
            other => Error::Bus(other),
        })
}

/// The progress of a draining shard.
pub async fn drain(client: &Client, shard: ShardId) -> Result<ShardStats, Error> {
    let (topology, _) = current(client).await?;
    let state = topology.shard_state(shard, noetl_bus::unix_now_ms());
    if state != ShardState::Draining || !topology.max_shard_count().contains(shard) {
        return Err(Error::Refused(format!(
            "shard {shard} is {}, not draining: shrink the shard count below {} first (topology apply --shards {shard})",
            state_name(state),
            shard.get() + 1
        )));
    }
    stats(client, shard).await
}

/// Retires a draining shard with no unfinished executions.
pub async fn retire(client: &Client, shard: ShardId, data: RetiredData) -> Result<Topology, Error> {
    let (topology, revision) = current(client).await?;
    let now_ms = noetl_bus::unix_now_ms();
    let next = topology.retire(shard, data, now_ms)?;
    let stats = stats(client, shard).await?;
    if stats.unfinished > 0 {
        return Err(Error::Refused(format!(
            "shard {shard} still has {} unfinished execution(s); wait for them (topology drain {shard} --wait)",
            stats.unfinished
        )));
    }
    topology.check_successor(&next, now_ms)?;
    noetl_bus::topology::write(client, &next, revision).await?;
    Ok(next)
}

pub fn state_name(state: ShardState) -> &'static str {
    match state {
        ShardState::Active => "active",
        ShardState::Activating => "activating",
        ShardState::Draining => "draining",
        ShardState::Retired => "retired",
    }
}

pub fn list(shards: &[ShardId]) -> String {
    shards
        .iter()
        .map(ShardId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs a topology command against the cluster's NATS and returns the exit code; messages go
/// to stdout, errors to stderr.
pub async fn run(nats: &noetl_bus::NatsConfig, command: TopologyCommand) -> u8 {
    let outcome = async {
        let client = connect(nats).await?;
        topology_command(&client, command).await
    }
    .await;
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("noetlctl: {e}");
            match e {
                Error::Refused(_) => exit::REFUSED,
                Error::Conflict(_) => exit::CONFLICT,
                Error::NoTopology | Error::Bus(_) => exit::FAILED,
            }
        }
    }
}

async fn connect(config: &noetl_bus::NatsConfig) -> Result<Client, Error> {
    let url = config.url.as_str();
    let unreachable = || {
        Error::Bus(noetl_bus::Error::Connect(format!(
            "cannot reach NATS at {} within {CONNECT_TIMEOUT:?}",
            noetl_contract::shards::redact(url)
        )))
    };
    let client = tokio::time::timeout(CONNECT_TIMEOUT, noetl_bus::connect(config))
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
            let (current, revision) = current(client).await?;
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
                readiness(client, &current, current.max_shard_count().shards(), now_ms).await;
            println!("shards:");
            for shard in shards {
                println!("  {}", shard.row());
            }
            Ok(0)
        }
        TopologyCommand::Plan { shards, grace } => {
            let planned = plan(client, shard_count(shards)?, lead(grace)).await?;
            print_plan(&planned);
            Ok(0)
        }
        TopologyCommand::Apply {
            shards,
            grace,
            force,
            wait,
        } => match apply(client, shard_count(shards)?, lead(grace), force).await? {
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
                let stats = drain(client, shard).await?;
                println!(
                    "shard {shard}: draining, {} execution(s), {} unfinished",
                    stats.executions, stats.unfinished
                );
                if stats.unfinished == 0 {
                    println!("shard {shard} is drained: noetlctl topology retire {shard} --data keep|discard");
                    return Ok(0);
                }
                if !wait || tokio::time::Instant::now() >= give_up {
                    return Ok(exit::NOT_YET);
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
            retire(client, shard, data).await?;
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
        println!("  shards added:    {}", list(&plan.added));
    }
    if !plan.draining.is_empty() {
        println!(
            "  shards draining: {} (they keep serving their executions; retire them once drained)",
            list(&plan.draining)
        );
    }
    println!("  shard readiness:");
    for shard in &planned.shards {
        let needed = if plan.added.contains(&shard.shard) {
            "  (must be ready)"
        } else {
            ""
        };
        println!("    {}{needed}", shard.row());
    }
    let not_ready = planned.not_ready();
    if !not_ready.is_empty() {
        println!(
            "  apply would refuse: no ready server for shard(s) {}",
            list(&not_ready)
        );
    }
}
