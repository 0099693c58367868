//! The faults, each injected and healed by [`inject`]; it returns once the fault is healed
//! (the killed process started again, the paused one continued, the link up again).

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::capture::Captured;
use noetl_chaos::cluster::Cluster;

/// Also the value of `--only` (kebab-case, as in results.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    KillGateway,
    KillServer,
    KillWorker,
    PauseServer,
    PauseWorker,
    RestartNats,
    RestartPostgres,
    PartitionServerNats,
    PartitionServerPostgres,
    DuplicateCommand,
    DuplicateResult,
}

impl Fault {
    pub const ALL: [Fault; 11] = [
        Fault::KillGateway,
        Fault::KillServer,
        Fault::KillWorker,
        Fault::PauseServer,
        Fault::PauseWorker,
        Fault::RestartNats,
        Fault::RestartPostgres,
        Fault::PartitionServerNats,
        Fault::PartitionServerPostgres,
        Fault::DuplicateCommand,
        Fault::DuplicateResult,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Fault::KillGateway => "SIGKILL gateway",
            Fault::KillServer => "SIGKILL server",
            Fault::KillWorker => "SIGKILL worker",
            Fault::PauseServer => "SIGSTOP server (> lease, ack wait)",
            Fault::PauseWorker => "SIGSTOP worker (> lease, ack wait)",
            Fault::RestartNats => "nats-server killed, restarted",
            Fault::RestartPostgres => "PostgreSQL stop -m immediate, restarted",
            Fault::PartitionServerNats => "partition server ↔ NATS (netns)",
            Fault::PartitionServerPostgres => "partition server ↔ PostgreSQL (netns)",
            Fault::DuplicateCommand => "duplicate publish of commands",
            Fault::DuplicateResult => "duplicate publish of results",
        }
    }

    pub fn needs_netns(self) -> bool {
        matches!(
            self,
            Fault::PartitionServerNats | Fault::PartitionServerPostgres
        )
    }
}

/// How long faults last.
#[derive(Debug, Clone, Copy)]
pub struct Holds {
    /// SIGSTOP to SIGCONT: longer than the step lease and the ack wait.
    pub pause: Duration,
    /// nats-server or PostgreSQL down.
    pub outage: Duration,
    /// Partition length, chosen at random in this range (seconds).
    pub partition_secs: (u64, u64),
}

/// A xorshift generator: random moments and victims, reproducible from the seed printed.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high.saturating_sub(low) + 1)
    }
}

/// Copies re-sent per duplicate fault.
pub const DUPLICATES: usize = 32;

pub async fn inject(
    fault: Fault,
    cluster: &mut Cluster,
    nats: &async_nats::Client,
    captured: &Captured,
    holds: Holds,
    rng: &mut Rng,
) -> anyhow::Result<String> {
    let server = usize::try_from(rng.below(cluster.servers.len() as u64)).unwrap_or_default();
    let worker = usize::try_from(rng.below(cluster.workers.len() as u64)).unwrap_or_default();
    Ok(match fault {
        Fault::KillGateway => {
            cluster.gateway.kill();
            cluster.gateway.start()?;
            "gateway".to_owned()
        }
        Fault::KillServer => {
            let node = &mut cluster.servers[server];
            node.kill();
            node.start()?;
            node.name.clone()
        }
        Fault::KillWorker => {
            let node = &mut cluster.workers[worker];
            node.kill();
            node.start()?;
            node.name.clone()
        }
        Fault::PauseServer => {
            let node = &cluster.servers[server];
            pause(node, holds.pause).await?;
            format!("{} for {:?}", node.name, holds.pause)
        }
        Fault::PauseWorker => {
            let node = &cluster.workers[worker];
            pause(node, holds.pause).await?;
            format!("{} for {:?}", node.name, holds.pause)
        }
        Fault::RestartNats => {
            cluster.nats.kill();
            tokio::time::sleep(holds.outage).await;
            cluster.nats.restart();
            format!("down {:?}", holds.outage)
        }
        Fault::RestartPostgres => {
            cluster.pg.stop_immediate();
            tokio::time::sleep(holds.outage).await;
            cluster.pg.restart();
            format!("down {:?}", holds.outage)
        }
        Fault::PartitionServerNats | Fault::PartitionServerPostgres => {
            let netns = cluster
                .netns
                .as_ref()
                .context("partitions need the network namespace")?;
            let link = if fault == Fault::PartitionServerNats {
                &netns.nats
            } else {
                &netns.postgres
            };
            let hold =
                Duration::from_secs(rng.between(holds.partition_secs.0, holds.partition_secs.1));
            netns.cut(link)?;
            tokio::time::sleep(hold).await;
            netns.heal(link)?;
            format!("server-1 cut off for {hold:?}")
        }
        Fault::DuplicateCommand => {
            // Without a message id, so JetStream's duplicate window does not drop them: what a
            // publish retried after the window looks like.
            let jetstream = async_nats::jetstream::new(nats.clone());
            let copies = Captured::take(&captured.commands, DUPLICATES);
            for copy in &copies {
                jetstream
                    .publish(copy.subject.clone(), copy.payload.clone())
                    .await
                    .context("failed to publish a duplicate command")?
                    .await
                    .context("JetStream did not store a duplicate command")?;
            }
            format!("{} commands published again", copies.len())
        }
        Fault::DuplicateResult => {
            let copies = Captured::take(&captured.reports, DUPLICATES);
            let mut answered = 0;
            for copy in &copies {
                // Twice at once, racing each other (and the original if it is still in flight).
                let (first, second) = tokio::join!(
                    nats.request(copy.subject.clone(), copy.payload.clone()),
                    nats.request(copy.subject.clone(), copy.payload.clone()),
                );
                answered += usize::from(first.is_ok()) + usize::from(second.is_ok());
            }
            format!(
                "{} reports sent twice more, {answered} answers",
                copies.len()
            )
        }
    })
}

async fn pause(node: &noetl_chaos::cluster::Node, hold: Duration) -> anyhow::Result<()> {
    node.signal("STOP")?;
    tokio::time::sleep(hold).await;
    node.signal("CONT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_holds_stay_within_their_range_and_reach_both_ends() {
        let mut rng = Rng::new(42);
        let drawn: Vec<u64> = (0..1_000).map(|_| rng.between(30, 60)).collect();
        assert!(drawn.iter().all(|d| (30..=60).contains(d)));
        assert!(drawn.contains(&30) && drawn.contains(&60));
    }

    #[test]
    fn only_partitions_need_the_namespace() {
        let needing: Vec<Fault> = Fault::ALL.into_iter().filter(|f| f.needs_netns()).collect();
        assert_eq!(
            needing,
            [Fault::PartitionServerNats, Fault::PartitionServerPostgres]
        );
    }
}
