//! A private `nats-server` with JetStream.

use std::path::Path;
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
    _dir: TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("noetl-nats-")
            .tempdir()
            .expect("creating a temp dir for nats-server");
        let store = dir.path().join("jetstream");
        let mut command = Command::new(binary());
        command
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = Process::spawn(command);
        let ports_file = dir
            .path()
            .join(format!("nats-server_{}.ports", process.id()));
        let url = wait_for("nats-server to report its port", TIMEOUT, || {
            assert!(process.is_running(), "nats-server exited during start-up");
            read_client_url(&ports_file)
        });
        Self {
            process,
            url,
            _dir: dir,
        }
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn binary() -> String {
    std::env::var("NOETL_NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned())
}

fn read_client_url(ports_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(ports_file).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    ports["nats"][0].as_str().map(str::to_owned)
}
