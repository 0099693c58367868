-- Child executions (sub-playbooks): a child carries its parent, the root of its tree, its depth,
-- and the parent step's attempt and token its end is handed back with (wiki/execution-model.md,
-- "Children across shards"); a parent's `playbook` step records the child it started.
ALTER TABLE executions
    ADD COLUMN parent_id bigint,
    ADD COLUMN root_id bigint,
    ADD COLUMN depth int NOT NULL DEFAULT 0,
    ADD COLUMN parent_step int,
    ADD COLUMN parent_attempt int,
    ADD COLUMN parent_token bytea;
ALTER TABLE execution_steps ADD COLUMN child_id bigint;
-- The listing's `root_id` filter: one range scan per tenant and tree.
CREATE INDEX executions_tenant_root ON executions (tenant, root_id, execution_id DESC)
    WHERE root_id IS NOT NULL;
