//! The harness itself: instances start, answer, and are gone after drop.

use std::process::{Command, Stdio};
use std::time::Duration;

use noetl_test_support::{wait_for, NatsServer, Postgres};

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

#[test]
fn nats_server_answers_and_stops_on_drop() {
    let nats = NatsServer::start();
    let address = nats
        .url()
        .strip_prefix("nats://")
        .expect("nats:// URL")
        .to_owned();
    assert!(std::net::TcpStream::connect(&address).is_ok());
    let pid = nats.pid();
    drop(nats);
    assert!(
        !pid_alive(pid),
        "nats-server {pid} still running after drop"
    );
    assert!(std::net::TcpStream::connect(&address).is_err());
}

#[test]
fn postgres_creates_shard_databases_in_both_dsn_forms() {
    let pg = Postgres::start();
    let shards = pg.create_shards("harness", 3);
    let entries: Vec<&str> = shards.split(',').collect();
    assert_eq!(entries.len(), 3);
    assert!(entries[0].starts_with("postgres://"));
    assert!(entries[1].starts_with("host=127.0.0.1;"));
    let output = Command::new("psql")
        .arg(pg.url("harness_2"))
        .args(["-tAc", "select current_database()"])
        .output()
        .expect("psql runs");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "harness_2");
    let port = pg.port();
    drop(pg);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// A backend busy in a long statement does not outlive its server: the postmaster is stopped
/// with SIGQUIT, which ends its backends before it exits. (After SIGKILL such a backend ran on,
/// unnoticed, for as long as its statement did.)
#[test]
fn postgres_takes_a_busy_backend_down_with_it_on_drop() {
    let pg = Postgres::start();
    let url = pg.url("postgres");
    let mut busy = Command::new("psql")
        .arg(&url)
        .args([
            "-tAc",
            "SELECT count(*) FROM generate_series(1, 1e12::bigint)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql runs");
    let backend: u32 = wait_for("the long statement", Duration::from_secs(30), || {
        let output = Command::new("psql")
            .arg(&url)
            .args([
                "-tAc",
                "SELECT pid FROM pg_stat_activity WHERE query LIKE '%generate_series(1, 1e12%' \
                 AND state = 'active' AND pid <> pg_backend_pid()",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    });
    assert!(pid_alive(backend));
    drop(pg);
    assert!(
        !pid_alive(backend),
        "backend {backend} still running after its server was dropped"
    );
    let _ = busy.kill();
    let _ = busy.wait();
}
