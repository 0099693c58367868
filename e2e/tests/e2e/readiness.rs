//! Readiness proves a shard can write: a shard database that answers but is read-only makes
//! the server's `/readyz` 503 (and the gateway's, which asks every shard), and both are ready
//! again once it is writable.

use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::harness::{Api, Cluster};

/// Makes every session of the cluster's PostgreSQL read-only, or writable again, through its
/// configuration file; existing sessions follow once it is reloaded.
async fn set_read_only(admin: &PgPool, read_only: bool) {
    let setting = if read_only {
        "ALTER SYSTEM SET default_transaction_read_only = on"
    } else {
        "ALTER SYSTEM RESET default_transaction_read_only"
    };
    for statement in [setting, "SELECT pg_reload_conf()"] {
        sqlx::query(statement)
            .execute(admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

fn shard_0(body: &Value) -> &Value {
    &body["shards"]["0"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_shard_database_is_not_ready_until_it_is_writable() {
    let cluster = Cluster::builder().start().await;
    let server = Api::new(cluster.server_ops_url.clone());
    server.wait_ready("the server to be ready").await;
    // The test's own session overrides the file, so it can undo what it did.
    let options = cluster
        .pg
        .url("noetl_shard_0")
        .parse::<sqlx::postgres::PgConnectOptions>()
        .expect("a valid URL")
        .options([("default_transaction_read_only", "off")]);
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("connect as the test");

    set_read_only(&admin, true).await;
    server
        .wait_readyz(
            "the server to see its database read-only",
            |status, body| status == 503 && shard_0(body) == &json!(false),
        )
        .await;
    cluster
        .wait_readyz(
            "the gateway to see shard 0 unable to write",
            |status, body| status == 503 && shard_0(body) == &json!(false),
        )
        .await;
    // It still answers reads: `SELECT 1` would have called it ready.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM write_probe")
        .fetch_one(&cluster.pool(0).await)
        .await
        .expect("a read-only database answers reads");
    assert_eq!(
        stored, 1,
        "the probe wrote its row while the database was writable"
    );

    set_read_only(&admin, false).await;
    server
        .wait_readyz("the server to be ready again", |status, body| {
            status == 200 && shard_0(body) == &json!(true)
        })
        .await;
    cluster.wait_ready("the gateway to be ready again").await;
    admin.close().await;
    cluster.stop().await;
}
