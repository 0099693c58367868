//! A whole cluster for one test: its own NATS and PostgreSQL, a server and a gateway, made by
//! [`Cluster::builder`].

use std::collections::HashMap;
use std::io::Write as _;
use std::ops::Deref;

use noetl_contract::{ExecutionId, ShardCount, ShardId, Topology};
use noetl_gateway::configuration::{GatewayConfig, Settings as GatewaySettings};
use noetl_server::configuration::{ServerConfig, Settings as ServerSettings};
use noetl_test_support::{free_port, NatsServer, Postgres, Process};
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::process::{spawn_server, spawn_server_serving};
use super::{connect, Api, Token};

/// The settings of the tests' servers, with the ops endpoint on `listen`.
fn server_settings(nats_url: &str, shards: &str, listen: &str) -> ServerSettings {
    ServerSettings {
        common: noetl_service::CommonSettings::new(nats_url),
        shards: Some(shards.to_owned()),
        listen: listen.parse().expect("valid address"),
        // Short leases, so tests of dead workers finish in seconds.
        step_lease_ms: 2_000,
        ..ServerSettings::default()
    }
}

pub fn gateway_settings(nats_url: &str) -> GatewaySettings {
    GatewaySettings {
        common: noetl_service::CommonSettings::new(nats_url),
        listen: "127.0.0.1:0".parse().expect("valid address"),
        request_timeout_ms: 2_000,
        ..GatewaySettings::default()
    }
}

/// A component running as a task of the test process, until its own token is cancelled.
struct Running {
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Spawns `run`, which stops when `cancel` is cancelled.
    fn spawn(
        cancel: CancellationToken,
        run: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Self {
        Self {
            cancel,
            task: tokio::spawn(run),
        }
    }

    /// Stops it, failing unless `what` stopped cleanly.
    async fn stop(self, what: &str) {
        self.cancel.cancel();
        self.task
            .await
            .unwrap_or_else(|e| panic!("{what} task: {e}"))
            .unwrap_or_else(|e| panic!("{what} did not stop cleanly: {e:#}"));
    }
}

/// A gateway running inside the test process.
pub struct Gateway {
    pub api: Api,
    running: Running,
}

impl Gateway {
    pub async fn start(settings: GatewaySettings) -> Self {
        let config = GatewayConfig::from_settings(settings).expect("valid gateway config");
        let cancel = CancellationToken::new();
        let gateway = noetl_gateway::Gateway::bind(config, &cancel)
            .await
            .expect("gateway binds");
        let api = Api::new(format!("http://{}", gateway.local_addr()));
        let running = Running::spawn(cancel.clone(), gateway.run(cancel));
        Self { api, running }
    }

    pub async fn stop(self) {
        self.running.stop("the gateway").await;
    }
}

/// A worker running inside the test process.
pub struct Worker(Running);

impl Worker {
    pub fn start(nats_url: &str) -> Self {
        Self::start_with(nats_url, |_| {})
    }

    /// A worker that runs the `shell` action (`--allow-shell`).
    pub fn start_with_shell(nats_url: &str) -> Self {
        Self::spawn(nats_url, true, |_| {})
    }

    /// A worker whose default pool may reach 127.0.0.1 (the tests' own HTTP servers), which
    /// the `http` action's egress policy refuses otherwise.
    pub fn allowing_loopback(nats_url: &str) -> Self {
        Self::start_with(nats_url, |settings| {
            settings.http_allow = [("default".to_owned(), vec!["127.0.0.1/32".to_owned()])].into();
        })
    }

    /// A worker with the tests' settings, changed by `tune`.
    pub fn start_with(
        nats_url: &str,
        tune: impl FnOnce(&mut noetl_worker::configuration::Settings),
    ) -> Self {
        Self::spawn(nats_url, false, tune)
    }

    /// A worker with `tune`d settings, running `shell` if `allow_shell`.
    fn spawn(
        nats_url: &str,
        allow_shell: bool,
        tune: impl FnOnce(&mut noetl_worker::configuration::Settings),
    ) -> Self {
        let mut settings = noetl_worker::configuration::Settings {
            common: noetl_service::CommonSettings::new(nats_url),
            listen: "127.0.0.1:0".parse().expect("valid address"),
            ack_wait_ms: 5_000,
            ..noetl_worker::configuration::Settings::default()
        };
        tune(&mut settings);
        let config =
            noetl_worker::configuration::WorkerConfig::from_settings(settings, None, allow_shell)
                .expect("valid worker config");
        let cancel = CancellationToken::new();
        Self(Running::spawn(
            cancel.clone(),
            noetl_worker::run(config, cancel),
        ))
    }

    pub async fn stop(self) {
        self.0.stop("the worker").await;
    }
}

type Tune = Box<dyn FnOnce(&mut ServerSettings, &mut GatewaySettings)>;

/// What [`ClusterBuilder::start`] starts; [`Cluster::builder`] makes one with one shard.
#[must_use]
pub struct ClusterBuilder {
    shards: u32,
    databases: Option<u32>,
    serve: Option<Vec<u32>>,
    grace_ms: Option<i64>,
    tokens: Vec<Token>,
    server_process: bool,
    tune: Option<Tune>,
    nats_max_payload: Option<usize>,
}

impl ClusterBuilder {
    /// The shard count of the first topology, and the databases its server is given.
    pub fn shards(self, shards: u32) -> Self {
        Self { shards, ..self }
    }

    /// Creates this many shard databases (at least the shard count); the server is given only
    /// the first `shards`, the rest wait for [`Cluster::add_server`].
    pub fn databases(self, databases: u32) -> Self {
        Self {
            databases: Some(databases),
            ..self
        }
    }

    /// The server serves only these shards; the cluster is ready once they answer (it is not
    /// ready as a whole, as the other shards have no server).
    pub fn serve(self, shards: &[u32]) -> Self {
        Self {
            serve: Some(shards.to_vec()),
            ..self
        }
    }

    /// The topology is created with this grace before the server starts.
    pub fn grace_ms(self, grace_ms: i64) -> Self {
        Self {
            grace_ms: Some(grace_ms),
            ..self
        }
    }

    /// The gateway checks API tokens: these.
    pub fn tokens(self, tokens: &[Token]) -> Self {
        Self {
            tokens: tokens.to_vec(),
            ..self
        }
    }

    /// The server runs as a process of its own, so a test can SIGKILL it
    /// ([`Cluster::kill_server`]).
    pub fn server_process(self) -> Self {
        Self {
            server_process: true,
            ..self
        }
    }

    /// NATS runs with this `max_payload` (its default is 1 MiB) and its monitoring endpoint
    /// ([`Cluster::nats_monitor_url`]).
    pub fn nats_max_payload(self, bytes: usize) -> Self {
        Self {
            nats_max_payload: Some(bytes),
            ..self
        }
    }

    /// Changes the in-process server's and the gateway's settings.
    pub fn tune(
        self,
        tune: impl FnOnce(&mut ServerSettings, &mut GatewaySettings) + 'static,
    ) -> Self {
        Self {
            tune: Some(Box::new(tune)),
            ..self
        }
    }

    pub async fn start(self) -> Cluster {
        noetl_service::init_tracing(noetl_service::LogFormat::Text);
        let nats_config = self.nats_max_payload.map(|bytes| {
            let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
            writeln!(file, "max_payload: {bytes}").expect("write the NATS configuration");
            (file, free_port())
        });
        let nats = match &nats_config {
            None => NatsServer::start(),
            Some((file, monitor)) => {
                let config = file.path().to_string_lossy().into_owned();
                let args = [
                    "-c".to_owned(),
                    config,
                    "-m".to_owned(),
                    monitor.to_string(),
                ];
                NatsServer::start_with("127.0.0.1", args.to_vec(), &[])
            }
        };
        let nats_monitor_url = nats_config
            .as_ref()
            .map(|(_, port)| format!("http://127.0.0.1:{port}"));
        let pg = Postgres::start();
        let databases = pg.create_shards("noetl_shard", self.databases.unwrap_or(self.shards));
        let served: Vec<&str> = databases.split(',').take(self.shards as usize).collect();
        let shards = served.join(",");
        let shard_count = ShardCount::new(self.shards).expect("at least one shard");
        if let Some(grace_ms) = self.grace_ms {
            let topology = Topology::bootstrap(shard_count, grace_ms).expect("a valid grace");
            noetl_bus::topology::ensure(&connect(nats.url()).await, &topology)
                .await
                .expect("create the topology");
        }
        let tokens_file = (!self.tokens.is_empty()).then(|| {
            let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
            file.write_all(Token::file(&self.tokens).as_bytes())
                .expect("write the tokens file");
            file
        });
        let server_ops = format!("127.0.0.1:{}", free_port());
        let mut server_settings = server_settings(nats.url(), &shards, &server_ops);
        let mut gateway_settings = GatewaySettings {
            auth_tokens_file: tokens_file.as_ref().map(|file| file.path().to_owned()),
            ..gateway_settings(nats.url())
        };
        let cancel = CancellationToken::new();
        let mut server = if self.server_process {
            assert!(self.tune.is_none(), "a server process is not tuned");
            Server::Process(spawn_server(nats.url(), &shards, &server_ops))
        } else {
            if let Some(tune) = self.tune {
                tune(&mut server_settings, &mut gateway_settings);
            }
            let config = ServerConfig::from_settings(server_settings, self.serve.clone())
                .expect("valid server config");
            Server::Task(tokio::spawn(noetl_server::run(config, cancel.clone())))
        };
        let gateway = Gateway::start(gateway_settings).await;
        let (what, served) = match &self.serve {
            None => ("the gateway to be ready", None),
            Some(served) => ("the served shards to answer", Some(served.clone())),
        };
        let ready = gateway.api.wait_readyz(what, |status, body| match &served {
            None => status == 200,
            // Not ready as a whole (a shard has no server), but minting: a confirmed topology
            // view and a node-id lease.
            Some(served) => {
                body["topology_fresh"] == json!(true)
                    && !body["node_id"].is_null()
                    && served
                        .iter()
                        .all(|shard| body["shards"][shard.to_string()] == json!(true))
            }
        });
        match &mut server {
            Server::Task(task) => tokio::select! {
                () = ready => {}
                stopped = task => panic!("the server stopped while waiting for {what}: {stopped:?}"),
            },
            Server::Process(_) => ready.await,
        }
        Cluster {
            nats,
            nats_monitor_url,
            _nats_config: nats_config.map(|(file, _)| file),
            pg,
            databases,
            shards,
            shard_count,
            server_ops_url: format!("http://{server_ops}"),
            cancel,
            servers: vec![server],
            gateway,
            _tokens_file: tokens_file,
        }
    }
}

/// A server of the cluster: a task of the test process, or a process of its own.
enum Server {
    Task(JoinHandle<anyhow::Result<()>>),
    Process(Process),
}

pub struct Cluster {
    pub nats: NatsServer,
    /// NATS's monitoring endpoint (`/connz`, `/varz`), when started with
    /// [`ClusterBuilder::nats_max_payload`].
    pub nats_monitor_url: Option<String>,
    _nats_config: Option<tempfile::NamedTempFile>,
    pub pg: Postgres,
    /// Every shard database's DSN, comma-separated.
    databases: String,
    /// The DSNs of the first server's shards.
    shards: String,
    pub shard_count: ShardCount,
    /// The first server's `/healthz`, `/readyz` and `/metrics`.
    pub server_ops_url: String,
    cancel: CancellationToken,
    servers: Vec<Server>,
    gateway: Gateway,
    _tokens_file: Option<tempfile::NamedTempFile>,
}

/// The cluster's gateway API, without a token.
impl Deref for Cluster {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.gateway.api
    }
}

impl Cluster {
    /// One shard, served by one in-process server, behind an open gateway.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            shards: 1,
            databases: None,
            serve: None,
            grace_ms: None,
            tokens: Vec::new(),
            server_process: false,
            tune: None,
            nats_max_payload: None,
        }
    }

    /// Starts another in-process server, given every shard database, serving `serve`.
    pub fn add_server(&mut self, serve: &[u32]) {
        let settings = server_settings(self.nats.url(), &self.databases, "127.0.0.1:0");
        let config = ServerConfig::from_settings(settings, Some(serve.to_vec()))
            .expect("valid server config");
        let task = tokio::spawn(noetl_server::run(config, self.cancel.clone()));
        self.servers.push(Server::Task(task));
    }

    /// SIGKILLs the server process (of a cluster built with `server_process`).
    pub fn kill_server(&mut self) {
        match self.servers.first_mut() {
            Some(Server::Process(process)) => process.kill(),
            _ => panic!("only a server process can be killed"),
        }
    }

    /// Starts a server process serving only `serve` (of a cluster built with `server_process`,
    /// whose first server was killed); returns its index for [`Cluster::kill_server_at`].
    pub fn start_server_serving(&mut self, serve: &[u32]) -> usize {
        let ops = format!("127.0.0.1:{}", free_port());
        let list: Vec<String> = serve.iter().map(u32::to_string).collect();
        let process = spawn_server_serving(self.nats.url(), &self.shards, &ops, &list.join(","));
        self.servers.push(Server::Process(process));
        self.servers.len() - 1
    }

    /// SIGKILLs the server process at `index`.
    pub fn kill_server_at(&mut self, index: usize) {
        match self.servers.get_mut(index) {
            Some(Server::Process(process)) => process.kill(),
            _ => panic!("only a server process can be killed"),
        }
    }

    /// Starts the server process again, after [`Cluster::kill_server`].
    pub fn restart_server(&mut self) {
        let ops = format!("127.0.0.1:{}", free_port());
        self.servers[0] = Server::Process(spawn_server(self.nats.url(), &self.shards, &ops));
        self.server_ops_url = format!("http://{ops}");
    }

    pub async fn pool(&self, shard: u32) -> PgPool {
        PgPool::connect(&self.pg.url(&format!("noetl_shard_{shard}")))
            .await
            .expect("connect to a shard database")
    }

    /// The token of the attempt that owns step `step` of execution `id`, as its shard stored
    /// it (and sent it in the step's command): what a worker that received the command knows.
    pub async fn attempt_token(
        &self,
        id: ExecutionId,
        step: u32,
    ) -> Option<noetl_contract::step::AttemptToken> {
        let shard = noetl_contract::shard_of(id, self.shard_count);
        let stored: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT attempt_token FROM execution_steps WHERE execution_id = $1 AND step_index = $2",
        )
        .bind(id.get())
        .bind(i32::try_from(step).expect("a small step index"))
        .fetch_one(&self.pool(shard.get()).await)
        .await
        .expect("the step's row");
        stored
            .map(|bytes| noetl_contract::step::AttemptToken::from_slice(&bytes).expect("16 bytes"))
    }

    /// A pool for each shard of the first topology, by shard number.
    pub async fn pools(&self) -> Vec<PgPool> {
        let mut pools = Vec::new();
        for shard in self.shard_count.shards() {
            pools.push(self.pool(shard.get()).await);
        }
        pools
    }

    /// Every execution id stored in each shard database of the first topology.
    pub async fn stored_ids(&self) -> HashMap<ShardId, Vec<ExecutionId>> {
        let mut stored = HashMap::new();
        for (shard, pool) in self.shard_count.shards().zip(self.pools().await) {
            let ids: Vec<i64> = sqlx::query_scalar("SELECT execution_id FROM executions")
                .fetch_all(&pool)
                .await
                .expect("read executions");
            stored.insert(
                shard,
                ids.into_iter()
                    .map(|id| ExecutionId::new(id).expect("stored ids are valid"))
                    .collect(),
            );
            pool.close().await;
        }
        stored
    }

    /// The node id the cluster's gateway leases (it is ready, so it holds one).
    pub async fn gateway_node(&self) -> u64 {
        let (_, ready) = self.get_json("/readyz").await;
        ready["node_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("a ready gateway names its node id: {ready}"))
    }

    /// Stops gateway and servers, failing if any in-process one returned an error.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.gateway.stop().await;
        for server in self.servers {
            if let Server::Task(task) = server {
                task.await
                    .expect("server task")
                    .expect("server stopped cleanly");
            }
        }
    }
}
