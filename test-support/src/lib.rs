//! Real `nats-server` and PostgreSQL instances for tests and benchmarks.
//!
//! Each instance listens on a free loopback port, keeps its files in a temporary directory, and
//! is stopped when dropped. Children are also tied to the lifetime of the thread that started
//! them (`PR_SET_PDEATHSIG`), so a test killed by a timeout leaves nothing running.
//!
//! - [`NatsServer`]: JetStream-enabled NATS; [`NatsCluster`]: several, routed into one cluster.
//! - [`Postgres`]: a private PostgreSQL cluster, with helpers to create shard databases.
//! - [`free_port`], [`listen_backlog`]: a loopback port to listen on, and the accept queue of one.
//! - [`Process`]: a spawned binary of this workspace, killed on drop; [`run`]: a command run to
//!   its end, failing with its stderr.

// `pre_exec` is the one unsafe call: it sets the parent-death signal in the forked child.
#![allow(unsafe_code)]

mod nats;
mod postgres;
mod process;

pub use nats::{NatsCluster, NatsServer};
pub use postgres::{Postgres, PostgresOptions};
pub use process::{cargo_bin, run, Process};

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

/// Where [`free_port`] looks: from here up to the kernel's ephemeral range.
const LOWEST_TEST_PORT: u16 = 10_000;

/// A loopback port that was free a moment ago, for a server a test is about to start.
///
/// It is below the kernel's ephemeral range (`ip_local_port_range`), which the kernel draws on
/// for every `bind(…:0)` and outgoing connection, of this process and of every other test
/// running beside it. A port from that range could be handed to one of those between this call
/// and the server's own bind, and was: a test's gateway, bound to port 0, got the port just
/// chosen for its server, whose bind then failed. Ports are drawn at random, so concurrent
/// test processes rarely try the same one, and each is checked by binding it.
pub fn free_port() -> u16 {
    let ceiling = ephemeral_start();
    for _ in 0..1_000 {
        let port = fastrand::u16(LOWEST_TEST_PORT..ceiling);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOWEST_TEST_PORT} and {ceiling} in 1,000 tries")
}

/// How many connections wait in the accept queue of the loopback socket listening on `port`
/// (`/proc/net/tcp`: for a listening socket, `rx_queue` counts them).
pub fn listen_backlog(port: u16) -> Result<u64, String> {
    let table = std::fs::read_to_string("/proc/net/tcp")
        .map_err(|e| format!("failed to read /proc/net/tcp: {e}"))?;
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() > 4 && fields[1].ends_with(&local) && fields[3] == "0A")
        .and_then(|fields| {
            let (_, rx) = fields[4].split_once(':')?;
            u64::from_str_radix(rx, 16).ok()
        })
        .ok_or_else(|| format!("no listening socket on port {port}"))
}

/// The first port of the kernel's ephemeral range, or Linux's default when it cannot be read
/// (or leaves too little room below it).
fn ephemeral_start() -> u16 {
    const LINUX_DEFAULT: u16 = 32_768;
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|start| *start >= LOWEST_TEST_PORT + 1_000)
        .unwrap_or(LINUX_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable_and_outside_the_range_the_kernel_hands_out() {
        let ceiling = ephemeral_start();
        for _ in 0..50 {
            let port = free_port();
            assert!(
                (LOWEST_TEST_PORT..ceiling).contains(&port),
                "{port} is outside {LOWEST_TEST_PORT}..{ceiling}"
            );
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
    }

    #[test]
    fn a_port_bound_to_zero_is_never_one_free_port_would_choose() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = listener.local_addr().expect("its address").port();
        assert!(port >= ephemeral_start(), "the kernel handed out {port}");
    }

    #[test]
    fn a_listening_socket_has_an_empty_backlog_and_a_closed_port_none() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", free_port())).expect("bind");
        let port = listener.local_addr().expect("its address").port();
        assert_eq!(listen_backlog(port), Ok(0));
        drop(listener);
        assert!(listen_backlog(port).is_err());
    }
}
