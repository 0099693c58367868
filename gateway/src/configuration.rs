//! Gateway settings: defaults < file < `NOETL_*` environment, validated once.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use noetl_bus::catalog::Quota;
use noetl_bus::nodes::{NodeChoice, NodeLeases};
use noetl_bus::NatsConfig;
use noetl_contract::NodeId;
use noetl_service::CommonSettings;
use serde::Deserialize;

use crate::auth::Auth;
use crate::limits::{StreamLimits, TenantRate};
use crate::serve::Connections;

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// HTTP address of the API.
    pub listen: SocketAddr,
    /// Node id (0–1023) for the snowflake ids this gateway mints; unset: any free one. Either
    /// way the gateway mints only while it holds the id's lease in NATS.
    pub node_id: Option<u32>,
    /// How long a node-id lease outlives the gateway's last renewal.
    pub node_lease_ttl_ms: u64,
    /// How long an Idempotency-Key is remembered (at least 24; fixed when the bucket is
    /// created by the first gateway).
    pub idempotency_ttl_hours: u64,
    /// How long to wait for a shard to answer.
    pub request_timeout_ms: u64,
    /// Deadline of a whole HTTP request, body included (504 `request_timeout` past it); at
    /// least `request_timeout_ms`.
    pub http_timeout_ms: u64,
    /// Requests per second each tenant may make (429 `rate_limited` past it); 0: unlimited.
    pub rate_limit_per_second: u32,
    /// Requests a tenant may make at once above its rate; 0: as many as `rate_limit_per_second`.
    pub rate_limit_burst: u32,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Time a connection has to send a request's line and headers, counted from when the
    /// gateway starts waiting for them (a new connection, or an idle one between requests); a
    /// connection that takes longer is closed.
    pub header_read_timeout_ms: u64,
    /// Connections served at once; past it the gateway accepts no more until one closes, and
    /// new ones wait in the listen backlog.
    pub max_connections: usize,
    /// Event streams (`/stream`) one tenant may have open at once on this gateway (429
    /// `stream_quota_exceeded` past it).
    pub sse_streams_per_tenant: usize,
    /// Event streams this gateway keeps open at once, all tenants together (503
    /// `too_many_streams` past it); less than `max_connections`.
    pub max_sse_streams: usize,
    /// Versions a tenant's catalog may hold, all its playbooks together (409
    /// `catalog_quota_exceeded` past it).
    pub catalog_max_versions: u64,
    /// Bytes a tenant's catalog may hold, all its stored versions together (409
    /// `catalog_quota_exceeded` past it).
    pub catalog_max_bytes: u64,
    /// Versions of one playbook a tenant's catalog keeps: publishing one more deletes the
    /// oldest past it. 0 (the default): every version is kept, up to the quota.
    pub catalog_keep_versions: u32,
    /// TOML file of bearer tokens (name, tenant, scopes, SHA-256 digest); unset: the API is
    /// open and every caller is the tenant `default` with every scope.
    pub auth_tokens_file: Option<PathBuf>,
    /// Whether `/healthz`, `/readyz` and `/metrics` need a token too.
    pub auth_protect_ops: bool,
    /// `nats_url`, the NATS credentials and `log_format`.
    #[serde(flatten)]
    pub common: CommonSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: None,
            node_lease_ttl_ms: 15_000,
            idempotency_ttl_hours: 24,
            request_timeout_ms: 5_000,
            http_timeout_ms: 30_000,
            rate_limit_per_second: 0,
            rate_limit_burst: 0,
            body_limit_bytes: 1024 * 1024,
            header_read_timeout_ms: 10_000,
            max_connections: 4_096,
            sse_streams_per_tenant: 32,
            max_sse_streams: 1_024,
            catalog_max_versions: 1_000,
            catalog_max_bytes: 64 * 1024 * 1024,
            catalog_keep_versions: 0,
            auth_tokens_file: None,
            auth_protect_ops: false,
            common: CommonSettings::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub nats: NatsConfig,
    pub listen: SocketAddr,
    pub node_leases: NodeLeases,
    pub idempotency_ttl: Duration,
    pub request_timeout: Duration,
    pub http_timeout: Duration,
    pub rate: Option<TenantRate>,
    pub body_limit_bytes: usize,
    pub connections: Connections,
    pub streams: StreamLimits,
    pub catalog_quota: Quota,
    pub auth: Auth,
}

impl GatewayConfig {
    pub fn from_settings(settings: Settings) -> anyhow::Result<Self> {
        let choice = match settings.node_id {
            Some(raw) => NodeChoice::Fixed(NodeId::try_from(raw).context("NOETL_NODE_ID")?),
            None => NodeChoice::Any,
        };
        anyhow::ensure!(
            settings.idempotency_ttl_hours >= 24,
            "idempotency_ttl_hours must be at least 24 (idempotency keys are kept at least a day)"
        );
        anyhow::ensure!(
            settings.node_lease_ttl_ms >= 1_000,
            "node_lease_ttl_ms must be at least 1000"
        );
        anyhow::ensure!(
            settings.request_timeout_ms > 0,
            "request_timeout_ms must be positive"
        );
        anyhow::ensure!(
            settings.http_timeout_ms >= settings.request_timeout_ms,
            "http_timeout_ms ({}) must be at least request_timeout_ms ({}): a shard's answer \
             must be able to arrive before the request's deadline",
            settings.http_timeout_ms,
            settings.request_timeout_ms
        );
        let rate = NonZeroU32::new(settings.rate_limit_per_second).map(|per_second| TenantRate {
            per_second,
            burst: NonZeroU32::new(settings.rate_limit_burst).unwrap_or(per_second),
        });
        anyhow::ensure!(
            settings.body_limit_bytes > 0,
            "body_limit_bytes must be positive"
        );
        anyhow::ensure!(
            settings.header_read_timeout_ms > 0 && settings.max_connections > 0,
            "header_read_timeout_ms and max_connections must be positive"
        );
        anyhow::ensure!(
            0 < settings.sse_streams_per_tenant
                && settings.sse_streams_per_tenant <= settings.max_sse_streams
                && settings.max_sse_streams < settings.max_connections,
            "need 0 < sse_streams_per_tenant ({}) <= max_sse_streams ({}) < max_connections \
             ({}): streams alone must never hold every connection",
            settings.sse_streams_per_tenant,
            settings.max_sse_streams,
            settings.max_connections
        );
        anyhow::ensure!(
            settings.catalog_max_versions > 0 && settings.catalog_max_bytes > 0,
            "catalog_max_versions and catalog_max_bytes must be positive"
        );
        Ok(Self {
            nats: settings.common.nats("noetl-gateway"),
            listen: settings.listen,
            node_leases: NodeLeases {
                choice,
                ttl: Duration::from_millis(settings.node_lease_ttl_ms),
            },
            idempotency_ttl: Duration::from_secs(settings.idempotency_ttl_hours * 3_600),
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            http_timeout: Duration::from_millis(settings.http_timeout_ms),
            rate,
            body_limit_bytes: settings.body_limit_bytes,
            connections: Connections {
                max: settings.max_connections,
                header_read_timeout: Duration::from_millis(settings.header_read_timeout_ms),
            },
            streams: StreamLimits {
                per_tenant: settings.sse_streams_per_tenant,
                total: settings.max_sse_streams,
            },
            catalog_quota: Quota {
                max_versions: settings.catalog_max_versions,
                max_bytes: settings.catalog_max_bytes,
                keep_versions: settings.catalog_keep_versions,
            },
            auth: match &settings.auth_tokens_file {
                Some(path) => Auth::from_file(path, settings.auth_protect_ops)?,
                None => Auth::open(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(tune: impl FnOnce(&mut Settings)) -> anyhow::Result<GatewayConfig> {
        let mut settings = Settings::default();
        tune(&mut settings);
        GatewayConfig::from_settings(settings)
    }

    #[test]
    fn the_defaults_bound_connections_and_streams() {
        let config = with(|_| {}).expect("the defaults are valid");
        assert_eq!(config.connections.max, 4_096);
        assert_eq!(
            config.connections.header_read_timeout,
            Duration::from_secs(10)
        );
        assert_eq!(
            config.streams,
            StreamLimits {
                per_tenant: 32,
                total: 1_024
            }
        );
    }

    #[test]
    fn streams_may_never_hold_every_connection() {
        let refused = [
            with(|s| s.max_sse_streams = s.max_connections),
            with(|s| s.sse_streams_per_tenant = s.max_sse_streams + 1),
            with(|s| s.sse_streams_per_tenant = 0),
            with(|s| s.max_connections = 0),
            with(|s| s.header_read_timeout_ms = 0),
        ];
        for outcome in refused {
            assert!(outcome.is_err(), "{outcome:?}");
        }
    }
}
