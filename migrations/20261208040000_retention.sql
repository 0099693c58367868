-- Retention: the purge finds terminal executions by the time they last changed (a terminal
-- execution never changes again) through this partial index, oldest first, so a pass reads
-- only the rows it deletes. Pending and running executions are not in it: the hot path's
-- inserts and most of its updates do not touch it.
CREATE INDEX executions_finished_by_time ON executions (updated_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');
