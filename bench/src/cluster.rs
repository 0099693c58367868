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
    /// Steps the running worker runs at once.
    workers: usize,
    worker_port: u16,
    // Field order is drop order: the binaries stop before the servers they talk to.
    worker: Process,
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
        let worker = spawn_worker(nats.url(), worker_port, worker_concurrency);
        let gateway = format!("http://127.0.0.1:{gateway_port}");
        crate::wait_ready(http, &format!("{gateway}/readyz"))
            .await
            .context("the gateway")?;
        worker_ready(http, worker_port).await?;
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
            workers: worker_concurrency,
            worker_port,
            worker,
            _gateway: gateway_process,
            _server: server,
            pg,
            nats,
        })
    }

    /// Has the worker run `concurrency` steps at once: when it runs another number, stops it
    /// (every execution of the runs before has ended, so it is idle) and starts one that does,
    /// watched under the same name.
    pub async fn worker_concurrency(
        &mut self,
        http: &reqwest::Client,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        if concurrency == self.workers {
            return Ok(());
        }
        eprintln!("restarting noetl-worker with worker concurrency {concurrency}…");
        // Gone before its successor starts, so the two never share the port or the pool.
        self.worker.kill();
        self.worker = spawn_worker(self.nats.url(), self.worker_port, concurrency);
        self.workers = concurrency;
        self.watched.add("noetl-worker", self.worker.id());
        worker_ready(http, self.worker_port).await
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

fn spawn_worker(nats_url: &str, port: u16, concurrency: usize) -> Process {
    crate::spawn(
        "noetl-worker",
        &[
            ("NOETL_NATS_URL", nats_url.to_owned()),
            ("NOETL_LISTEN", format!("127.0.0.1:{port}")),
            ("NOETL_CONCURRENCY", concurrency.to_string()),
        ],
    )
}

async fn worker_ready(http: &reqwest::Client, port: u16) -> anyhow::Result<()> {
    crate::wait_ready(http, &format!("http://127.0.0.1:{port}/readyz"))
        .await
        .context("the worker")
}
