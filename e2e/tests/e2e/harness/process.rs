//! The workspace's binaries as processes of their own.

use std::process::{Command, Output, Stdio};

use noetl_test_support::{cargo_bin, Process};

/// A command for `binary` (`noetl-server`, `noetl-worker`, `noetl-gateway`) on `nats_url`, its
/// ops endpoint (or API) on `listen`, logging warnings and worse to stderr.
pub fn binary(binary: &str, nats_url: &str, listen: &str) -> Command {
    let mut command = Command::new(cargo_bin(binary));
    command
        .env("NOETL_NATS_URL", nats_url)
        .env("NOETL_LISTEN", listen)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    command
}

/// The server binary as a process of its own (so a test can SIGKILL it), with the same short
/// step lease as in-process servers.
pub fn spawn_server(nats_url: &str, shards: &str, listen: &str) -> Process {
    Process::spawn(server_command(nats_url, shards, listen))
}

/// [`spawn_server`] serving only `serve` (comma-separated shard numbers).
pub fn spawn_server_serving(nats_url: &str, shards: &str, listen: &str, serve: &str) -> Process {
    let mut command = server_command(nats_url, shards, listen);
    command.args(["--shards", serve]);
    Process::spawn(command)
}

fn server_command(nats_url: &str, shards: &str, listen: &str) -> Command {
    let mut command = binary("noetl-server", nats_url, listen);
    command
        .env("NOETL_SHARDS", shards)
        .env("NOETL_STEP_LEASE_MS", "2000");
    command
}

/// Runs the `noetlctl` binary with `flag` (`--nats-url` or `--gateway-url`) set to `url`.
pub fn noetlctl(flag: &str, url: &str, args: &[&str]) -> Output {
    Command::new(cargo_bin("noetlctl"))
        .arg(flag)
        .arg(url)
        .args(args)
        .output()
        .expect("noetlctl runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's exit code and output, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}
