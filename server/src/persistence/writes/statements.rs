//! The two statements of [`super::insert_executions`], with and without a tenant quota; they
//! share their parts through macros.

// The parts both statements share: the executions as rows, the insert of the executions, and
// the steps, first events and first commands of those stored now with the rows it returns.
macro_rules! insert_into_executions {
    () => {
        "         INSERT INTO executions
             (execution_id, playbook_name, playbook, input, labels, status, last_event_seq,
              playbook_version, tenant, parent_id, root_id, depth, parent_step, parent_attempt,
              parent_token)
"
    };
}
macro_rules! input_executions {
    () => {
        "WITH input AS (
         SELECT * FROM UNNEST($18::bigint[], $19::text[], $20::text[], $21::text[],
                              $22::text[], $23::text[], $24::bigint[], $25::int[],
                              $26::text[], $29::bigint[], $30::bigint[], $31::int[],
                              $32::int[], $33::int[], $34::bytea[]) WITH ORDINALITY
             AS t(execution_id, playbook_name, playbook, input, labels, status, last_event_seq,
                  playbook_version, tenant, parent_id, root_id, depth, parent_step,
                  parent_attempt, parent_token, ord)
     "
    };
}
macro_rules! stored_rows {
    () => {
        "         ON CONFLICT (execution_id) DO NOTHING
         RETURNING execution_id, status, created_at
     ), new_steps AS (
         INSERT INTO execution_steps
             (execution_id, step_index, name, status, attempt, lease_expires_at, error,
              finished_at, attempt_token, child_id)
         SELECT s.execution_id, s.step_index, s.name, s.status, s.attempt,
                now() + s.lease_ms * interval '1 millisecond', s.error,
                CASE WHEN s.status IN ('succeeded', 'failed', 'skipped', 'cancelled')
                     THEN now() END, s.token, s.child_id
         FROM UNNEST($1::bigint[], $2::int[], $3::text[], $4::text[], $5::int[], $6::text[],
                     $7::text[], $8::bigint[], $9::bigint[], $28::bytea[], $35::bigint[])
             AS s(execution_id, step_index, name, status, attempt, result, error, lease_ms,
                  started_ms, token, child_id)
         WHERE s.execution_id IN (SELECT execution_id FROM inserted)
     ), new_events AS (
         INSERT INTO execution_events (execution_id, seq, kind, payload)
         SELECT e.execution_id, e.seq, e.kind, e.payload::jsonb
         FROM UNNEST($10::bigint[], $11::bigint[], $12::text[], $13::text[])
             AS e(execution_id, seq, kind, payload)
         WHERE e.execution_id IN (SELECT execution_id FROM inserted)
     ), new_commands AS (
         INSERT INTO outbox (execution_id, pool, command, not_before)
         SELECT o.execution_id, o.pool, o.command::jsonb,
                now() + o.delay_ms * interval '1 millisecond'
         FROM UNNEST($14::bigint[], $15::text[], $16::text[], $17::bigint[])
             AS o(execution_id, pool, command, delay_ms)
         WHERE o.execution_id IN (SELECT execution_id FROM inserted)
         RETURNING id, execution_id
     )
     SELECT i.execution_id, i.status, i.created_at, c.outbox_ids,
            NULL::text AS tenant, NULL::bigint AS admitted
     FROM inserted i LEFT JOIN (
         SELECT execution_id, array_agg(id) AS outbox_ids FROM new_commands
         GROUP BY execution_id
     ) c USING (execution_id)"
    };
}

/// The statement of [`super::insert_executions`] without a quota: `$1` to `$17` are the
/// `ChangeColumns`, `$18` to `$26` the executions, `$28` the steps' attempt tokens (`$27`,
/// the quota, is bound and unused), `$29` to `$34` the executions' parent links (parent, root,
/// depth, step, attempt, token), `$35` the steps' child ids. Returns a row per execution stored now.
pub(super) const INSERT_EXECUTIONS: &str = concat!(
    input_executions!(),
    "), inserted AS (
",
    insert_into_executions!(),
    "         SELECT execution_id, playbook_name, playbook::jsonb, input::jsonb, labels::jsonb,
                status, last_event_seq, playbook_version, tenant, parent_id, root_id, depth,
                parent_step, parent_attempt, parent_token
         FROM input
",
    stored_rows!(),
);

/// The statement of [`super::insert_executions`] with a quota (`$27`): as [`INSERT_EXECUTIONS`], and a
/// row per tenant with new executions that stay in flight (`tenant`, and how many were
/// `admitted`).
pub(super) const INSERT_EXECUTIONS_WITHIN_QUOTA: &str = concat!(
    input_executions!(),
    "), fresh AS (
         -- Not stored yet; those that stay in flight numbered per tenant, in the batch's order.
         SELECT i.execution_id, i.tenant,
                CASE WHEN i.status IN ('pending', 'running') THEN row_number() OVER (
                    PARTITION BY i.tenant, i.status IN ('pending', 'running') ORDER BY i.ord)
                END AS rank
         FROM input i
         WHERE NOT EXISTS (SELECT 1 FROM executions x WHERE x.execution_id = i.execution_id)
     ), quota AS (
         -- Locks each tenant's counter (in tenant order) and admits what fits under $27.
         INSERT INTO tenant_admitted AS q (tenant, executions, last_batch)
         SELECT tenant, least(count(rank), $27), least(count(rank), $27) FROM fresh
         GROUP BY tenant HAVING count(rank) > 0 ORDER BY tenant
         ON CONFLICT (tenant) DO UPDATE SET
             executions = q.executions + least(EXCLUDED.executions, greatest(0, $27
                 - q.executions + coalesce((SELECT f.executions FROM tenant_finished f
                                            WHERE f.tenant = q.tenant), 0))),
             last_batch = least(EXCLUDED.executions, greatest(0, $27
                 - q.executions + coalesce((SELECT f.executions FROM tenant_finished f
                                            WHERE f.tenant = q.tenant), 0)))
         RETURNING q.tenant, q.last_batch AS admitted
     ), inserted AS (
",
    insert_into_executions!(),
    "         SELECT i.execution_id, i.playbook_name, i.playbook::jsonb, i.input::jsonb,
                i.labels::jsonb, i.status, i.last_event_seq, i.playbook_version, i.tenant,
                i.parent_id, i.root_id, i.depth, i.parent_step, i.parent_attempt, i.parent_token
         FROM input i JOIN fresh f USING (execution_id) LEFT JOIN quota q ON q.tenant = f.tenant
         WHERE f.rank IS NULL OR f.rank <= q.admitted
",
    stored_rows!(),
    "
     UNION ALL
     SELECT NULL, NULL, NULL, NULL, tenant, admitted FROM quota"
);
