//! The bookkeeping of `tenant_max_executions_in_flight` beside the group commit: giving back
//! what a batch admitted but did not store, and counting again when a server starts with a
//! quota.

use std::collections::HashMap;

use noetl_contract::ExecutionId;
use sqlx::PgConnection;

use super::{Committed, NewExecution};
use crate::persistence::Error;

/// Counts each tenant's executions again from the `executions` table, as the server starts
/// with a quota set: the counters are kept only while a quota is, so they may lag behind the
/// executions stored and ended without one.
pub async fn recount_tenant_executions(pool: &sqlx::PgPool) -> Result<(), Error> {
    sqlx::query(
        "WITH counts AS (
             SELECT tenant, count(*) AS executions,
                    count(*) FILTER (WHERE status NOT IN ('pending', 'running')) AS finished
             FROM executions GROUP BY tenant
         ), admitted AS (
             INSERT INTO tenant_admitted AS q (tenant, executions)
             SELECT tenant, executions FROM counts ORDER BY tenant
             ON CONFLICT (tenant) DO UPDATE SET executions = EXCLUDED.executions
         )
         INSERT INTO tenant_finished AS f (tenant, executions)
         SELECT tenant, finished FROM counts ORDER BY tenant
         ON CONFLICT (tenant) DO UPDATE SET executions = EXCLUDED.executions",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives back the quota of executions a batch admitted but did not store: an id another
/// replica stored between the statement's snapshot and its insert. Counted as finished, so the
/// tenant's count of executions in flight stays exact.
pub(super) async fn settle_admitted(
    connection: &mut PgConnection,
    rows: &[NewExecution],
    committed: &[Committed],
    mut admitted: HashMap<String, i64>,
) -> Result<(), Error> {
    let tenants: HashMap<ExecutionId, &str> = rows
        .iter()
        .map(|r| (r.execution_id, r.tenant.as_str()))
        .collect();
    for stored in committed.iter().filter(|c| !c.status.is_terminal()) {
        if let Some(count) = tenants
            .get(&stored.execution_id)
            .and_then(|t| admitted.get_mut(*t))
        {
            *count -= 1;
        }
    }
    let (tenants, unused): (Vec<String>, Vec<i64>) =
        admitted.into_iter().filter(|(_, n)| *n > 0).unzip();
    if tenants.is_empty() {
        return Ok(());
    }
    tracing::info!(
        ?tenants,
        "gave back the quota of executions stored concurrently"
    );
    sqlx::query(
        "INSERT INTO tenant_finished AS f (tenant, executions)
         SELECT * FROM UNNEST($1::text[], $2::bigint[]) ORDER BY 1
         ON CONFLICT (tenant) DO UPDATE SET executions = f.executions + EXCLUDED.executions",
    )
    .bind(&tenants)
    .bind(&unused)
    .execute(&mut *connection)
    .await?;
    Ok(())
}
