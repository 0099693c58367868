//! Whether a shard database can take writes: what readiness asks of it.

use std::time::Duration;

use sqlx::PgPool;

/// How long the probe may take before the database counts as unable to write.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the database commits a write within two seconds: the one row of `write_probe` is
/// upserted. `SELECT 1` also answers on a database that is read-only
/// (`default_transaction_read_only`, a hot standby) and that could not store one submit; a
/// committed write also fails when commits cannot complete (a full disk, a synchronous standby
/// gone). It costs a row of a few bytes rewritten and one WAL flush per check.
pub async fn can_write(pool: &PgPool) -> bool {
    let write = sqlx::query(
        "INSERT INTO write_probe (id, probed_at) VALUES (true, now())
         ON CONFLICT (id) DO UPDATE SET probed_at = EXCLUDED.probed_at",
    )
    .execute(pool);
    match tokio::time::timeout(PROBE_TIMEOUT, write).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the shard database refused the readiness write");
            false
        }
        Err(_) => {
            tracing::warn!("the shard database did not commit the readiness write within 2 s");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::testing::{execute, TestShard};

    /// A read-only database (as `ALTER SYSTEM` makes every session of it, existing ones after
    /// the reload) fails the probe, and passes it again once writable; `SELECT 1` would pass
    /// throughout.
    #[tokio::test]
    async fn a_read_only_database_cannot_write_until_it_is_writable_again() {
        let TestShard { pool, .. } = &TestShard::start(2).await;
        assert!(can_write(pool).await, "a fresh shard database takes writes");
        let probed: i64 = sqlx::query_scalar("SELECT count(*) FROM write_probe")
            .fetch_one(pool)
            .await
            .expect("count");
        assert_eq!(probed, 1, "the probe keeps one row");

        // The test's own session overrides the file, so it can undo what it did.
        let options = (*pool.connect_options())
            .clone()
            .options([("default_transaction_read_only", "off")]);
        let admin = PgPool::connect_with(options).await.expect("admin pool");
        set_read_only(&admin, true).await;
        // Each session reads the reloaded configuration before its next statement.
        let read_only = async {
            while can_write(pool).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read_only)
            .await
            .expect("the probe fails once the database is read-only");
        sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .expect("a read-only database still answers reads");

        set_read_only(&admin, false).await;
        let writable = async {
            while !can_write(pool).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), writable)
            .await
            .expect("the probe passes again once the database is writable");
    }

    /// Makes every session of the cluster read-only (or not), through the configuration file.
    async fn set_read_only(admin: &PgPool, read_only: bool) {
        let setting = if read_only {
            "ALTER SYSTEM SET default_transaction_read_only = on"
        } else {
            "ALTER SYSTEM RESET default_transaction_read_only"
        };
        execute(admin, setting).await;
        execute(admin, "SELECT pg_reload_conf()").await;
    }
}
