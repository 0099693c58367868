//! The command-line grammar of `noetlctl` (clap), the exit codes, and [`run`], which hands
//! each command to the module that carries it out.
//!
//! Exit codes (stable, for scripts):
//! - `0`: done, or nothing to do ("no change"); with `submit --wait` and `watch`: the execution
//!   succeeded;
//! - `1`: failed (NATS or the gateway unreachable, a 5xx, no topology, an unexpected answer);
//! - `2`: the command line or its input is wrong (clap; a file that does not parse, …);
//! - `3`: refused (any 4xx from the gateway but 409; a shard to add has no ready server, the
//!   shard is not draining, executions are unfinished, a change the topology does not allow);
//! - `4`: conflict (a 409 from the gateway, such as an idempotency key reused with another body;
//!   someone else changed the topology between read and write: run it again);
//! - `5`: not yet (`topology drain`: the shard still has unfinished executions; `submit --wait
//!   --timeout`: the execution had not finished in time);
//! - `6`: the execution failed (`submit --wait`, `watch`);
//! - `7`: the execution was cancelled (`submit --wait`, `watch`).

use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use noetl_contract::message::ExecutionStatus;
use noetl_contract::playbook::Millis;
use noetl_contract::ExecutionId;
use serde_json::{Map, Value};
use url::Url;

use crate::http::{self, Gateway, Token};
use crate::input::{self, CatalogRef, Label};
use crate::{bench, executions, follow, playbooks, topology};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_REFUSED: u8 = 3;
pub const EXIT_CONFLICT: u8 = 4;
pub const EXIT_NOT_YET: u8 = 5;
pub const EXIT_EXECUTION_FAILED: u8 = 6;
pub const EXIT_EXECUTION_CANCELLED: u8 = 7;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done, or no change; with submit --wait and watch: the execution succeeded
  1  failed: NATS or the gateway unreachable, a 5xx, an unexpected answer
  2  usage: the command line or its input (a file, --input) is wrong
  3  refused: the gateway answered a 4xx (other than 409), or the topology change is not allowed
  4  conflict: the gateway answered 409, or the topology changed meanwhile (run it again)
  5  not yet: topology drain has unfinished executions; submit --wait hit --timeout
  6  the execution failed (submit --wait, watch)
  7  the execution was cancelled (submit --wait, watch)";

const FOLLOW_EXIT_CODES_HELP: &str = "\
Exit codes when following an execution (submit --wait, watch): 0 it succeeded, 6 it failed,
7 it was cancelled, 5 --timeout passed first; 1 to 4 as for every command (noetlctl --help).";

#[derive(Debug, Parser)]
#[command(
    name = "noetlctl",
    version,
    about = "Use and operate a noetl-dispatch cluster",
    long_about = "Use and operate a noetl-dispatch cluster: submit and follow executions, list \
        them, manage the playbook catalog (through the gateway's HTTP API), and change the shard \
        count (through NATS).",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// The gateway's base URL (http or https).
    #[arg(
        long,
        env = "NOETL_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080",
        value_parser = http::parse_gateway_url,
        hide_env_values = true,
        global = true,
        help_heading = "Global options"
    )]
    pub gateway_url: Url,
    /// Bearer token sent to the gateway (never printed; prefer the environment variable, since
    /// a flag shows in the process list).
    #[arg(
        long,
        env = "NOETL_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Global options"
    )]
    pub token: Option<Token>,
    /// NATS of the cluster (topology commands).
    #[arg(
        long,
        env = "NOETL_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true,
        global = true,
        help_heading = "Global options"
    )]
    pub nats_url: String,
    /// NATS user (topology commands); its password comes from NOETL_NATS_PASSWORD.
    #[arg(
        long,
        env = "NOETL_NATS_USER",
        global = true,
        help_heading = "Global options"
    )]
    pub nats_user: Option<String>,
    /// NATS password, from the environment only (a flag would show in the process list).
    #[arg(skip = std::env::var("NOETL_NATS_PASSWORD").ok())]
    pub nats_password: Option<String>,
    /// NATS credentials file (.creds), instead of a user and password.
    #[arg(
        long,
        env = "NOETL_NATS_CREDS_FILE",
        global = true,
        help_heading = "Global options"
    )]
    pub nats_creds_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) of the NATS server's TLS certificate.
    #[arg(
        long,
        env = "NOETL_NATS_TLS_CA_FILE",
        global = true,
        help_heading = "Global options"
    )]
    pub nats_tls_ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit an execution of a playbook (a file, stdin, or one of the catalog).
    #[command(after_help = FOLLOW_EXIT_CODES_HELP)]
    Submit(SubmitArgs),
    /// Show an execution and its steps.
    Get {
        id: ExecutionId,
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print every event of an execution's log.
    Events {
        id: ExecutionId,
        /// Print the log as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Follow an execution's live events until it ends; the exit code says how it ended.
    #[command(after_help = FOLLOW_EXIT_CODES_HELP)]
    Watch {
        id: ExecutionId,
        /// Print each event as one line of JSON.
        #[arg(long)]
        json: bool,
    },
    /// List executions across all shards, newest first.
    List(ListArgs),
    /// Cancel an execution (idempotent) and show it.
    Cancel {
        id: ExecutionId,
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Which shard and topology epoch an execution id belongs to, and what the id encodes.
    Route {
        id: ExecutionId,
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// The playbook catalog: register, list and read versioned playbooks.
    #[command(subcommand)]
    Playbook(PlaybookCommand),
    /// Print a shell completion script (e.g. `noetlctl completions bash > /etc/bash_completion.d/noetlctl`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The cluster topology: its epochs, the shards' states, and changes of the shard count.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Load the running cluster with single-noop executions: submits/s, end-to-end
    /// executions/s and their latency percentiles (the full harness is `make bench`).
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Submits in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to submit.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Only submit: do not follow the executions to their end.
    #[arg(long)]
    pub no_follow: bool,
    /// Give up following after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub follow_timeout: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A playbook, or a whole submit body ({"playbook", "input", "labels"}), in JSON or YAML;
    /// `-` or nothing reads stdin.
    #[arg(value_name = "FILE|-", conflicts_with = "playbook")]
    pub file: Option<String>,
    /// Submit a playbook of the catalog instead of a file (its latest version by default).
    #[arg(long, value_name = "NAME[@VERSION]", value_parser = input::parse_catalog_ref)]
    pub playbook: Option<CatalogRef>,
    /// Input as a JSON object; its keys override the file's input.
    #[arg(long, value_name = "JSON", value_parser = input::parse_input)]
    pub input: Option<Map<String, Value>>,
    /// A label (repeatable); overrides the file's label of the same key.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = input::parse_label)]
    pub labels: Vec<Label>,
    /// Submitting again with the same key returns the same execution instead of a new one.
    #[arg(long, value_name = "KEY", value_parser = parse_idempotency_key)]
    pub idempotency_key: Option<String>,
    /// Validate and show the plan and the shard it would go to; nothing is persisted.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Follow the execution until it ends, with a progress bar; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (e.g. 90s, 10m), with exit code 5.
    #[arg(long, value_name = "DURATION", requires = "wait")]
    pub timeout: Option<Millis>,
    /// Print the gateway's JSON (with --wait: only the final execution).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,
    /// Only executions with this label (repeatable: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = input::parse_label)]
    pub labels: Vec<Label>,
    /// Only executions of this playbook.
    #[arg(long, value_name = "NAME")]
    pub playbook: Option<String>,
    /// Only executions created at or after this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub created_after: Option<String>,
    /// Only executions created before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub created_before: Option<String>,
    /// Executions per page.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Start from this page (the cursor a previous page printed).
    #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
    pub cursor: Option<String>,
    /// Read every page, not just the first.
    #[arg(long)]
    pub all: bool,
    /// Print JSON (with --all: every execution in one document).
    #[arg(long)]
    pub json: bool,
}

/// An execution status to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl StatusFilter {
    pub fn status(self) -> ExecutionStatus {
        match self {
            StatusFilter::Pending => ExecutionStatus::Pending,
            StatusFilter::Running => ExecutionStatus::Running,
            StatusFilter::Succeeded => ExecutionStatus::Succeeded,
            StatusFilter::Failed => ExecutionStatus::Failed,
            StatusFilter::Cancelled => ExecutionStatus::Cancelled,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PlaybookCommand {
    /// Register a playbook (JSON or YAML; `-` for stdin) as the next version of its name.
    Push {
        #[arg(value_name = "FILE|-")]
        file: String,
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the catalog's playbooks and their latest versions.
    List {
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a playbook (its latest version by default) as JSON, ready to edit and push again.
    Get {
        name: String,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
        /// Print the gateway's whole answer (name, version, created_at, playbook).
        #[arg(long)]
        json: bool,
    },
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

/// An idempotency key travels as a header: visible ASCII only.
fn parse_idempotency_key(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an idempotency key is 1 to 255 visible ASCII characters".to_owned());
    }
    Ok(s.to_owned())
}

/// Checks an RFC 3339 time and passes it on as written.
fn parse_rfc3339(s: &str) -> Result<String, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|_| s.to_owned())
        .map_err(|e| format!("not an RFC 3339 time (like 2026-11-23T10:00:00Z): {e}"))
}

/// Runs the command and returns the process's exit code; results go to stdout, progress,
/// warnings and errors to stderr.
pub async fn run(cli: Cli) -> ExitCode {
    let Cli {
        gateway_url,
        token,
        nats_url,
        nats_user,
        nats_password,
        nats_creds_file,
        nats_tls_ca_file,
        command,
    } = cli;
    let nats = noetl_bus::NatsConfig {
        url: nats_url,
        client_name: "noetlctl".to_owned(),
        security: noetl_bus::NatsSecurity {
            nats_user,
            nats_password: nats_password.map(secrecy::SecretString::from),
            nats_creds_file,
            nats_tls_ca_file,
            nats_tls_required: false,
            // noetlctl creates no stream: the servers own the replica count.
            nats_replicas: None,
            nats_inbox_prefix: None,
        },
    };
    // Built only by the commands that talk to the gateway.
    let gateway = || Gateway::new(gateway_url, token);
    let outcome = match command {
        Command::Topology(command) => Ok(topology::run(&nats, command).await),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "noetlctl",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Submit(args) => async { executions::submit(&gateway()?, args).await }.await,
        Command::Get { id, json } => async { executions::get(&gateway()?, id, json).await }.await,
        Command::Events { id, json } => {
            async { executions::events(&gateway()?, id, json).await }.await
        }
        Command::Watch { id, json } => async { follow::watch(&gateway()?, id, json).await }.await,
        Command::List(args) => async { executions::list(&gateway()?, args).await }.await,
        Command::Cancel { id, json } => {
            async { executions::cancel(&gateway()?, id, json).await }.await
        }
        Command::Route { id, json } => {
            async { executions::route(&gateway()?, id, json).await }.await
        }
        Command::Playbook(command) => async { playbooks::run(&gateway()?, command).await }.await,
        Command::Bench(args) => async { bench::run(&gateway()?, args).await }.await,
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("noetlctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("noetlctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn submit_takes_a_file_flags_and_repeated_labels() {
        let cli = parse(&[
            "submit",
            "examples/diamond.json",
            "--input",
            r#"{"n": 3}"#,
            "--label",
            "env=dev",
            "--label",
            "team=a",
            "--wait",
            "--timeout",
            "90s",
        ])
        .expect("valid");
        let Command::Submit(args) = cli.command else {
            panic!("not a submit: {cli:?}");
        };
        assert_eq!(args.file.as_deref(), Some("examples/diamond.json"));
        assert_eq!(args.labels.len(), 2);
        assert_eq!(args.timeout, Some(Millis(90_000)));
        assert!(args.wait && !args.dry_run);
    }

    #[test]
    fn contradictory_submits_are_usage_errors() {
        for args in [
            &["submit", "f.json", "--playbook", "diamond"][..],
            &["submit", "f.json", "--dry-run", "--wait"],
            &["submit", "f.json", "--timeout", "5s"],
            &["submit", "f.json", "--label", "novalue"],
            &["submit", "f.json", "--input", "[1]"],
            &["submit", "f.json", "--idempotency-key", "has space"],
            &["get", "12x"],
            &["get", "-5"],
            &["list", "--status", "done"],
            &["list", "--created-after", "yesterday"],
            &["list", "--all", "--cursor", "abc"],
            &["list", "--limit", "0"],
        ] {
            let error = parse(args).expect_err(&args.join(" "));
            assert_eq!(error.exit_code(), i32::from(EXIT_USAGE), "{args:?}");
        }
    }

    #[test]
    fn global_flags_go_anywhere_and_the_token_stays_hidden() {
        let cli = parse(&[
            "get",
            "320816801799737344",
            "--gateway-url",
            "https://gw.example",
            "--token",
            "s3cret",
        ])
        .expect("valid");
        assert_eq!(cli.gateway_url.as_str(), "https://gw.example/");
        assert!(!format!("{cli:?}").contains("s3cret"));
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("NOETL_TOKEN"), "{help}");
    }

    #[test]
    fn completions_are_generated_for_each_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "noetlctl", &mut script);
            let script = String::from_utf8(script).expect("utf-8");
            assert!(script.contains("noetlctl"), "{shell:?}");
            assert!(script.contains("submit"), "{shell:?}");
        }
    }
}
