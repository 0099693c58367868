//! Gateway settings: defaults < file < `NOETL_*` environment, validated once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use noetl_bus::NatsConfig;
use noetl_contract::NodeId;
use noetl_service::LogFormat;
use serde::Deserialize;

/// Command-line flags of `noetl-gateway`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "noetl-gateway",
    version,
    about = "HTTP gateway of noetl-dispatch"
)]
pub struct Args {
    /// Settings file (TOML); `NOETL_*` environment variables override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub nats_url: String,
    pub listen: SocketAddr,
    /// Static node id (0–1023) for the snowflake ids this gateway mints.
    pub node_id: u32,
    /// How long to wait for a shard to answer.
    pub request_timeout_ms: u64,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    pub log_format: LogFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: 0,
            request_timeout_ms: 5_000,
            body_limit_bytes: 1024 * 1024,
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub nats: NatsConfig,
    pub listen: SocketAddr,
    pub node_id: NodeId,
    pub request_timeout: Duration,
    pub body_limit_bytes: usize,
}

impl GatewayConfig {
    pub fn from_settings(settings: Settings) -> anyhow::Result<Self> {
        let node_id = NodeId::try_from(settings.node_id).context("NOETL_NODE_ID")?;
        anyhow::ensure!(
            settings.request_timeout_ms > 0,
            "request_timeout_ms must be positive"
        );
        anyhow::ensure!(
            settings.body_limit_bytes > 0,
            "body_limit_bytes must be positive"
        );
        Ok(Self {
            nats: NatsConfig {
                url: settings.nats_url,
                client_name: format!("noetl-gateway-{node_id}"),
            },
            listen: settings.listen,
            node_id,
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            body_limit_bytes: settings.body_limit_bytes,
        })
    }
}
