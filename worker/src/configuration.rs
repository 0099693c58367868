//! Worker settings: defaults < file < `NOETL_*` environment < command-line flags, validated once.
//!
//! `--allow-shell` exists only as a flag, on purpose: running commands on the worker's host is
//! a decision made where the worker is started, not something a settings file or an inherited
//! environment variable can switch on unnoticed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context};
use noetl_bus::NatsConfig;
use noetl_contract::playbook::{check_pool, DEFAULT_POOL};
use noetl_service::CommonSettings;
use serde::Deserialize;

use crate::egress::{Egress, Rules};

/// Most redirects an `http` step may be let follow.
const MAX_REDIRECTS: usize = 20;

/// The flags of `noetl-worker` besides `--config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Allow the `shell` action (runs programs on this host); refused otherwise.
    #[arg(long)]
    pub allow_shell: bool,
    /// Serve these pools (comma-separated); overrides the `pools` setting.
    #[arg(long, value_delimiter = ',')]
    pub pools: Option<Vec<String>>,
}

/// Raw settings as read from file and environment.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Pools to consume; `NOETL_POOLS=a,b` or a TOML list.
    #[serde(deserialize_with = "noetl_service::settings::list")]
    pub pools: Vec<String>,
    /// Steps running at once, across all pools.
    pub concurrency: usize,
    /// Finished steps whose result may wait at once for the owning shard to record it. Such a
    /// step holds one of these rather than one of `concurrency`, so a shard that takes its time
    /// to answer does not idle the worker; when all are taken, finished steps keep their running
    /// slot until one is free.
    pub pending_reports: usize,
    /// Names this worker in reports and heartbeats; default `<hostname>-<pid>`.
    pub name: Option<String>,
    /// Cap on each captured output (HTTP body, stdout, stderr).
    pub max_output_bytes: usize,
    /// How long JetStream waits for an ack (or a progress signal) before redelivering.
    pub ack_wait_ms: u64,
    /// How long to wait for the shard to answer a heartbeat or a report.
    pub request_timeout_ms: u64,
    /// How long a finished step's report is sent again while its shard does not record it;
    /// then the worker gives up (acks the command) and the shard's lease on the attempt runs
    /// out, which retries or fails the step, so a report the shard keeps refusing does not hold
    /// a slot forever.
    pub report_deadline_ms: u64,
    /// Health, readiness and metrics endpoint.
    pub listen: SocketAddr,
    /// Per pool, what its `http` steps may reach besides the public internet: CIDRs, addresses,
    /// host names, `*.domain`; a TOML table of lists, or `pool=entry,entry;pool=entry`.
    #[serde(deserialize_with = "noetl_service::settings::table_of_lists")]
    pub http_allow: BTreeMap<String, Vec<String>>,
    /// What no pool's `http` steps may reach besides the default-denied ranges (the cluster's
    /// service CIDR, say); a list or one comma-separated string.
    #[serde(deserialize_with = "noetl_service::settings::list")]
    pub http_deny: Vec<String>,
    /// Redirects an `http` step follows, each checked as the first request; 0: none (a 3xx
    /// answer is the result).
    pub http_max_redirects: usize,
    /// Longest an `http` request may take, connecting to reading the body.
    pub http_timeout_ms: u64,
    /// `nats_url`, the NATS credentials and `log_format`.
    #[serde(flatten)]
    pub common: CommonSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            pools: vec![DEFAULT_POOL.to_owned()],
            concurrency: 64,
            pending_reports: 256,
            name: None,
            max_output_bytes: 64 * 1024,
            ack_wait_ms: 30_000,
            request_timeout_ms: 5_000,
            report_deadline_ms: 600_000,
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            http_allow: BTreeMap::new(),
            http_deny: Vec::new(),
            http_max_redirects: 0,
            http_timeout_ms: 30_000,
            common: CommonSettings::default(),
        }
    }
}

/// Validated configuration of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub nats: NatsConfig,
    /// Distinct, valid pool names; at least one.
    pub pools: Vec<String>,
    pub concurrency: usize,
    pub pending_reports: usize,
    pub name: String,
    pub max_output_bytes: usize,
    pub ack_wait: Duration,
    pub request_timeout: Duration,
    pub report_deadline: Duration,
    pub listen: SocketAddr,
    pub allow_shell: bool,
    /// What `http` steps may reach, and how long they may take.
    pub http: Egress,
}

impl WorkerConfig {
    /// Applies the flags over the settings and validates the result.
    pub fn from_settings(
        settings: Settings,
        pools: Option<Vec<String>>,
        allow_shell: bool,
    ) -> anyhow::Result<Self> {
        let mut distinct: Vec<String> = Vec::new();
        for pool in pools.unwrap_or(settings.pools) {
            let pool = pool.trim().to_owned();
            check_pool("pools", &pool).context("invalid pool name")?;
            if !distinct.contains(&pool) {
                distinct.push(pool);
            }
        }
        ensure!(
            !distinct.is_empty(),
            "pools is empty: name at least one pool"
        );
        for (name, value) in [
            ("concurrency", settings.concurrency as u64),
            ("pending_reports", settings.pending_reports as u64),
            ("max_output_bytes", settings.max_output_bytes as u64),
            ("ack_wait_ms", settings.ack_wait_ms),
            ("request_timeout_ms", settings.request_timeout_ms),
            ("report_deadline_ms", settings.report_deadline_ms),
            ("http_timeout_ms", settings.http_timeout_ms),
        ] {
            ensure!(value > 0, "{name} must be at least 1");
        }
        let name = match settings.name {
            Some(name) => name.trim().to_owned(),
            None => format!("{}-{}", hostname(), std::process::id()),
        };
        ensure!(!name.is_empty(), "name must not be empty");
        ensure!(
            settings.http_max_redirects <= MAX_REDIRECTS,
            "http_max_redirects must be at most {MAX_REDIRECTS}"
        );
        let mut allow = BTreeMap::new();
        for (pool, entries) in &settings.http_allow {
            check_pool("http_allow", pool).context("invalid pool name in http_allow")?;
            ensure!(
                !entries.is_empty(),
                "http_allow for pool {pool:?} lists nothing (pool=entry,entry)"
            );
            let rules = Rules::parse(entries)
                .with_context(|| format!("invalid http_allow entry for pool {pool:?}"))?;
            allow.insert(pool.clone(), rules);
        }
        let mut deny = Rules::parse(&settings.http_deny).context("invalid http_deny entry")?;
        deny.add_hosts_of(&settings.common.nats_url);
        let mut nats = settings.common.nats(format!("noetl-worker-{name}"));
        nats.security.nats_inbox_prefix = Some(own_inbox_prefix(
            nats.security.nats_inbox_prefix.as_deref(),
            &name,
        ));
        Ok(Self {
            nats,
            pools: distinct,
            concurrency: settings.concurrency,
            pending_reports: settings.pending_reports,
            name,
            max_output_bytes: settings.max_output_bytes,
            ack_wait: Duration::from_millis(settings.ack_wait_ms),
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            report_deadline: Duration::from_millis(settings.report_deadline_ms),
            listen: settings.listen,
            allow_shell,
            http: Egress {
                allow,
                deny,
                max_redirects: settings.http_max_redirects,
                timeout: Duration::from_millis(settings.http_timeout_ms),
            },
        })
    }
}

/// The inbox prefix of this worker process: the configured one (`_INBOX_worker` in
/// `deploy/base`, `_INBOX` by default) followed by one token made of the worker's name (every
/// character but letters, digits, `_` and `-` becomes `_`, at most 64 of them), so the replies
/// to one worker come back on subjects of its own (`_INBOX_worker.<name>.…`), not on a prefix
/// every worker shares.
fn own_inbox_prefix(configured: Option<&str>, name: &str) -> String {
    let token: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}.{token}", configured.unwrap_or("_INBOX"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_serve_the_default_pool_with_a_generated_name() {
        let config = WorkerConfig::from_settings(Settings::default(), None, false).expect("valid");
        assert_eq!(config.pools, vec!["default".to_owned()]);
        assert_eq!(config.concurrency, 64);
        assert_eq!(config.pending_reports, 256);
        assert_eq!(config.max_output_bytes, 64 * 1024);
        assert_eq!(config.ack_wait, Duration::from_secs(30));
        assert!(
            config.name.ends_with(&format!("-{}", std::process::id())),
            "{}",
            config.name
        );
        assert!(!config.allow_shell);
        assert_eq!(
            config.nats.security.nats_inbox_prefix,
            Some(format!("_INBOX.{}", config.name.replace('.', "_"))),
            "replies come back on an inbox of this worker's own"
        );
    }

    #[test]
    fn each_worker_has_an_inbox_prefix_of_its_own_under_its_roles() {
        assert_eq!(
            own_inbox_prefix(Some("_INBOX_worker"), "w-1"),
            "_INBOX_worker.w-1"
        );
        assert_eq!(
            own_inbox_prefix(None, "pod.a b*>\u{e9}"),
            "_INBOX.pod_a_b___"
        );
        let long = own_inbox_prefix(None, &"n".repeat(100));
        assert_eq!(long.len(), "_INBOX.".len() + 64);
    }

    #[test]
    fn pools_flag_overrides_settings_and_drops_repeats() {
        let args = noetl_service::CommandLine::<Args>::parse_from([
            "noetl-worker",
            "--pools",
            "gpu,io,gpu",
            "--allow-shell",
        ])
        .flags;
        let config = WorkerConfig::from_settings(Settings::default(), args.pools, args.allow_shell)
            .expect("valid");
        assert_eq!(config.pools, vec!["gpu".to_owned(), "io".to_owned()]);
        assert!(config.allow_shell);
    }

    #[test]
    fn pools_setting_accepts_a_comma_separated_string() {
        let settings: Settings =
            serde_json::from_value(serde_json::json!({"pools": "a, b"})).expect("parse");
        assert_eq!(settings.pools, vec!["a".to_owned(), " b".to_owned()]);
        let config = WorkerConfig::from_settings(settings, None, false).expect("valid");
        assert_eq!(config.pools, vec!["a".to_owned(), "b".to_owned()]);
        let listed: Settings =
            serde_json::from_value(serde_json::json!({"pools": ["x"]})).expect("parse");
        assert_eq!(listed.pools, vec!["x".to_owned()]);
    }

    #[test]
    fn a_pool_name_that_is_not_a_subject_token_is_refused() {
        let error =
            WorkerConfig::from_settings(Settings::default(), Some(vec!["a.b".to_owned()]), false)
                .expect_err("a dot would inject a subject token");
        assert!(
            format!("{error:#}").contains("invalid pool name"),
            "{error:#}"
        );
    }

    #[test]
    fn out_of_range_counts_are_refused() {
        let zero_concurrency = Settings {
            concurrency: 0,
            ..Settings::default()
        };
        let zero_pending = Settings {
            pending_reports: 0,
            ..Settings::default()
        };
        let many_redirects = Settings {
            http_max_redirects: 21,
            ..Settings::default()
        };
        for (settings, name) in [
            (zero_concurrency, "concurrency"),
            (zero_pending, "pending_reports"),
            (many_redirects, "http_max_redirects"),
        ] {
            let error = WorkerConfig::from_settings(settings, None, false).expect_err(name);
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn http_allow_is_a_table_or_one_string_and_is_validated() {
        let table: Settings = serde_json::from_value(serde_json::json!({
            "http_allow": {"default": ["127.0.0.1/32"], "io": "10.0.0.0/8, api.internal"},
            "http_deny": "34.118.224.0/20,gateway.example",
        }))
        .expect("parse");
        assert_eq!(table.http_allow["io"], vec!["10.0.0.0/8", "api.internal"]);
        assert_eq!(table.http_deny, vec!["34.118.224.0/20", "gateway.example"]);
        let config = WorkerConfig::from_settings(table, None, false).expect("valid");
        assert_eq!(config.http.allow.len(), 2);
        assert_eq!(config.http.max_redirects, 0);
        assert_eq!(config.http.timeout, Duration::from_secs(30));
        assert_eq!(
            config.http.deny.host_names(),
            ["gateway.example".to_owned()],
            "the NATS host of the defaults is an address (127.0.0.1)"
        );

        let joined: Settings = serde_json::from_value(serde_json::json!({
            "http_allow": "default=127.0.0.1/32,::1; io = *.svc.cluster.local",
        }))
        .expect("parse");
        assert_eq!(joined.http_allow["default"], vec!["127.0.0.1/32", "::1"]);
        assert_eq!(joined.http_allow["io"], vec!["*.svc.cluster.local"]);

        for (allow, expected) in [
            (
                "default=10.0.0.0/33",
                "invalid http_allow entry for pool \"default\"",
            ),
            ("a.b=10.0.0.0/8", "invalid pool name in http_allow"),
            ("default", "lists nothing"),
        ] {
            let settings: Settings =
                serde_json::from_value(serde_json::json!({ "http_allow": allow })).expect("parse");
            let error = WorkerConfig::from_settings(settings, None, false).expect_err(allow);
            assert!(
                format!("{error:#}").contains(expected),
                "{allow}: {error:#}"
            );
        }
    }

    #[test]
    fn the_nats_hosts_are_denied() {
        let settings = Settings {
            common: CommonSettings::new("nats://noetl-nats:4222"),
            ..Settings::default()
        };
        let config = WorkerConfig::from_settings(settings, None, false).expect("valid");
        assert_eq!(config.http.deny.host_names(), ["noetl-nats".to_owned()]);
    }

    #[test]
    fn http_allow_reads_from_a_toml_file_keeping_the_pools_case() {
        let path = std::env::temp_dir().join(format!("noetl-worker-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "pools = [\"GPU\"]\nhttp_max_redirects = 2\n[http_allow]\nGPU = [\"10.1.2.0/24\", \"*.svc.cluster.local\"]\n",
        )
        .expect("write");
        let flag = noetl_service::ConfigFlag {
            config: Some(path.clone()),
        };
        let loaded = flag.load::<Settings>();
        std::fs::remove_file(&path).ok();
        let config =
            WorkerConfig::from_settings(loaded.expect("loads"), None, false).expect("valid");
        assert_eq!(config.http.max_redirects, 2);
        let url = reqwest::Url::parse("http://10.1.2.3/").expect("url");
        assert!(config.http.policy("GPU").check_url(&url).is_ok());
        assert!(config.http.policy("other").check_url(&url).is_err());
    }
}
