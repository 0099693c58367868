//! Connections to a shard database: the pools of a shard (durable, relaxed, generically
//! planned), how a connection is set up from its NOETL_SHARDS entry, transactions planned
//! generically, and the connection a task holds across its statements ([`Held`]).

use std::sync::LazyLock;
use std::time::Duration;

use noetl_contract::shards::ShardDsn;
use secrecy::ExposeSecret;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::Error;

/// A shard's connection pools.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Every write that must be durable before it is acknowledged.
    pub pool: PgPool,
    /// Commits without waiting for the WAL flush: heartbeats, and the relay's deletes of
    /// commands it was handed (a lost one only has a pass publish them again).
    pub relaxed: PgPool,
    /// Durable and generically planned ([`generic_pool`]): one connection for each task that
    /// applies report batches, which keeps it.
    pub reports: PgPool,
}

/// A pool for one shard database. Connections are opened lazily, so an unreachable database
/// surfaces on first use rather than here.
pub fn pool(dsn: &ShardDsn, size: u32) -> Result<PgPool, Error> {
    Ok(pool_options(size).connect_lazy_with(connect_options(dsn)?))
}

/// A pool whose commits do not wait for their WAL flush, for writes whose loss in a crash is
/// harmless (heartbeats: a lost one only lets a lease run out).
///
/// Its statements are always planned generically, without sequential scans (see
/// `GENERIC_PLANNING` and `BEAT_ATTEMPTS`): a plan made for the values at hand folds the
/// in-flight statuses into constants, which lets the planner pick the partial lease index
/// whenever the statistics say it is empty.
pub fn relaxed_pool(dsn: &ShardDsn, size: u32) -> Result<PgPool, Error> {
    let settings = [("synchronous_commit", "off")]
        .into_iter()
        .chain(GENERIC_PLANNING);
    Ok(pool_options(size).connect_lazy_with(connect_options(dsn)?.options(settings)))
}

/// A pool whose statements are always planned generically (`GENERIC_PLANNING`), with durable
/// commits: the committers' inserts of new executions, and the report batches. Under
/// PostgreSQL's default the insert (four inserts over arrays) was planned afresh on nearly
/// every call, a cost per transaction that a moderate load, whose batches hold one or two
/// submits, paid per submit.
pub fn generic_pool(dsn: &ShardDsn, size: u32) -> Result<PgPool, Error> {
    Ok(pool_options(size).connect_lazy_with(connect_options(dsn)?.options(GENERIC_PLANNING)))
}

/// The settings of generic planning, for the relaxed pool's connections and for
/// [`begin_generic`]'s transactions. A generic plan is made once per connection and kept for
/// its life, so sequential scans are off: one made at start-up, while a table was nearly empty,
/// scanned the whole table for every later call as it grew (the handoff's delete of a few
/// outbox rows by id walked every row of the outbox, dead ones too until a vacuum, a tenth of
/// PostgreSQL's time at full load). Every statement planned this way finds its rows through an
/// index.
const GENERIC_PLANNING: [(&str, &str); 2] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
];

/// [`begin_generic`]'s statement: `GENERIC_PLANNING` for one transaction.
static BEGIN_GENERIC: LazyLock<String> = LazyLock::new(|| {
    GENERIC_PLANNING
        .iter()
        .fold("BEGIN".to_owned(), |statement, (name, value)| {
            format!("{statement}; SET LOCAL {name} = {value}")
        })
});

/// Begins a transaction whose statements are planned generically, for the orchestrator's
/// writes outside report batches (whose tasks keep a connection of a [`generic_pool`]) and the
/// relay's passes. They take arrays of ids (`= ANY($1)`, `UNNEST`) or a batch limit, and for
/// those PostgreSQL's default makes a fresh plan for the values at hand on nearly every call:
/// planning was about a third of the report path's time in the database (pg_stat_statements:
/// 2,385 plans for 2,581 calls of the write; 13 for 3,024 with this). Reads keep the default,
/// which the listing's optional filters need. The plans avoid sequential scans, as in the
/// relaxed pool (`GENERIC_PLANNING`).
pub async fn begin_generic(pool: &PgPool) -> Result<Transaction<'static, Postgres>, Error> {
    Ok(pool.begin_with(BEGIN_GENERIC.as_str()).await?)
}

/// A connection one task keeps for all its statements, taken from `pool` at first use.
///
/// sqlx gives a connection back to its pool only after a round trip to the database (it pings
/// the connection on release, to catch one left broken or mid-statement). On the hot paths,
/// where every batch or delete was one checkout, that was a round trip more per transaction,
/// and a wake-up of the server and of a PostgreSQL backend, for nothing. A held connection is
/// given up only when a statement on it failed (it may be broken); the next use takes another.
#[derive(Debug)]
pub struct Held {
    pool: PgPool,
    connection: Option<PoolConnection<Postgres>>,
}

impl Held {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            connection: None,
        }
    }

    /// The held connection, taken from the pool if there is none.
    pub async fn connection(&mut self) -> Result<&mut PgConnection, Error> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.pool.acquire().await?,
        };
        Ok(self.connection.insert(connection))
    }

    /// Passes on the outcome of work on the connection; after an error the connection is
    /// closed, since it may be broken.
    pub fn checked<T>(&mut self, outcome: Result<T, Error>) -> Result<T, Error> {
        if outcome.is_err() {
            if let Some(mut broken) = self.connection.take() {
                broken.close_on_drop();
            }
        }
        outcome
    }
}

fn pool_options(size: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        // No ping before every use: it was a round trip on the path of every request, and a
        // connection that broke meanwhile fails its statement instead, which every caller
        // already handles (the worker retries its report, a submit is answered 503).
        .test_before_acquire(false)
}

fn connect_options(dsn: &ShardDsn) -> Result<PgConnectOptions, Error> {
    // Only NOETL_SHARDS decides where a shard lives: no ~/.pgpass lookup for another host.
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(&dsn.host)
        .port(dsn.port)
        .username(&dsn.user)
        .database(&dsn.database)
        .application_name("noetl-server")
        // A server cut off from its database (or paused) while inside a transaction would hold
        // the execution's row lock until its TCP connection delivers again, which after a long
        // partition takes tens of seconds of retransmission backoff; PostgreSQL ends such a
        // session instead, so another server can take the execution over (its changes roll
        // back; see wiki/reliability.md). No transaction of the server waits longer than the
        // relay's JetStream publish acknowledgements (5 s).
        .options([("idle_in_transaction_session_timeout", "10s")]);
    if let Some(password) = &dsn.password {
        options = options.password(password.expose_secret());
    }
    for (key, value) in &dsn.settings {
        let setting_error = |reason: String| Error::Setting {
            key: key.clone(),
            value: value.clone(),
            reason,
        };
        options = match key.as_str() {
            "sslmode" => {
                options.ssl_mode(value.parse().map_err(|e| setting_error(format!("{e}")))?)
            }
            "sslrootcert" => options.ssl_root_cert(value.as_str()),
            "application_name" => options.application_name(value),
            _ => return Err(setting_error("not supported".to_owned())),
        };
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::testing::TestShard;

    /// A held connection is the same backend at every use (no checkout, so no ping on release),
    /// and one the database ended is given up after the statement that failed on it: the next
    /// use has another.
    #[tokio::test]
    async fn a_held_connection_is_kept_and_replaced_once_it_broke() {
        let TestShard { pool, .. } = &TestShard::start(2).await;
        let mut held = Held::new(pool.clone());
        async fn backend(held: &mut Held) -> Result<i32, Error> {
            let connection = held.connection().await?;
            let pid = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(connection)
                .await;
            held.checked(pid.map_err(Error::from))
        }
        let first = backend(&mut held).await.expect("first use");
        assert_eq!(backend(&mut held).await.expect("second use"), first);
        // The pool may still be opening a connection of its own (counted in its size, not yet
        // idle): wait until that settles, then exactly the held one is out of it.
        let in_use = || pool.size() as usize - pool.num_idle();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while in_use() != 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            in_use(),
            1,
            "the held connection never went back to the pool"
        );

        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 10000)")
            .bind(first)
            .fetch_one(pool)
            .await
            .expect("terminate");
        assert!(ended);
        // The statement on the dead connection fails, unless the client already read the
        // server's goodbye and failed it earlier; either way, at most one use fails before a new
        // backend serves.
        let next = match backend(&mut held).await {
            Ok(pid) => pid,
            Err(_) => backend(&mut held).await.expect("a new connection"),
        };
        assert_ne!(next, first, "the ended backend is not used again");
    }

    #[tokio::test]
    async fn generic_planning_lasts_only_for_its_transaction() {
        let TestShard { pool, .. } = &TestShard::start(1).await;
        let settings =
            "SELECT current_setting('plan_cache_mode') || ' ' || current_setting('enable_seqscan')";
        let mut tx = begin_generic(pool).await.expect("begin");
        let inside: String = sqlx::query_scalar(settings)
            .fetch_one(&mut *tx)
            .await
            .expect("inside");
        tx.commit().await.expect("commit");
        // The pool has one connection: this is the same one, back in the pool.
        let after: String = sqlx::query_scalar(settings)
            .fetch_one(pool)
            .await
            .expect("after");
        assert_eq!(
            (inside.as_str(), after.as_str()),
            ("force_generic_plan off", "auto on")
        );
    }
}
