-- Listing executions newest first (issue 5): ids are time-ordered, so a page is a range of the
-- primary key below a cursor; these indexes keep a filtered page O(limit) too.
-- The catalog version an execution ran (null for an inline playbook).
ALTER TABLE executions ADD COLUMN playbook_version integer CHECK (playbook_version >= 1);

CREATE INDEX executions_by_status ON executions (status, execution_id DESC);
CREATE INDEX executions_by_playbook ON executions (playbook_name, execution_id DESC);
CREATE INDEX executions_by_labels ON executions USING gin (labels jsonb_path_ops);
