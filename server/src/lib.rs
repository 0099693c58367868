//! The shard server: owns shard databases, commits executions, answers over NATS.
//!
//! - [`configuration`]: settings and their validation.
//! - [`persistence`]: every query against a shard database; it names no other module.
//! - [`batch`]: group work: many requests per transaction.
//! - [`commit`]: group commit of submits, many executions per transaction.
//! - [`orchestrate`]: applies the engine's decisions under the execution's row lock.
//! - [`relay`]: publishes the outbox of commands to JetStream.
//! - [`leases`]: re-dispatches attempts whose worker went silent.
//! - [`retention`]: purges terminal executions past their tenant's retention.
//! - [`shard`]: a shard's subscriptions and request handling (route check first).
//! - [`topology`]: checks each topology document against the epochs the databases recorded.
//! - [`http`]: the readiness check behind `/readyz` (served with `/healthz` and `/metrics`).
//!
//! [`run`] wires them together; `main.rs` only parses arguments and calls it.

pub mod access;
pub mod batch;
pub mod commit;
pub mod configuration;
pub mod http;
pub mod leases;
pub mod orchestrate;
pub mod persistence;
pub mod relay;
pub mod render;
pub mod retention;
pub mod shard;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use noetl_contract::Topology;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use configuration::ServerConfig;

const START_RETRY: Duration = Duration::from_secs(1);
/// How long the server's node-id lease lives unrenewed (the gateways' default).
const NODE_LEASE_TTL: Duration = Duration::from_secs(15);
/// Connections per shard for heartbeats and the relay's deletes of handed-off commands (single
/// statements that do not wait for the WAL).
const RELAXED_CONNECTIONS: u32 = 5;

/// Runs the server until `cancel`, then drains: stops taking requests, finishes those in
/// flight, commits what is queued.
pub async fn run(config: ServerConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    // Before anything records a metric, so nothing is counted into the void.
    noetl_service::install_metrics();
    let client = noetl_bus::connect(&config.nats).await?;

    // The first server of a new cluster creates the topology from NOETL_SHARDS; later, shard
    // counts change only through topology epochs (noetlctl topology apply), and NOETL_SHARDS
    // may list shards the topology does not route to yet.
    let configured = Topology::bootstrap(config.shards.count(), config.topology_grace_ms)
        .context("topology_grace_ms")?;
    let current = retry_bus("read or create the cluster topology", &cancel, || {
        noetl_bus::topology::ensure(&client, &configured)
    })
    .await?;
    tracing::info!(epoch = current.latest().epoch, shard_count = %current.latest().shard_count, "cluster topology");
    let follower = noetl_bus::topology::watch(client.clone(), cancel.child_token());

    let mut pools = Vec::with_capacity(config.serve.len());
    for &shard in &config.serve {
        let dsn = config
            .shards
            .get(shard)
            .context("serve only lists shards of NOETL_SHARDS")?;
        let pool = persistence::pool(dsn, config.pool_size)?;
        prepare_database(&pool, shard, dsn, &cancel).await?;
        pools.push((shard, pool));
    }

    let accepted = topology::accept(
        follower.receiver(),
        pools.iter().map(|(_, pool)| pool.clone()).collect(),
        cancel.child_token(),
    );
    let subscribed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let readiness = http::Readiness {
        client: client.clone(),
        shards: pools.clone(),
        accepted: accepted.clone(),
        subscribed: subscribed.clone(),
    };
    let http = noetl_service::ops::serve(config.listen, cancel.clone(), move || {
        readiness.clone().check()
    })
    .await?;
    // Shards are subscribed only once a topology passed the check against their databases.
    let mut routing = accepted.topology.clone();
    tokio::select! {
        () = cancel.cancelled() => bail!("cancelled while waiting for an acceptable topology"),
        seen = routing.wait_for(Option::is_some) => { seen.context("the topology check stopped")?; }
    }

    retry_bus("open the command stream", &cancel, || {
        noetl_bus::commands::stream(&client)
    })
    .await?;
    let raised = retry_bus("raise the replicas of the streams", &cancel, || {
        noetl_bus::raise_replicas(&client)
    })
    .await?;
    if !raised.is_empty() {
        tracing::info!(streams = ?raised, "raised the replicas of JetStream streams to nats_replicas");
    }
    // One node-id lease for the whole process, and one generator under it for all its shards,
    // so the children it starts never share an id with anyone's.
    let holder = format!("noetl-server {} pid {}", config.listen, std::process::id());
    let node_leases = noetl_bus::nodes::NodeLeases {
        choice: noetl_bus::nodes::NodeChoice::Any,
        ttl: NODE_LEASE_TTL,
    };
    let lease = noetl_bus::nodes::hold(client.clone(), node_leases, holder, cancel.child_token());
    let children = Arc::new(orchestrate::Children::new(lease, config.max_child_depth));
    let committers = TaskTracker::new();
    let background = TaskTracker::new();
    let mut shards = Vec::with_capacity(pools.len());
    for (shard, pool) in pools {
        let dsn = config
            .shards
            .get(shard)
            .context("serve only lists shards of NOETL_SHARDS")?;
        // Each committer task, and each task applying report batches, holds one connection.
        let connections = u32::try_from(config.committers_per_shard).unwrap_or(u32::MAX);
        let pools = persistence::Pools {
            pool: pool.clone(),
            relaxed: persistence::relaxed_pool(dsn, RELAXED_CONNECTIONS)?,
            reports: persistence::generic_pool(dsn, connections)?,
        };
        if config.tenant_quota().is_some() {
            persistence::recount_tenant_executions(&pool).await?;
        }
        let (relay, feed) = relay::Relay::new(shard);
        let orchestrator = orchestrate::Orchestrator::new(
            shard,
            pools.clone(),
            config.leases,
            config.rendering.clone(),
            orchestrate::ExecutionLimits {
                results_max_bytes: config.execution_results_max_bytes,
                max_loop_items: config.max_loop_items,
                tenant_quota: config.tenant_quota().is_some(),
            },
            relay.clone(),
            children.clone(),
            orchestrate::Batching {
                tracker: &committers,
                max_batch: config.max_batch,
                parallel: config.committers_per_shard,
            },
        );
        let dead_letters = orchestrator.clone();
        let dead_letter = move |dead: relay::Dead| {
            let orchestrator = dead_letters.clone();
            async move {
                let (command, undeliverable) = match dead {
                    relay::Dead::TooLarge(command, undeliverable) => (command, undeliverable),
                    relay::Dead::Refused(start, error) => {
                        return orchestrator.refuse_child(&start, &error).await;
                    }
                };
                match orchestrator.dead_letter(&command, undeliverable).await {
                    Ok(orchestrate::Applied::Changed(_)) => {
                        metrics::counter!("noetl_server_commands_dead_lettered_total", "shard" => shard.to_string())
                            .increment(1);
                    }
                    Ok(_) => {}
                    // The row stays in the outbox; the next pass tries again.
                    Err(e) => tracing::warn!(%shard, error = %e, "dead-lettering a command failed"),
                }
                true
            }
        };
        background.spawn(relay::run(
            shard,
            pools,
            (client.clone(), accepted.topology.clone()),
            feed,
            dead_letter,
            cancel.clone(),
        ));
        background.spawn(leases::run(orchestrator.clone(), cancel.clone()));
        background.spawn(retention::run(
            shard,
            pool.clone(),
            config.retention.clone(),
            cancel.clone(),
        ));
        let committer = commit::Committer::spawn(
            shard,
            persistence::generic_pool(dsn, connections)?,
            relay,
            config.tenant_quota(),
            config.max_batch,
            config.committers_per_shard,
            &committers,
        );
        let state = Arc::new(shard::Shard {
            id: shard,
            client: client.clone(),
            pool,
            committer,
            orchestrator,
            topology: accepted.topology.clone(),
            step_result_max_bytes: config.step_result_max_bytes,
            access: config.access.clone(),
            max_child_depth: config.max_child_depth,
        });
        shards.push(tokio::spawn(shard::serve(
            state,
            config.max_in_flight,
            subscribed.clone(),
            cancel.clone(),
        )));
    }
    committers.close();
    for served in futures::future::join_all(shards).await {
        served.context("a shard task panicked")??;
    }
    // Every handler (and so every Committer clone) is gone: committers drain their queue and stop.
    committers.wait().await;
    background.close();
    background.wait().await;
    client.flush().await.ok();
    http.await.context("the HTTP task panicked")??;
    Ok(())
}

/// Retries a start-up step that talks to NATS: the bus may still be starting, or too busy to
/// answer a JetStream request in time; neither is a reason to give up.
async fn retry_bus<T, F, Fut>(
    what: &str,
    cancel: &CancellationToken,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, noetl_bus::Error>>,
{
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) => tracing::warn!(error = %e, "failed to {what}; retrying"),
        }
        tokio::select! {
            () = cancel.cancelled() => bail!("cancelled while trying to {what}"),
            () = tokio::time::sleep(START_RETRY) => {}
        }
    }
}

/// Waits for the database, migrates it and checks it is the shard NOETL_SHARDS says it is.
/// An unreachable database is retried (it may still be starting); a wrong one is fatal.
async fn prepare_database(
    pool: &sqlx::PgPool,
    shard: noetl_contract::ShardId,
    dsn: &noetl_contract::shards::ShardDsn,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        match persistence::migrate(pool).await {
            Ok(()) => break,
            Err(persistence::Error::Migrate(sqlx::migrate::MigrateError::Execute(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut,
            ))) => {
                tracing::warn!(%shard, database = %dsn, "shard database unreachable; retrying");
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to migrate shard {shard} ({dsn})"))
            }
        }
        tokio::select! {
            () = cancel.cancelled() => bail!("cancelled while waiting for shard {shard}'s database"),
            () = tokio::time::sleep(START_RETRY) => {}
        }
    }
    persistence::claim_shard(pool, shard)
        .await
        .with_context(|| format!("shard {shard} ({dsn})"))?;
    tracing::info!(%shard, database = %dsn, "shard database ready");
    Ok(())
}
