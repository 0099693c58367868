-- Tenants (issue 6): every execution belongs to the tenant of the token that submitted it, and
-- is visible only to that tenant. Listing pages are per tenant, so the listing indexes lead with
-- the tenant (a small tenant's page must not scan a large tenant's rows).
ALTER TABLE executions ADD COLUMN tenant text NOT NULL DEFAULT 'default';

DROP INDEX executions_by_status;
DROP INDEX executions_by_playbook;
CREATE INDEX executions_by_tenant ON executions (tenant, execution_id DESC);
CREATE INDEX executions_by_tenant_status ON executions (tenant, status, execution_id DESC);
CREATE INDEX executions_by_tenant_playbook ON executions (tenant, playbook_name, execution_id DESC);
