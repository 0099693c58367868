//! A whole cluster for one test: its own NATS and PostgreSQL, the server and the gateway.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::HashMap;
use std::time::Duration;

use noetl_contract::{ExecutionId, ShardCount, ShardId, Topology};
use noetl_gateway::configuration::{GatewayConfig, Settings as GatewaySettings};
use noetl_gateway::Gateway;
use noetl_server::configuration::{ServerConfig, Settings as ServerSettings};
use noetl_test_support::{NatsServer, Postgres};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `probe` until it returns `Ok`, or panics after `deadline` with `what` and the last
/// state `probe` described in its `Err`. Tests wait with this, never with a bare sleep.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(state) => assert!(
                tokio::time::Instant::now() < give_up,
                "timed out waiting for {what}; last seen: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Cluster {
    pub nats: NatsServer,
    pub pg: Postgres,
    pub shards: String,
    pub shard_count: ShardCount,
    pub gateway_url: String,
    /// The in-process server's `/healthz`, `/readyz` and `/metrics`.
    pub server_ops_url: String,
    pub http: reqwest::Client,
    cancel: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    gateway: JoinHandle<anyhow::Result<()>>,
}

pub fn server_config(nats_url: &str, shards: &str, serve: Option<Vec<u32>>) -> ServerConfig {
    server_config_on(nats_url, shards, serve, "127.0.0.1:0")
}

/// Like [`server_config`], with the ops endpoint on `listen`.
pub fn server_config_on(
    nats_url: &str,
    shards: &str,
    serve: Option<Vec<u32>>,
    listen: &str,
) -> ServerConfig {
    ServerConfig::from_settings(server_settings(nats_url, shards, listen), serve)
        .expect("valid server config")
}

/// The settings of the tests' servers.
pub fn server_settings(nats_url: &str, shards: &str, listen: &str) -> ServerSettings {
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

pub async fn start_gateway(
    nats_url: &str,
    cancel: &CancellationToken,
) -> (String, JoinHandle<anyhow::Result<()>>) {
    start_gateway_with(gateway_settings(nats_url), cancel).await
}

pub async fn start_gateway_with(
    settings: GatewaySettings,
    cancel: &CancellationToken,
) -> (String, JoinHandle<anyhow::Result<()>>) {
    let gateway = Gateway::bind(
        GatewayConfig::from_settings(settings).expect("valid gateway config"),
        cancel,
    )
    .await
    .expect("gateway binds");
    let url = format!("http://{}", gateway.local_addr());
    (url, tokio::spawn(gateway.run(cancel.clone())))
}

impl Cluster {
    /// A cluster with `shards` shard databases, served by one in-process server.
    pub async fn start(shards: u32) -> Self {
        Self::start_serving(shards, None).await
    }

    /// Like [`Cluster::start`], but the server serves only `serve` (when given).
    pub async fn start_serving(shards: u32, serve: Option<Vec<u32>>) -> Self {
        Self::start_with(shards, serve, None).await
    }

    /// Like [`Cluster::start_serving`]; with `grace_ms`, the topology is created with that
    /// grace before the server starts.
    pub async fn start_with(shards: u32, serve: Option<Vec<u32>>, grace_ms: Option<i64>) -> Self {
        Self::launch(shards, serve, grace_ms, |_, _| {}).await
    }

    /// Like [`Cluster::start`], with the server's and the gateway's settings changed by `tune`.
    pub async fn start_tuned(
        shards: u32,
        tune: impl FnOnce(&mut ServerSettings, &mut GatewaySettings),
    ) -> Self {
        Self::launch(shards, None, None, tune).await
    }

    async fn launch(
        shards: u32,
        serve: Option<Vec<u32>>,
        grace_ms: Option<i64>,
        tune: impl FnOnce(&mut ServerSettings, &mut GatewaySettings),
    ) -> Self {
        noetl_service::init_tracing(noetl_service::LogFormat::Text);
        let nats = NatsServer::start();
        let pg = Postgres::start();
        let shard_dsns = pg.create_shards("noetl_shard", shards);
        let shard_count = ShardCount::new(shards).expect("at least one shard");
        if let Some(grace_ms) = grace_ms {
            let topology = Topology::bootstrap(shard_count, grace_ms).expect("a valid grace");
            noetl_bus::topology::ensure(&connect(nats.url()).await, &topology)
                .await
                .expect("create the topology");
        }
        let cancel = CancellationToken::new();
        let server_ops = format!("127.0.0.1:{}", noetl_test_support::free_port());
        let mut server_settings = server_settings(nats.url(), &shard_dsns, &server_ops);
        let mut gateway_settings = gateway_settings(nats.url());
        tune(&mut server_settings, &mut gateway_settings);
        let server_config = ServerConfig::from_settings(server_settings, serve.clone())
            .expect("valid server config");
        let mut server = tokio::spawn(noetl_server::run(server_config, cancel.clone()));
        let (gateway_url, gateway) = start_gateway_with(gateway_settings, &cancel).await;
        let http = reqwest::Client::new();
        let (what, served) = match &serve {
            None => ("the gateway to be ready", None),
            Some(served) => ("the served shards to answer", Some(served.clone())),
        };
        let ready = poll_readyz(&http, &gateway_url, what, |status, body| match &served {
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
        tokio::select! {
            () = ready => {}
            stopped = &mut server => panic!("the server stopped while waiting for {what}: {stopped:?}"),
        }
        Self {
            nats,
            pg,
            shards: shard_dsns,
            shard_count,
            gateway_url,
            server_ops_url: format!("http://{server_ops}"),
            http,
            cancel,
            server: Some(server),
            gateway,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway_url)
    }

    /// Submits a body, returning status and JSON response.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls an execution until `done(body)`, returning the last body.
    pub async fn wait_for_execution(
        &self,
        id: ExecutionId,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, DEADLINE, || async {
            let (status, body) = self.get_json(&format!("/api/v1/executions/{id}")).await;
            if status == 200 && done(&body) {
                Ok(body)
            } else {
                Err(body.to_string())
            }
        })
        .await
    }

    /// Every event of an execution, in order.
    pub async fn events(&self, id: ExecutionId) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let (status, page) = self
                .get_json(&format!(
                    "/api/v1/executions/{id}/events?after_seq={after}&limit=100"
                ))
                .await;
            assert_eq!(status, 200, "{page}");
            let batch = page["events"].as_array().cloned().unwrap_or_default();
            events.extend(batch);
            match page["next_after_seq"].as_i64() {
                Some(next) => after = next,
                None => return events,
            }
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn pool(&self, shard: u32) -> PgPool {
        PgPool::connect(&self.pg.url(&format!("noetl_shard_{shard}")))
            .await
            .expect("connect to a shard database")
    }

    /// Every execution id stored in each shard database.
    pub async fn stored_ids(&self) -> HashMap<ShardId, Vec<ExecutionId>> {
        let mut stored = HashMap::new();
        for shard in self.shard_count.shards() {
            let pool = self.pool(shard.get()).await;
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

    /// Stops gateway and server, failing if either returned an error.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
        (&mut self.gateway)
            .await
            .expect("gateway task")
            .expect("gateway stopped cleanly");
    }
}

/// Runs the `noetlctl` binary with `flag` (`--nats-url` or `--gateway-url`) set to `url`.
pub fn noetlctl(flag: &str, url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(noetl_test_support::cargo_bin("noetlctl"))
        .arg(flag)
        .arg(url)
        .args(args)
        .output()
        .expect("noetlctl runs")
}

pub fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's exit code and output, for assertion messages.
pub fn describe(output: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl Cluster {
    /// The node id the cluster's gateway leases (it is ready, so it holds one).
    pub async fn gateway_node(&self) -> u64 {
        let (_, ready) = self.get_json("/readyz").await;
        ready["node_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("a ready gateway names its node id: {ready}"))
    }
}

/// The SHA-256 digest of a token, in hex, as a tokens file holds it.
pub fn digest(token: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Polls `GET {gateway_url}/api/v1/executions/{id}` (with `token` when given) until the
/// execution has succeeded, or panics after [`DEADLINE`].
pub async fn wait_for_success(
    http: &reqwest::Client,
    gateway_url: &str,
    token: Option<&str>,
    id: &str,
) {
    eventually("the execution to succeed", DEADLINE, || async {
        let mut request = http.get(format!("{gateway_url}/api/v1/executions/{id}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let view: Value = request
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        (view["status"] == "succeeded")
            .then_some(())
            .ok_or_else(|| view.to_string())
    })
    .await;
}

/// A NATS client for a test's own requests.
pub async fn connect(nats_url: &str) -> noetl_bus::Client {
    noetl_bus::connect(&noetl_bus::NatsConfig {
        url: nats_url.to_owned(),
        client_name: "e2e-test".to_owned(),
        security: noetl_bus::NatsSecurity::default(),
    })
    .await
    .expect("connect to NATS")
}

/// Polls the gateway's `/readyz` until `done(status, body)` holds, or panics after [`DEADLINE`].
pub async fn poll_readyz(
    http: &reqwest::Client,
    gateway_url: &str,
    what: &str,
    done: impl Fn(u16, &Value) -> bool,
) {
    eventually(what, DEADLINE, || async {
        let response = http
            .get(format!("{gateway_url}/readyz"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if done(status, &body) {
            Ok(())
        } else {
            Err(body.to_string())
        }
    })
    .await;
}

/// Runs the server binary as a process of its own (so a test can SIGKILL it), with the same
/// short step lease as in-process servers.
pub fn spawn_server(nats_url: &str, shards: &str) -> noetl_test_support::Process {
    let mut command = std::process::Command::new(noetl_test_support::cargo_bin("noetl-server"));
    command
        .env("NOETL_NATS_URL", nats_url)
        .env("NOETL_SHARDS", shards)
        .env("NOETL_LISTEN", "127.0.0.1:0")
        .env("NOETL_STEP_LEASE_MS", "2000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    noetl_test_support::Process::spawn(command)
}

/// A worker running inside the test process.
pub struct Worker {
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    pub fn start(nats_url: &str) -> Self {
        let settings = noetl_worker::configuration::Settings {
            common: noetl_service::CommonSettings::new(nats_url),
            listen: "127.0.0.1:0".parse().expect("valid address"),
            ack_wait_ms: 5_000,
            ..noetl_worker::configuration::Settings::default()
        };
        let config =
            noetl_worker::configuration::WorkerConfig::from_settings(settings, None, false)
                .expect("valid worker config");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(noetl_worker::run(config, cancel.clone()));
        Self { cancel, task }
    }

    /// Stops the worker, failing if it did not stop cleanly.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.task
            .await
            .expect("worker task")
            .expect("worker stopped cleanly");
    }
}

pub fn hello_request() -> Value {
    json!({
        "playbook": {
            "name": "hello",
            "steps": [
                {"name": "greet", "action": "noop"},
                {"name": "wait", "action": "sleep", "with": {"ms": 10}, "needs": ["greet"]}
            ]
        },
        "input": {"who": "world"},
        "labels": {"suite": "e2e"}
    })
}

pub fn id_of(body: &Value) -> ExecutionId {
    body["execution_id"]
        .as_str()
        .unwrap_or_else(|| panic!("execution_id is a string in {body}"))
        .parse()
        .expect("execution_id is decimal")
}
