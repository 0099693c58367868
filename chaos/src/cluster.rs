//! The cluster under test, all on local addresses: nats-server, one PostgreSQL with a database
//! per shard, servers serving every shard (those after the first inside a network namespace
//! when one is given), workers and a gateway, each a spawned binary of this workspace. What
//! [`Spec`] says: `noetl-chaos` runs two servers and two workers, `noetl-hostile` one of each
//! with API tokens, a small NATS `max_payload` and an egress allow-list.
//!
//! Processes are spawned from the runner's main thread only: test-support ties each child to
//! the thread that spawned it (`PR_SET_PDEATHSIG`), and the main thread lives as long as the run.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use noetl_contract::ShardCount;
use noetl_test_support::{cargo_bin, free_port, NatsServer, Postgres, PostgresOptions, Process};
use sqlx::PgPool;

use crate::netns::Netns;

/// Lease and ack wait short enough that a paused process outlives them within seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub step_lease_ms: u64,
    pub dispatch_lease_ms: u64,
    pub ack_wait_ms: u64,
}

/// What to start, beside the settings every process gets (NATS URL, shard DSNs, listen address).
#[derive(Debug, Clone)]
pub struct Spec {
    pub shards: u32,
    pub servers: usize,
    pub workers: usize,
    pub timing: Timing,
    /// Extra `nats-server` arguments (a configuration file, a monitoring port).
    pub nats_args: Vec<String>,
    /// Extra environment of the servers, the workers and the gateway.
    pub server_env: Vec<(String, String)>,
    pub worker_env: Vec<(String, String)>,
    pub gateway_env: Vec<(String, String)>,
}

/// One spawned binary, which can be killed, paused and started again with the same settings.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    program: PathBuf,
    env: Vec<(String, String)>,
    netns: Option<String>,
    ready_url: String,
    log: PathBuf,
    process: Option<Process>,
}

impl Node {
    fn new(
        name: &str,
        program: &Path,
        env: Vec<(String, String)>,
        ready_url: String,
        logs: &Path,
    ) -> Self {
        Self {
            name: name.to_owned(),
            program: program.to_owned(),
            env,
            netns: None,
            ready_url,
            log: logs.join(format!("{name}.log")),
            process: None,
        }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("failed to open {}", self.log.display()))?;
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            // Plain text in the log files.
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().context("failed to share the log file")?)
            .stderr(log);
        self.process = Some(Process::spawn(command));
        Ok(())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) with the shell's `kill` (the workspace allows no unsafe
    /// code, and a shell is always there where procps may not be).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let Some(process) = &self.process else {
            bail!("{} is not running", self.name);
        };
        let status = Command::new("sh")
            .args(["-c", r#"kill -s "$0" "$1""#, signal])
            .arg(process.id().to_string())
            .status()
            .context("failed to run kill")?;
        if !status.success() {
            bail!("kill -{signal} {} failed", self.name);
        }
        Ok(())
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(response) = http.get(&self.ready_url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {timeout:?} (log: {})",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The binaries under test, copied at start-up so that a rebuild in the shared target
/// directory during the run cannot change what a restarted process runs.
#[derive(Debug)]
struct Binaries {
    server: PathBuf,
    worker: PathBuf,
    gateway: PathBuf,
}

impl Binaries {
    fn copy_into(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let copy = |name: &str| -> anyhow::Result<PathBuf> {
            let to = dir.join(name);
            std::fs::copy(cargo_bin(name), &to)
                .with_context(|| format!("failed to copy {name}"))?;
            Ok(to)
        };
        Ok(Self {
            server: copy("noetl-server")?,
            worker: copy("noetl-worker")?,
            gateway: copy("noetl-gateway")?,
        })
    }
}

/// Everything the runner started; dropping it stops every process and removes the namespace.
#[derive(Debug)]
pub struct Cluster {
    // Field order is drop order: the binaries stop before NATS, PostgreSQL and the namespace.
    pub gateway: Node,
    pub workers: Vec<Node>,
    pub servers: Vec<Node>,
    pub pools: Vec<PgPool>,
    pub nats: NatsServer,
    pub pg: Postgres,
    pub netns: Option<Netns>,
    pub shard_count: ShardCount,
    pub gateway_url: String,
}

pub const READY: Duration = Duration::from_secs(90);

impl Cluster {
    pub async fn start(
        spec: Spec,
        netns: Option<Netns>,
        run_dir: &Path,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let Spec { shards, timing, .. } = spec;
        let shard_count = ShardCount::new(shards).context("at least one shard")?;
        anyhow::ensure!(spec.servers > 0, "at least one server");
        let bins = Binaries::copy_into(&run_dir.join("bin"))?;
        let logs = &run_dir.join("logs");
        let nats_host = netns.as_ref().map_or("127.0.0.1", |n| n.nats.host.as_str());
        let nats = NatsServer::start_with(nats_host, spec.nats_args.clone(), &[]);
        let listen = match &netns {
            Some(netns) => format!("127.0.0.1,{}", netns.postgres.host),
            None => "127.0.0.1".to_owned(),
        };
        // Durable, as in production: an immediate stop must not lose a commit that was answered.
        let pg = Postgres::start_listening(PostgresOptions { durable: true }, &listen);
        let dsns = pg.create_shards("chaos", shards);
        let pools = (0..shards)
            .map(|i| PgPool::connect_lazy(&pg.url(&format!("chaos_{i}"))))
            .collect::<Result<Vec<_>, _>>()
            .context("failed to open the shard pools")?;

        let common = |extra: &[(&str, String)], more: &[(String, String)]| {
            let mut env = vec![("NOETL_NATS_URL".to_owned(), nats.url().to_owned())];
            env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            env.extend(more.iter().cloned());
            env
        };
        let server_env = |dsns: &str, listen: &str| {
            common(
                &[
                    ("NOETL_SHARDS", dsns.to_owned()),
                    ("NOETL_LISTEN", listen.to_owned()),
                    ("NOETL_STEP_LEASE_MS", timing.step_lease_ms.to_string()),
                    (
                        "NOETL_DISPATCH_LEASE_MS",
                        timing.dispatch_lease_ms.to_string(),
                    ),
                ],
                &spec.server_env,
            )
        };
        let mut servers = Vec::new();
        for i in 0..spec.servers {
            let port = free_port();
            // The first server runs beside NATS and PostgreSQL; the others inside the namespace,
            // which reaches PostgreSQL at the root end of its own pair.
            let inside = netns.as_ref().filter(|_| i > 0);
            let (listen, dsns) = match inside {
                Some(netns) => (
                    format!("{}:{port}", netns.nats.inner),
                    dsns.replace("127.0.0.1", &netns.postgres.host),
                ),
                None => (format!("127.0.0.1:{port}"), dsns.clone()),
            };
            let mut server = Node::new(
                &format!("server-{i}"),
                &bins.server,
                server_env(&dsns, &listen),
                format!("http://{listen}/readyz"),
                logs,
            );
            server.netns = inside.map(|n| n.name.clone());
            servers.push(server);
        }

        let workers = (0..spec.workers)
            .map(|i| {
                let port = free_port();
                Node::new(
                    &format!("worker-{i}"),
                    &bins.worker,
                    common(
                        &[
                            ("NOETL_LISTEN", format!("127.0.0.1:{port}")),
                            ("NOETL_CONCURRENCY", "64".to_owned()),
                            ("NOETL_ACK_WAIT_MS", timing.ack_wait_ms.to_string()),
                        ],
                        &spec.worker_env,
                    ),
                    format!("http://127.0.0.1:{port}/readyz"),
                    logs,
                )
            })
            .collect();
        let port = free_port();
        let gateway_url = format!("http://127.0.0.1:{port}");
        let gateway = Node::new(
            "gateway",
            &bins.gateway,
            common(
                &[("NOETL_LISTEN", format!("127.0.0.1:{port}"))],
                &spec.gateway_env,
            ),
            format!("{gateway_url}/readyz"),
            logs,
        );
        let mut cluster = Self {
            gateway,
            workers,
            servers,
            pools,
            nats,
            pg,
            netns,
            shard_count,
            gateway_url,
        };
        // The first server creates the topology; the others find it.
        cluster.servers[0].start()?;
        cluster.servers[0].wait_ready(http, READY).await?;
        for server in cluster.servers.iter_mut().skip(1) {
            server.start()?;
        }
        for worker in &mut cluster.workers {
            worker.start()?;
        }
        cluster.gateway.start()?;
        cluster.wait_ready(http).await?;
        Ok(cluster)
    }

    /// Every process answers `/readyz` with 200.
    pub async fn wait_ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        for node in self
            .servers
            .iter()
            .chain(&self.workers)
            .chain([&self.gateway])
        {
            node.wait_ready(http, READY).await?;
        }
        Ok(())
    }
}
