//! Which database this is: its schema (migrations), the shard it belongs to, and the topology
//! epochs this server accepted, which a later topology document is checked against
//! (wiki/spec.md §3.3).

use noetl_contract::topology::Epoch;
use noetl_contract::{ShardCount, ShardId};
use sqlx::PgPool;

use super::Error;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies pending migrations. sqlx holds a Postgres advisory lock while migrating, so servers
/// starting together take turns and each finds the schema complete.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Records which shard this database is, or checks the recorded one.
pub async fn claim_shard(pool: &PgPool, shard: ShardId) -> Result<(), Error> {
    let configured = i32::try_from(shard.get()).map_err(|_| Error::WrongShard {
        recorded: -1,
        configured: shard.get(),
    })?;
    sqlx::query("INSERT INTO shard_identity (shard) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(configured)
        .execute(pool)
        .await?;
    let recorded: i32 = sqlx::query_scalar("SELECT shard FROM shard_identity")
        .fetch_one(pool)
        .await?;
    if recorded != configured {
        return Err(Error::WrongShard {
            recorded,
            configured: shard.get(),
        });
    }
    Ok(())
}

/// The topology epochs recorded in this shard database.
pub async fn recorded_epochs(pool: &PgPool) -> Result<Vec<Epoch>, Error> {
    let rows: Vec<(i64, i64, i32)> = sqlx::query_as(
        "SELECT epoch, activate_at_ms, shard_count FROM topology_epochs ORDER BY epoch",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(epoch, activate_at_ms, shard_count)| {
            let shard_count = u32::try_from(shard_count)
                .ok()
                .and_then(|n| ShardCount::new(n).ok())
                .ok_or_else(|| {
                    Error::Malformed(format!("epoch {epoch} has {shard_count} shards"))
                })?;
            Ok(Epoch {
                epoch: u64::try_from(epoch)
                    .map_err(|_| Error::Malformed(format!("epoch number {epoch}")))?,
                activate_at_ms,
                shard_count,
            })
        })
        .collect()
}

/// Records epochs this server accepted. An epoch recorded before is only replaced while it is
/// not in force yet at `now_ms` (an in-force one is what a server must never see rewritten).
pub async fn record_epochs(pool: &PgPool, epochs: &[Epoch], now_ms: i64) -> Result<(), Error> {
    let numbers: Vec<i64> = epochs
        .iter()
        .map(|e| i64::try_from(e.epoch).unwrap_or(i64::MAX))
        .collect();
    let activations: Vec<i64> = epochs.iter().map(|e| e.activate_at_ms).collect();
    let counts: Vec<i32> = epochs
        .iter()
        .map(|e| i32::try_from(e.shard_count.get()).unwrap_or(i32::MAX))
        .collect();
    sqlx::query(
        "INSERT INTO topology_epochs (epoch, activate_at_ms, shard_count)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::integer[])
         ON CONFLICT (epoch) DO UPDATE
             SET activate_at_ms = excluded.activate_at_ms, shard_count = excluded.shard_count,
                 seen_at = now()
             WHERE topology_epochs.activate_at_ms > $4
               AND (topology_epochs.activate_at_ms, topology_epochs.shard_count)
                   IS DISTINCT FROM (excluded.activate_at_ms, excluded.shard_count)",
    )
    .bind(numbers)
    .bind(activations)
    .bind(counts)
    .bind(now_ms)
    .execute(pool)
    .await?;
    Ok(())
}
