-- The secret of the attempt that owns a step (issue 27, finding 8): 16 random bytes the shard
-- makes when it dispatches the attempt and sends in its command. A report or heartbeat is
-- recorded only if it carries this token. NULL for rows stored before this migration, and for
-- steps never dispatched: such a row admits reports and heartbeats by attempt alone, as before.
ALTER TABLE execution_steps ADD COLUMN attempt_token bytea
    CHECK (attempt_token IS NULL OR octet_length(attempt_token) = 16);
