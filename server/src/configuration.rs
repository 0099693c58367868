//! Server settings: defaults < file < `NOETL_*` environment < command-line flags, validated once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use noetl_bus::NatsConfig;
use noetl_contract::message::DEFAULT_TENANT;
use noetl_contract::playbook::{check_pool, MAX_TIMEOUT_MS};
use noetl_contract::shards::ShardMap;
use noetl_contract::template;
use noetl_contract::ShardId;
use noetl_service::CommonSettings;
use serde::Deserialize;

use crate::access::Access;
use crate::orchestrate::Leases;
use crate::render::Rendering;
use crate::retention::Retention;
use noetl_contract::redact::SecretHeaders;

/// The largest `max_loop_items`: a loop's items are written in one statement when it starts.
const MAX_LOOP_ITEMS_LIMIT: u32 = 1_000_000;
/// The flags of `noetl-server` besides `--config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve only these shards (comma-separated positions in NOETL_SHARDS); default: all.
    #[arg(long, value_delimiter = ',')]
    pub shards: Option<Vec<u32>>,
}

/// Raw settings as read from file and environment.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `NOETL_SHARDS`: one database per shard, comma-separated.
    pub shards: Option<String>,
    /// Health, readiness and metrics endpoint.
    pub listen: SocketAddr,
    /// Most executions committed in one transaction.
    pub max_batch: usize,
    /// Transactions per shard that may be committing at once (for submits, and again for reports).
    pub committers_per_shard: usize,
    /// Database connections per shard.
    pub pool_size: u32,
    /// Requests per shard being handled at once; more are refused at once with `overloaded`
    /// (the gateway answers 503 `shard_overloaded`). Pings are always answered.
    pub max_in_flight: usize,
    /// A running step must heartbeat within this, or its attempt is presumed dead.
    pub step_lease_ms: u64,
    /// A dispatched step no worker has started is presumed lost after this.
    pub dispatch_lease_ms: u64,
    /// Upper bound on one attempt of a step that sets no `timeout`.
    pub default_step_timeout_ms: u64,
    /// Upper bound on one attempt of any step, for every tenant: a submit whose step sets a
    /// longer `timeout` (or a longer literal `with.ms` or `with.timeout_ms`) is refused with
    /// `invalid_playbook`. At most the playbook model's one day.
    pub max_step_timeout_ms: u64,
    /// Largest result (its JSON, or a failure's error text) a step may report; a larger one
    /// fails the step with `result_too_large` instead of being stored.
    pub step_result_max_bytes: usize,
    /// Bytes of all the step results of one execution together (their JSON): a result that
    /// would take them over fails its step with `result_too_large`, so the execution stays
    /// readable in one reply under NATS `max_payload`.
    pub execution_results_max_bytes: usize,
    /// Items of one loop: a `loop.in` that renders a longer list fails its step with
    /// `loop_too_large` (a submit whose first steps do is refused with it). 1 to 1,000,000.
    pub max_loop_items: u32,
    /// How deep child executions (`playbook` steps) may nest: a submit whose inline playbooks
    /// nest deeper is refused with `nesting_too_deep` (400), and a `playbook` step of an
    /// execution already this deep fails with it. 0 to 16 (0: no children).
    pub max_child_depth: u32,
    /// Executions of one tenant not yet finished in one shard; a new submit over it is refused
    /// with `tenant_quota_exceeded` (429). 0 (the default): no quota, and the per-tenant
    /// counter rows are neither written nor read.
    pub tenant_max_executions_in_flight: u64,
    /// Grace of a new cluster's topology (only read by the server that creates it): how far in
    /// the future a shard-count change activates, and how long a gateway mints on an
    /// unconfirmed view.
    pub topology_grace_ms: i64,
    /// minijinja instructions all the templates of one step's `with` may run, together
    /// (wiki/limits.md); over it the step fails, or its submit is refused, with
    /// `template_budget_exceeded`.
    pub template_fuel: u64,
    /// Bytes of one rendered value, and of all the rendered values of one step's `with`.
    pub template_max_bytes: usize,
    /// Arrays and objects a rendered value may nest (at most 100).
    pub template_max_depth: usize,
    /// A decision that renders templates and still runs after this is abandoned, and the
    /// steps it renders fail with `template_budget_exceeded`.
    pub template_deadline_ms: u64,
    /// Per pool, the tenants whose steps may target it; a pool not listed is open to every
    /// tenant. A TOML table of lists, or `pool=tenant,tenant;pool=tenant`.
    #[serde(deserialize_with = "noetl_service::settings::table_of_lists")]
    pub pool_tenants: BTreeMap<String, Vec<String>>,
    /// The tenants whose steps may use the `shell` action; a list or one comma-separated
    /// string.
    #[serde(deserialize_with = "noetl_service::settings::list")]
    pub shell_tenants: Vec<String>,
    /// How long a terminal execution is kept (since it finished) before the purge deletes it
    /// with its steps, events and leftovers. Default 30 days.
    pub retention_ms: u64,
    /// Per tenant, a retention of its own: a TOML table of milliseconds, or
    /// `tenant=ms,tenant=ms`.
    #[serde(deserialize_with = "table_of_ms")]
    pub tenant_retention_ms: BTreeMap<String, u64>,
    /// The pause between two passes of the retention purge.
    pub retention_interval_ms: u64,
    /// Executions the purge deletes per transaction.
    pub retention_batch: u64,
    /// Header names of an `http` step's `with.headers` whose values are shown as `<redacted>`
    /// in the event log and step views, besides `Authorization`, `Proxy-Authorization` and
    /// `Cookie` (a list or one comma-separated string; names compared without case).
    #[serde(deserialize_with = "noetl_service::settings::list")]
    pub secret_headers: Vec<String>,
    /// `nats_url`, the NATS credentials and `log_format`.
    #[serde(flatten)]
    pub common: CommonSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            shards: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            max_batch: 1_000,
            committers_per_shard: 1,
            pool_size: 16,
            max_in_flight: 4_096,
            step_lease_ms: 30_000,
            dispatch_lease_ms: 300_000,
            default_step_timeout_ms: 3_600_000,
            max_step_timeout_ms: MAX_TIMEOUT_MS,
            step_result_max_bytes: 256 * 1024,
            execution_results_max_bytes: 512 * 1024,
            max_loop_items: noetl_contract::engine::DEFAULT_MAX_LOOP_ITEMS,
            tenant_max_executions_in_flight: 0,
            max_child_depth: noetl_contract::engine::children::DEFAULT_MAX_CHILD_DEPTH,
            topology_grace_ms: noetl_contract::topology::DEFAULT_GRACE_MS,
            template_fuel: template::DEFAULT_FUEL,
            template_max_bytes: template::DEFAULT_MAX_BYTES,
            template_max_depth: template::DEFAULT_MAX_DEPTH,
            template_deadline_ms: crate::render::DEFAULT_DEADLINE_MS,
            pool_tenants: BTreeMap::new(),
            shell_tenants: vec![DEFAULT_TENANT.to_owned()],
            retention_ms: DEFAULT_RETENTION_MS,
            tenant_retention_ms: BTreeMap::new(),
            retention_interval_ms: 60_000,
            retention_batch: 500,
            secret_headers: vec!["X-Api-Key".to_owned()],
            common: CommonSettings::default(),
        }
    }
}

/// `retention_ms` by default: 30 days.
pub const DEFAULT_RETENTION_MS: u64 = 30 * 24 * 3_600_000;

/// A table of milliseconds per name: a TOML table, or one string `name=ms,name=ms` (what an
/// environment variable holds).
fn table_of_ms<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Table {
        Table(BTreeMap<String, u64>),
        Joined(String),
    }
    match Table::deserialize(deserializer)? {
        Table::Table(table) => Ok(table),
        Table::Joined(joined) => joined
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(|part| {
                let (name, ms) = part.split_once('=').ok_or_else(|| {
                    serde::de::Error::custom(format!("{part:?} is not name=milliseconds"))
                })?;
                let ms = ms.trim().parse().map_err(|_| {
                    serde::de::Error::custom(format!("{ms:?} is not a number of milliseconds"))
                })?;
                Ok((name.trim().to_owned(), ms))
            })
            .collect(),
    }
}

/// Validated configuration of one server process.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub nats: NatsConfig,
    pub shards: ShardMap,
    /// The shards this process serves, a subset of `shards`.
    pub serve: Vec<ShardId>,
    pub listen: SocketAddr,
    pub max_batch: usize,
    pub committers_per_shard: usize,
    pub pool_size: u32,
    pub max_in_flight: usize,
    pub leases: Leases,
    pub step_result_max_bytes: usize,
    pub execution_results_max_bytes: usize,
    pub max_loop_items: u32,
    pub tenant_max_executions_in_flight: u64,
    pub max_child_depth: u32,
    pub rendering: Rendering,
    pub topology_grace_ms: i64,
    /// `pool_tenants` and `shell_tenants`.
    pub access: Access,
    /// `retention_ms`, `tenant_retention_ms`, `retention_interval_ms`, `retention_batch`.
    pub retention: Retention,
}

impl ServerConfig {
    /// `tenant_max_executions_in_flight`, when a quota is set.
    pub fn tenant_quota(&self) -> Option<u64> {
        Some(self.tenant_max_executions_in_flight).filter(|&quota| quota > 0)
    }

    pub fn from_settings(settings: Settings, only: Option<Vec<u32>>) -> anyhow::Result<Self> {
        let raw = settings
            .shards
            .context("NOETL_SHARDS is not set: list one PostgreSQL database per shard")?;
        let shards = ShardMap::parse(&raw)?;
        let serve: Vec<ShardId> = match only {
            None => shards.count().shards().collect(),
            Some(list) => {
                let mut serve = Vec::with_capacity(list.len());
                for index in list {
                    let shard = ShardId::new(index);
                    if !shards.count().contains(shard) {
                        bail!(
                            "--shards names shard {index}, but NOETL_SHARDS lists only {} shards (0..{})",
                            shards.count(),
                            shards.count().get() - 1
                        );
                    }
                    if !serve.contains(&shard) {
                        serve.push(shard);
                    }
                }
                serve
            }
        };
        if serve.is_empty() {
            bail!("--shards is empty: name at least one shard to serve");
        }
        for (name, value) in [
            ("max_batch", settings.max_batch),
            ("committers_per_shard", settings.committers_per_shard),
            ("max_in_flight", settings.max_in_flight),
            ("pool_size", settings.pool_size as usize),
            ("step_result_max_bytes", settings.step_result_max_bytes),
            (
                "execution_results_max_bytes",
                settings.execution_results_max_bytes,
            ),
            ("max_loop_items", settings.max_loop_items as usize),
            ("step_lease_ms", settings.step_lease_ms as usize),
            ("dispatch_lease_ms", settings.dispatch_lease_ms as usize),
            (
                "default_step_timeout_ms",
                settings.default_step_timeout_ms as usize,
            ),
            ("max_step_timeout_ms", settings.max_step_timeout_ms as usize),
            ("template_fuel", settings.template_fuel as usize),
            ("retention_ms", settings.retention_ms as usize),
            (
                "retention_interval_ms",
                settings.retention_interval_ms as usize,
            ),
            ("retention_batch", settings.retention_batch as usize),
            ("template_max_bytes", settings.template_max_bytes),
            ("template_max_depth", settings.template_max_depth),
            (
                "template_deadline_ms",
                settings.template_deadline_ms as usize,
            ),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if settings.max_loop_items > MAX_LOOP_ITEMS_LIMIT {
            bail!("max_loop_items must be at most {MAX_LOOP_ITEMS_LIMIT}");
        }
        if settings.template_max_depth > template::MAX_DEPTH_LIMIT {
            bail!(
                "template_max_depth must be at most {}",
                template::MAX_DEPTH_LIMIT
            );
        }
        if settings.max_child_depth > noetl_contract::playbook::MAX_NESTING {
            bail!(
                "max_child_depth must be at most {}",
                noetl_contract::playbook::MAX_NESTING
            );
        }
        if settings.max_step_timeout_ms > MAX_TIMEOUT_MS {
            bail!("max_step_timeout_ms must be at most {MAX_TIMEOUT_MS} (one day)");
        }
        if settings.default_step_timeout_ms > settings.max_step_timeout_ms {
            bail!(
                "default_step_timeout_ms ({}) must not exceed max_step_timeout_ms ({}): \
                 lower default_step_timeout_ms or raise max_step_timeout_ms",
                settings.default_step_timeout_ms,
                settings.max_step_timeout_ms
            );
        }
        let access = access(&settings.pool_tenants, &settings.shell_tenants)?;
        let retention = Retention {
            default: Duration::from_millis(settings.retention_ms),
            tenants: tenant_retention(&settings.tenant_retention_ms)?,
            interval: Duration::from_millis(settings.retention_interval_ms),
            batch: i64::try_from(settings.retention_batch).unwrap_or(i64::MAX),
        };
        Ok(Self {
            nats: settings.common.nats("noetl-server"),
            shards,
            serve,
            listen: settings.listen,
            max_batch: settings.max_batch,
            committers_per_shard: settings.committers_per_shard,
            pool_size: settings.pool_size,
            max_in_flight: settings.max_in_flight,
            leases: Leases {
                step_lease_ms: settings.step_lease_ms,
                dispatch_lease_ms: settings.dispatch_lease_ms,
                default_timeout_ms: settings.default_step_timeout_ms,
                max_timeout_ms: settings.max_step_timeout_ms,
            },
            step_result_max_bytes: settings.step_result_max_bytes,
            execution_results_max_bytes: settings.execution_results_max_bytes,
            max_loop_items: settings.max_loop_items,
            tenant_max_executions_in_flight: settings.tenant_max_executions_in_flight,
            max_child_depth: settings.max_child_depth,
            rendering: Rendering {
                budget: template::Budget {
                    fuel: settings.template_fuel,
                    max_bytes: settings.template_max_bytes,
                    max_depth: settings.template_max_depth,
                },
                deadline: std::time::Duration::from_millis(settings.template_deadline_ms),
                secret_headers: SecretHeaders::new(&settings.secret_headers),
            },
            topology_grace_ms: settings.topology_grace_ms,
            access,
            retention,
        })
    }
}

/// `tenant_retention_ms`, validated: no empty tenant, no retention of 0.
fn tenant_retention(table: &BTreeMap<String, u64>) -> anyhow::Result<BTreeMap<String, Duration>> {
    table
        .iter()
        .map(|(tenant, &ms)| {
            anyhow::ensure!(
                !tenant.is_empty(),
                "tenant_retention_ms names an empty tenant"
            );
            anyhow::ensure!(
                ms > 0,
                "tenant_retention_ms for {tenant:?} must be at least 1"
            );
            Ok((tenant.clone(), Duration::from_millis(ms)))
        })
        .collect()
}

/// `pool_tenants` and `shell_tenants`, validated: pool names as in playbooks, tenant names
/// trimmed and not empty, and no pool listed without a tenant.
fn access(
    pool_tenants: &BTreeMap<String, Vec<String>>,
    shell_tenants: &[String],
) -> anyhow::Result<Access> {
    let tenants = |what: &str, names: &[String]| {
        names
            .iter()
            .map(|name| {
                let name = name.trim();
                anyhow::ensure!(!name.is_empty(), "{what} names an empty tenant");
                Ok(name.to_owned())
            })
            .collect::<anyhow::Result<std::collections::BTreeSet<_>>>()
    };
    let mut pools = BTreeMap::new();
    for (pool, names) in pool_tenants {
        check_pool("pool_tenants", pool).context("invalid pool name in pool_tenants")?;
        anyhow::ensure!(
            !names.is_empty(),
            "pool_tenants for pool {pool:?} lists no tenant (pool=tenant,tenant)"
        );
        pools.insert(pool.clone(), tenants("pool_tenants", names)?);
    }
    Ok(Access {
        pools,
        shell: tenants("shell_tenants", shell_tenants)?,
    })
}

#[cfg(test)]
mod tests;
