//! The worker: runs the steps of its pools and reports each result to the shard that owns it.
//!
//! - [`configuration`]: settings, flags (`--pools`, `--allow-shell`) and their validation.
//! - [`actions`]: the [`actions::Action`] trait and the built-ins, one file each.
//! - [`egress`]: what the `http` action may reach (address classes, per-pool allow-lists).
//! - [`runner`]: the only module that talks to NATS: pulling commands, heartbeats, reports
//!   and acks.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.
//!
//! [`run`] wires them together; `main.rs` only parses arguments and calls it.

pub mod actions;
pub mod configuration;
pub mod egress;
pub mod http;
pub mod runner;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use configuration::WorkerConfig;

/// Runs the worker until `cancel`, then drains: stops pulling, lets the steps in hand finish
/// and report, and returns.
pub async fn run(mut config: WorkerConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    // Before anything records a metric, so nothing is counted into the void.
    noetl_service::install_metrics();
    config.http.resolve_denied_hosts().await;
    for pool in config.http.allow.keys() {
        if !config.pools.contains(pool) {
            tracing::warn!(%pool, "http_allow names a pool this worker does not serve");
        }
    }
    let registry = actions::Registry::builtin(
        config.allow_shell,
        config.max_output_bytes,
        &config.http,
        &config.pools,
    )
    .context("failed to set up the actions")?;
    if config.allow_shell {
        tracing::warn!("the shell action is allowed: steps may run programs on this host");
    }
    let client = noetl_bus::connect(&config.nats).await?;

    let ready_client = client.clone();
    let http = noetl_service::ops::serve(config.listen, cancel.clone(), move || {
        http::readiness(ready_client.clone())
    })
    .await?;

    tracing::info!(
        worker = %config.name,
        pools = ?config.pools,
        concurrency = config.concurrency,
        "worker started"
    );
    runner::run(client.clone(), &config, registry, cancel).await;
    client.flush().await.ok();
    http.await.context("the HTTP task panicked")??;
    tracing::info!("worker stopped");
    Ok(())
}
