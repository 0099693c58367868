-- Budgets of one execution and of one tenant in a shard (issue 27).

-- The bytes of an execution's step results together (their JSON), kept by the transaction that
-- stores each result: a result that would take them over `execution_results_max_bytes` fails
-- its step with `result_too_large` instead, so the execution stays readable. Counted for the
-- executions still running when this runs; finished ones take no more results.
ALTER TABLE executions ADD COLUMN results_bytes bigint NOT NULL DEFAULT 0;
UPDATE executions AS x SET results_bytes = s.bytes
FROM (SELECT execution_id, sum(octet_length(result::text)) AS bytes FROM execution_steps
      WHERE result IS NOT NULL GROUP BY execution_id) AS s
WHERE x.execution_id = s.execution_id AND x.status IN ('pending', 'running');

-- A tenant's executions in flight in this shard are `tenant_admitted.executions` minus
-- `tenant_finished.executions`. Each table is written by one path only: the group commit of
-- submits admits (up to `tenant_max_executions_in_flight`), the transaction that ends an
-- execution counts it finished, so submits and reports never wait for each other's row.
CREATE TABLE tenant_admitted (
    tenant     text PRIMARY KEY,
    executions bigint NOT NULL,
    -- How many the last batch admitted: the statement that admits reads it back.
    last_batch bigint NOT NULL DEFAULT 0
);
CREATE TABLE tenant_finished (
    tenant     text PRIMARY KEY,
    executions bigint NOT NULL
);
INSERT INTO tenant_admitted (tenant, executions)
SELECT tenant, count(*) FROM executions GROUP BY tenant;
INSERT INTO tenant_finished (tenant, executions)
SELECT tenant, count(*) FROM executions WHERE status NOT IN ('pending', 'running') GROUP BY tenant;
