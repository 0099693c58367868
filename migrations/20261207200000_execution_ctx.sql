-- An execution's variables (issue 28): what its steps' `set` wrote, read by templates as
-- `ctx.<name>`. Written by the transaction that records the step's success, in the UPDATE of the
-- execution's row it already makes; at most 64 KiB of JSON (`ctx_too_large`).
ALTER TABLE executions ADD COLUMN ctx jsonb NOT NULL DEFAULT '{}';
