//! A private `nats-server` with JetStream.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::Process;
use crate::wait_for;

/// A running `nats-server` on a random loopback port, with JetStream storing in a temp dir.
#[derive(Debug)]
pub struct NatsServer {
    process: Process,
    url: String,
    host: String,
    /// Extra command-line arguments (credentials) and environment, kept for restarts.
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// Like [`NatsServer::start`], listening on `host` (a local address, e.g. the root end of a
    /// veth pair that a network namespace reaches the server through).
    pub fn start_on(host: &str) -> Self {
        Self::start_with(host, Vec::new(), &[])
    }

    /// Like [`NatsServer::start`], accepting only clients that log in as `user` with `password`.
    pub fn start_with_user(user: &str, password: &str) -> Self {
        let args = ["--user", user, "--pass", password].map(str::to_owned);
        Self::start_with("127.0.0.1", args.to_vec(), &[])
    }

    /// Like [`NatsServer::start_on`], with extra command-line arguments (a configuration file,
    /// cluster routes) and environment variables (for a configuration's `$VARS`) on top of the
    /// inherited ones.
    pub fn start_with(host: &str, args: Vec<String>, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("noetl-nats-")
            .tempdir()
            .expect("creating a temp dir for nats-server");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let (process, url) = launch(dir.path(), host, "-1", &args, &env);
        Self {
            process,
            url,
            host: host.to_owned(),
            args,
            env,
            dir,
        }
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Kills the server (SIGKILL), as a crash would. Its JetStream files stay.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port with the same JetStream files.
    pub fn restart(&mut self) {
        self.process.kill();
        let port = self
            .url
            .rsplit(':')
            .next()
            .expect("the URL ends in a port")
            .to_owned();
        let (process, url) = launch(self.dir.path(), &self.host, &port, &self.args, &self.env);
        assert_eq!(url, self.url, "restarted on the same address");
        self.process = process;
    }
}

/// `size` nats-servers routed into one JetStream cluster, for replicated streams.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start(size: usize) -> Self {
        let routes: Vec<String> = (0..size)
            .map(|_| format!("nats://127.0.0.1:{}", crate::free_port()))
            .collect();
        let servers = routes
            .iter()
            .enumerate()
            .map(|(i, listen)| {
                let others: Vec<&str> = routes
                    .iter()
                    .filter(|route| *route != listen)
                    .map(String::as_str)
                    .collect();
                let args = [
                    "--server_name",
                    &format!("noetl-{i}"),
                    "--cluster_name",
                    "noetl",
                    "--cluster",
                    listen,
                    "--routes",
                    &others.join(","),
                ]
                .map(str::to_owned);
                NatsServer::start_with("127.0.0.1", args.to_vec(), &[])
            })
            .collect();
        Self { servers }
    }

    /// The client URL of the first server (the others share the cluster).
    pub fn url(&self) -> &str {
        self.servers[0].url()
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn launch(
    dir: &Path,
    host: &str,
    port: &str,
    args: &[String],
    env: &[(String, String)],
) -> (Process, String) {
    let store: PathBuf = dir.join("jetstream");
    let mut command = Command::new(binary());
    command
        .args(["-a", host, "-p", port, "-js", "-sd"])
        .arg(&store)
        .arg("--ports_file_dir")
        .arg(dir)
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut process = Process::spawn(command);
    let ports_file = dir.join(format!("nats-server_{}.ports", process.id()));
    let url = wait_for("nats-server to report its port", TIMEOUT, || {
        assert!(process.is_running(), "nats-server exited during start-up");
        read_client_url(&ports_file)
    });
    (process, url)
}

fn binary() -> String {
    std::env::var("NOETL_NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned())
}

fn read_client_url(ports_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(ports_file).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    ports["nats"][0].as_str().map(str::to_owned)
}
