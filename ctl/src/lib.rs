//! `noetlctl`, the command line of noetl-dispatch. Execution and catalog commands talk to the
//! gateway's HTTP API; topology commands talk to NATS. It never touches a shard database.
//!
//! - [`cli`]: the command-line grammar (clap) and `run`, which dispatches; nothing imports it.
//! - [`exit`]: the exit codes.
//! - [`http`]: the gateway client: URLs, the bearer token, problem documents → exit codes.
//! - [`input`]: reading playbook and submit-body files (JSON or YAML), labels, `--input`.
//! - [`executions`]: submit, get, events, list, cancel, route, with their arguments.
//! - [`plan`]: a dry run's plan.
//! - [`follow`]: `submit --wait` (polling, progress bar) and `watch` (the live event stream).
//! - [`render`]: how executions, steps and events print.
//! - [`sse`]: the Server-Sent Events parser `watch` reads the stream with.
//! - [`playbooks`]: the catalog: push, list, get.
//! - [`table`]: plain-text tables and short forms of values.
//! - [`bench`](mod@bench): load a running cluster with no-op executions and report rates and latencies.
//! - [`topology`]: show, plan, apply, drain and retire: each reads the topology document,
//!   asks the shards' servers what it needs to know, and writes with compare-and-set.
//!
//! Each command module owns its clap arguments, so [`cli`] depends on the commands and no
//! command on it.
//!
//! `main.rs` parses, calls [`cli::run`] and exits with the code it returns.

pub mod bench;
pub mod cli;
pub mod executions;
pub mod exit;
pub mod follow;
pub mod http;
pub mod input;
pub mod plan;
pub mod playbooks;
pub mod render;
pub mod sse;
pub mod table;
pub mod topology;
