//! Real `nats-server` and PostgreSQL instances for tests and benchmarks.
//!
//! Each instance listens on a free loopback port, keeps its files in a temporary directory, and
//! is stopped when dropped. Children are also tied to the lifetime of the thread that started
//! them (`PR_SET_PDEATHSIG`), so a test killed by a timeout leaves nothing running.
//!
//! - [`NatsServer`]: JetStream-enabled NATS; [`NatsCluster`]: several, routed into one cluster.
//! - [`Postgres`]: a private PostgreSQL cluster, with helpers to create shard databases.
//! - [`Process`]: a spawned binary of this workspace, killed on drop.

// `pre_exec` is the one unsafe call: it sets the parent-death signal in the forked child.
#![allow(unsafe_code)]

mod nats;
mod postgres;
mod process;

pub use nats::{NatsCluster, NatsServer};
pub use postgres::{Postgres, PostgresOptions};
pub use process::{cargo_bin, Process};

use std::time::{Duration, Instant};

/// Polls `ready` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}
