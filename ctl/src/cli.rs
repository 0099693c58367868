//! The command-line grammar of `noetlctl` (clap) and [`run`], which hands each command to the
//! module that carries it out. The arguments of a command live with it (`SubmitArgs` in
//! `executions`, `TopologyCommand` in `topology`, …); the exit codes in `exit`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use noetl_contract::ExecutionId;
use url::Url;

use crate::bench::{self, BenchArgs};
use crate::executions::{self, ListArgs, SubmitArgs};
use crate::follow;
use crate::http::{self, Gateway, Token};
use crate::playbooks::{self, PlaybookCommand};
use crate::topology::{self, TopologyCommand};

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
    after_help = EXIT_CODES_HELP,
    next_help_heading = "Global options"
)]
pub struct Cli {
    /// The gateway's base URL (http or https).
    #[arg(
        long,
        env = "NOETL_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080",
        value_parser = http::parse_gateway_url,
        hide_env_values = true,
        global = true
    )]
    pub gateway_url: Url,
    /// Bearer token sent to the gateway (never printed; prefer the environment variable, since
    /// a flag shows in the process list).
    #[arg(long, env = "NOETL_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<Token>,
    /// NATS of the cluster (topology commands).
    #[arg(
        long,
        env = "NOETL_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true,
        global = true
    )]
    pub nats_url: String,
    /// NATS user (topology commands); its password comes from NOETL_NATS_PASSWORD.
    #[arg(long, env = "NOETL_NATS_USER", global = true)]
    pub nats_user: Option<String>,
    /// NATS password, from the environment only (a flag would show in the process list).
    #[arg(skip = std::env::var("NOETL_NATS_PASSWORD").ok())]
    pub nats_password: Option<String>,
    /// NATS credentials file (.creds), instead of a user and password.
    #[arg(long, env = "NOETL_NATS_CREDS_FILE", global = true)]
    pub nats_creds_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) of the NATS server's TLS certificate.
    #[arg(long, env = "NOETL_NATS_TLS_CA_FILE", global = true)]
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
    /// Delete a finished execution with its steps and events (refused while it runs: cancel it
    /// first).
    Delete { id: ExecutionId },
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
        Command::Delete { id } => async { executions::delete(&gateway()?, id).await }.await,
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
    use noetl_contract::playbook::Millis;

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
            assert_eq!(error.exit_code(), i32::from(crate::exit::USAGE), "{args:?}");
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
