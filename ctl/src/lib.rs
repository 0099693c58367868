//! `noetlctl`, the operator's command line. It talks to NATS (never to a shard database).
//!
//! - [`cli`]: the command-line grammar (clap) and the exit codes.
//! - [`topology`]: show, plan, apply, drain and retire: each reads the topology document,
//!   asks the shards' servers what it needs to know, and writes with compare-and-set.
//!
//! `main.rs` parses, calls [`cli::run`] and exits with the code it returns.

pub mod cli;
pub mod topology;
