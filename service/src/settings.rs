//! What every binary reads the same way: its command line ([`CommandLine`]: `--config FILE`
//! and its own flags), its settings, defaults < the TOML file < `NOETL_…` environment variables
//! ([`ConfigFlag::load`]), and the part of the settings all three binaries share
//! ([`CommonSettings`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use noetl_bus::{NatsConfig, NatsSecurity};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Reads settings: serde defaults, then the optional TOML file, then `NOETL_*` variables
/// (`NOETL_NATS_URL` → `nats_url`) of `environment`, or of the process when it is `None`.
fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    environment: Option<HashMap<String, String>>,
) -> anyhow::Result<T> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        builder = builder.add_source(
            config::File::from(file)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    builder
        .add_source(
            config::Environment::with_prefix("NOETL")
                .try_parsing(true)
                .source(environment),
        )
        .build()
        .and_then(|c| c.try_deserialize())
        .context("failed to load settings (file and NOETL_* environment)")
}

/// The command line of a binary: `--config FILE`, `--version`, `--help`, and the binary's own
/// flags `F`.
#[derive(Debug, clap::Parser)]
#[command(version)]
pub struct CommandLine<F: clap::Args> {
    #[command(flatten)]
    pub settings: ConfigFlag,
    #[command(flatten)]
    pub flags: F,
}

impl<F: clap::Args> CommandLine<F> {
    /// Parses the process's arguments as the binary `name`, which `about` describes in
    /// `--help`; exits with clap's message when they do not parse.
    pub fn parse_as(name: &'static str, about: &'static str) -> Self {
        let matches = Self::command().name(name).about(about).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// The flags of a binary that has none besides `--config`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct NoFlags;

/// The `--config FILE` flag of every binary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFlag {
    /// Settings file (TOML); `NOETL_*` environment variables override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ConfigFlag {
    /// The settings: defaults < the file, if one was named < the environment.
    pub fn load<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        load(self.config.as_deref(), None)
    }
}

/// A setting that is a list: a TOML list, or one string of comma-separated items (what an
/// environment variable holds). For `#[serde(deserialize_with = …)]`.
pub fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Items {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Items::deserialize(deserializer)? {
        Items::List(list) => list,
        Items::Joined(joined) => joined.split(',').map(str::to_owned).collect(),
    })
}

/// A setting that is a table of lists (a pool's entries, say): a TOML table of lists (or
/// comma-separated strings), or one string `key=item,item;key=item` (what an environment
/// variable holds). A key without `=` gets an empty list, for validation to name.
pub fn table_of_lists<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entries {
        List(Vec<String>),
        Joined(String),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Table {
        Table(BTreeMap<String, Entries>),
        Joined(String),
    }
    let split = |joined: &str| -> Vec<String> {
        joined
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Ok(match Table::deserialize(deserializer)? {
        Table::Table(table) => table
            .into_iter()
            .map(|(key, entries)| match entries {
                Entries::List(list) => (key, list),
                Entries::Joined(joined) => (key, split(&joined)),
            })
            .collect(),
        Table::Joined(joined) => joined
            .split(';')
            .filter(|part| !part.trim().is_empty())
            .map(|part| match part.split_once('=') {
                Some((key, entries)) => (key.trim().to_owned(), split(entries)),
                None => (part.trim().to_owned(), Vec::new()),
            })
            .collect(),
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The settings gateway, server and worker share: where NATS is and how to log in to it, and
/// how to log. Each binary flattens it into its own settings, so its keys stay top-level
/// (`nats_url`, `NOETL_NATS_URL`; `log_format`, `NOETL_LOG_FORMAT`; `nats_user`, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CommonSettings {
    pub nats_url: String,
    /// NATS credentials and TLS (`nats_user`, `nats_password`, `nats_creds_file`, …).
    #[serde(flatten)]
    pub nats_security: NatsSecurity,
    pub log_format: LogFormat,
}

impl Default for CommonSettings {
    fn default() -> Self {
        Self::new("nats://127.0.0.1:4222")
    }
}

impl CommonSettings {
    /// NATS at `nats_url`, without credentials, logging as text.
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            nats_security: NatsSecurity::default(),
            log_format: LogFormat::Text,
        }
    }

    /// How to connect to NATS as `client_name` (what NATS monitoring shows).
    pub fn nats(&self, client_name: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: self.nats_url.clone(),
            client_name: client_name.into(),
            security: self.nats_security.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::net::SocketAddr;

    use secrecy::ExposeSecret as _;

    use super::*;

    /// A binary's settings as they are built: its own keys, the common ones flattened in.
    #[derive(Debug, Deserialize)]
    #[serde(default)]
    struct Binary {
        #[serde(flatten)]
        common: CommonSettings,
        listen: SocketAddr,
        request_timeout_ms: u64,
    }

    impl Default for Binary {
        fn default() -> Self {
            Self {
                common: CommonSettings::default(),
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                request_timeout_ms: 5_000,
            }
        }
    }

    fn environment(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|&(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_hold_without_a_file_or_variables() {
        let settings: Binary = load(None, environment(&[])).expect("defaults");
        assert_eq!(settings.common.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(settings.common.log_format, LogFormat::Text);
        assert!(settings.common.nats_security.nats_user.is_none());
        assert_eq!(settings.listen, Binary::default().listen);
        assert_eq!(settings.request_timeout_ms, 5_000);
    }

    #[test]
    fn common_keys_stay_top_level_in_the_file_and_the_environment() {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        file.write_all(
            b"nats_url = \"nats://file:4222\"\nlog_format = \"json\"\nnats_user = \"from-file\"\n\
              listen = \"127.0.0.1:9000\"\nrequest_timeout_ms = 100\n",
        )
        .expect("write");
        let settings: Binary = load(
            Some(file.path()),
            environment(&[
                ("NOETL_NATS_URL", "nats://env:4222"),
                ("NOETL_NATS_PASSWORD", "12345"),
                ("NOETL_REQUEST_TIMEOUT_MS", "250"),
            ]),
        )
        .expect("valid settings");
        assert_eq!(settings.common.nats_url, "nats://env:4222");
        assert_eq!(settings.common.log_format, LogFormat::Json);
        let security = &settings.common.nats_security;
        assert_eq!(security.nats_user.as_deref(), Some("from-file"));
        assert_eq!(
            security
                .nats_password
                .as_ref()
                .map(|p| p.expose_secret().to_owned()),
            Some("12345".to_owned())
        );
        assert_eq!(settings.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(settings.request_timeout_ms, 250);
        let nats = settings.common.nats("noetl-test");
        assert_eq!(
            (nats.url.as_str(), nats.client_name.as_str()),
            ("nats://env:4222", "noetl-test")
        );
    }

    #[test]
    fn a_bad_log_format_is_refused() {
        let error = load::<Binary>(None, environment(&[("NOETL_LOG_FORMAT", "xml")]))
            .expect_err("not a log format");
        assert!(format!("{error:#}").contains("xml"), "{error:#}");
    }
}
