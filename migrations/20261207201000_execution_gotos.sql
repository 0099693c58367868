-- The `goto`s of `on_error` rules an execution took (issue 28, item 4), bounded by its
-- playbook's `max_gotos`: written in the UPDATE of the execution's row that the transaction of
-- each decision already makes.
ALTER TABLE executions ADD COLUMN gotos integer NOT NULL DEFAULT 0;
