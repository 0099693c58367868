//! The items of loops (`loop_items`): read under the execution's lock only those an event names
//! and the next ones to dispatch, written one row per changed item, their results assembled
//! once when the loop ends (wiki/execution-model.md, "How a loop runs"). Their heartbeats and
//! leases are in `leases`.

use noetl_contract::engine::ItemState;
use noetl_contract::status::StepStatus;
use noetl_contract::step::{Attempt, AttemptToken, StepIndex};
use noetl_contract::ExecutionId;
use sqlx::{PgConnection, Postgres, Row, Transaction};

use super::rows::{self, integer};
use super::Error;

/// One item of one loop step of one execution.
pub type ItemKey = (ExecutionId, StepIndex, u32);

/// An item as read under the lock, with the token of its current attempt.
#[derive(Debug)]
pub struct LoadedItem {
    pub key: ItemKey,
    pub state: ItemState,
    pub token: Option<AttemptToken>,
}

/// Reads the items `keys` that exist (call it with their executions locked).
pub async fn load_items(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[ItemKey],
) -> Result<Vec<LoadedItem>, Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query(
        "SELECT l.execution_id, l.step_index, l.item, l.status, l.attempt, l.tries,
                l.attempt_token, l.value, l.result, l.error
         FROM UNNEST($1::bigint[], $2::int[], $3::int[]) AS k(execution_id, step_index, item)
         JOIN loop_items AS l USING (execution_id, step_index, item)",
    )
    .bind(keys.iter().map(|k| k.0.get()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| integer(k.1.get())).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| integer(k.2)).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|row| {
        let item: i32 = row.try_get("item")?;
        let tries: i32 = row.try_get("tries")?;
        Ok(LoadedItem {
            key: (
                rows::execution_id(row)?,
                rows::step_index(row)?,
                u32::try_from(item).map_err(|_| Error::Malformed(format!("item {item}")))?,
            ),
            state: ItemState {
                status: rows::step_status(row)?,
                attempt: rows::attempt(row)?,
                tries: u32::try_from(tries).unwrap_or(0),
                value: row.try_get("value")?,
                result: row.try_get("result")?,
                error: row.try_get("error")?,
            },
            token: rows::attempt_token(row)?,
        })
    })
    .collect()
}

/// An item's state to write.
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub key: ItemKey,
    pub status: StepStatus,
    pub attempt: Attempt,
    pub tries: u32,
    pub token: Option<AttemptToken>,
    /// JSON text, for an item its loop just created (a stored item keeps its value).
    pub value: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    /// From now; `None` clears the lease.
    pub lease_ms: Option<i64>,
}

/// What decisions changed in the loops of some executions.
#[derive(Debug, Clone, Default)]
pub struct LoopChanges {
    /// Loops that (re)started: their stored items, from a previous run, go first.
    pub restarted: Vec<(ExecutionId, StepIndex)>,
    pub items: Vec<ItemRow>,
    /// The counters of loop steps, as JSON.
    pub progress: Vec<(ExecutionId, StepIndex, String)>,
}

impl LoopChanges {
    pub fn is_empty(&self) -> bool {
        self.restarted.is_empty() && self.items.is_empty() && self.progress.is_empty()
    }
}

/// Writes `changes` (call it with their executions locked, after their steps were written).
pub async fn save_loops(connection: &mut PgConnection, changes: &LoopChanges) -> Result<(), Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let LoopChanges {
        restarted,
        items,
        progress,
    } = changes;
    sqlx::query(
        "WITH gone AS (
             DELETE FROM loop_items AS l
             USING UNNEST($1::bigint[], $2::int[]) AS r(execution_id, step_index)
             WHERE l.execution_id = r.execution_id AND l.step_index = r.step_index
         )
         UPDATE execution_steps AS s SET loop_progress = p.progress::jsonb
         FROM UNNEST($3::bigint[], $4::int[], $5::text[]) AS p(execution_id, step_index, progress)
         WHERE s.execution_id = p.execution_id AND s.step_index = p.step_index",
    )
    .bind(restarted.iter().map(|r| r.0.get()).collect::<Vec<_>>())
    .bind(
        restarted
            .iter()
            .map(|r| integer(r.1.get()))
            .collect::<Vec<_>>(),
    )
    .bind(progress.iter().map(|p| p.0.get()).collect::<Vec<_>>())
    .bind(
        progress
            .iter()
            .map(|p| integer(p.1.get()))
            .collect::<Vec<_>>(),
    )
    .bind(progress.iter().map(|p| p.2.as_str()).collect::<Vec<_>>())
    .execute(&mut *connection)
    .await?;
    if items.is_empty() {
        return Ok(());
    }
    // Rows in key order, as every writer takes them, so two transactions cannot deadlock.
    let mut items: Vec<&ItemRow> = items.iter().collect();
    items.sort_by_key(|i| i.key);
    sqlx::query(
        "INSERT INTO loop_items AS l (execution_id, step_index, item, status, attempt, tries,
                                     attempt_token, value, result, error, lease_expires_at,
                                     started_at, finished_at)
         SELECT execution_id, step_index, item, status, attempt, tries, token,
                coalesce(value::jsonb, 'null'::jsonb), result::jsonb, error,
                now() + lease_ms * interval '1 millisecond',
                CASE WHEN status = 'running' THEN now() END,
                CASE WHEN status IN ('succeeded', 'failed', 'skipped', 'cancelled') THEN now() END
         FROM UNNEST($1::bigint[], $2::int[], $3::int[], $4::text[], $5::int[], $6::int[],
                     $7::bytea[], $8::text[], $9::text[], $10::text[], $11::bigint[])
             AS u(execution_id, step_index, item, status, attempt, tries, token, value, result,
                  error, lease_ms)
         ON CONFLICT (execution_id, step_index, item) DO UPDATE SET
             status = EXCLUDED.status, attempt = EXCLUDED.attempt, tries = EXCLUDED.tries,
             attempt_token = EXCLUDED.attempt_token, result = EXCLUDED.result,
             error = EXCLUDED.error, lease_expires_at = EXCLUDED.lease_expires_at,
             started_at = CASE WHEN EXCLUDED.status = 'running' THEN coalesce(l.started_at, now())
                               WHEN EXCLUDED.status = 'dispatched' THEN NULL
                               ELSE l.started_at END,
             finished_at = EXCLUDED.finished_at",
    )
    .bind(items.iter().map(|i| i.key.0.get()).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|i| integer(i.key.1.get()))
            .collect::<Vec<_>>(),
    )
    .bind(items.iter().map(|i| integer(i.key.2)).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.status.as_str()).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|i| integer(i.attempt.get()))
            .collect::<Vec<_>>(),
    )
    .bind(items.iter().map(|i| integer(i.tries)).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|i| i.token.map(|t| t.expose().to_vec()))
            .collect::<Vec<_>>(),
    )
    .bind(items.iter().map(|i| i.value.as_deref()).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|i| i.result.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(items.iter().map(|i| i.error.as_deref()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.lease_ms).collect::<Vec<_>>())
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// The results of every item of loop `step`, in item order (`null` for an item without one):
/// assembled once, when the loop ends.
pub async fn loop_result(
    tx: &mut Transaction<'_, Postgres>,
    id: ExecutionId,
    step: StepIndex,
) -> Result<serde_json::Value, Error> {
    let result: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT jsonb_agg(coalesce(result, 'null'::jsonb) ORDER BY item) FROM loop_items
         WHERE execution_id = $1 AND step_index = $2",
    )
    .bind(id.get())
    .bind(integer(step.get()))
    .fetch_one(&mut **tx)
    .await?;
    Ok(result.unwrap_or_else(|| serde_json::Value::Array(Vec::new())))
}
