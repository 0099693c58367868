//! One benchmarked cluster: nats-server, PostgreSQL with a database per shard, and the release
//! `noetl-server`, `noetl-gateway` and `noetl-worker`, each watched for CPU time and memory.

use anyhow::Context;
use noetl_test_support::{free_port, NatsServer, Postgres, PostgresOptions, Process};
use sqlx::PgPool;

use crate::procs::Watched;

#[derive(Debug)]
pub struct Cluster {
    pub shards: u32,
    pub gateway: String,
    pub server_metrics: String,
    pub pools: Vec<PgPool>,
    pub watched: Watched,
    // Field order is drop order: the binaries stop before the servers they talk to.
    _worker: Process,
    _gateway: Process,
    _server: Process,
    pub pg: Postgres,
    pub nats: NatsServer,
}

impl Cluster {
    pub async fn start(
        http: &reqwest::Client,
        shards: u32,
        worker_concurrency: usize,
        durable: bool,
    ) -> anyhow::Result<Self> {
        eprintln!(
            "starting nats-server, PostgreSQL ({shards} shard(s)), noetl-server, noetl-gateway, noetl-worker…"
        );
        let nats = NatsServer::start();
        let pg = Postgres::start_with(PostgresOptions { durable });
        let dsns = pg.create_shards("bench", shards);
        let (server_port, gateway_port, worker_port) = (free_port(), free_port(), free_port());
        let server = crate::spawn(
            "noetl-server",
            &[
                ("NOETL_NATS_URL", nats.url().to_owned()),
                ("NOETL_SHARDS", dsns),
                ("NOETL_LISTEN", format!("127.0.0.1:{server_port}")),
            ],
        );
        let gateway_process = crate::spawn(
            "noetl-gateway",
            &[
                ("NOETL_NATS_URL", nats.url().to_owned()),
                ("NOETL_LISTEN", format!("127.0.0.1:{gateway_port}")),
            ],
        );
        let worker = crate::spawn(
            "noetl-worker",
            &[
                ("NOETL_NATS_URL", nats.url().to_owned()),
                ("NOETL_LISTEN", format!("127.0.0.1:{worker_port}")),
                ("NOETL_CONCURRENCY", worker_concurrency.to_string()),
            ],
        );
        let gateway = format!("http://127.0.0.1:{gateway_port}");
        crate::wait_ready(http, &format!("{gateway}/readyz"))
            .await
            .context("the gateway")?;
        crate::wait_ready(http, &format!("http://127.0.0.1:{worker_port}/readyz"))
            .await
            .context("the worker")?;
        let pools: Vec<PgPool> = (0..shards)
            .map(|i| PgPool::connect_lazy(&pg.url(&format!("bench_{i}"))))
            .collect::<Result<_, _>>()?;
        let mut watched = Watched::default();
        watched.add("nats-server", nats.pid());
        watched.add("postgres", postmaster_pid(&pools[0]).await?);
        watched.add("noetl-server", server.id());
        watched.add("noetl-gateway", gateway_process.id());
        watched.add("noetl-worker", worker.id());
        Ok(Self {
            shards,
            gateway,
            server_metrics: format!("http://127.0.0.1:{server_port}/metrics"),
            pools,
            watched: watched.with_self(),
            _worker: worker,
            _gateway: gateway_process,
            _server: server,
            pg,
            nats,
        })
    }

    /// A pool on a database of this cluster's PostgreSQL that no shard uses.
    pub fn side_database(&self, name: &str) -> anyhow::Result<PgPool> {
        self.pg.create_database(name);
        Ok(PgPool::connect_lazy(&self.pg.url(name))?)
    }
}

/// The postmaster is the parent of any backend.
async fn postmaster_pid(pool: &PgPool) -> anyhow::Result<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .context("asking PostgreSQL for a backend pid")?;
    crate::procs::parent_of(u32::try_from(backend)?).context("the postmaster's pid")
}
