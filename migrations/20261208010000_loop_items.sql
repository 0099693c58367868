-- Loops (issue 28, item 2): a loop step keeps only counters (`loop_progress`: total, next,
-- succeeded, failed, in_flight), and each item of its list is one row of `loop_items`, written
-- once when the loop starts and then only when that item changes, so a result costs one row,
-- never a rewrite of the whole list. The step's result (the items' results in item order) is
-- assembled once, when the last item ends.
ALTER TABLE execution_steps ADD COLUMN loop_progress jsonb;

CREATE TABLE loop_items (
    execution_id     bigint NOT NULL,
    step_index       integer NOT NULL,
    item             integer NOT NULL CHECK (item >= 0),
    status           text NOT NULL
                     CHECK (status IN ('pending', 'dispatched', 'running', 'succeeded', 'failed',
                                       'skipped', 'cancelled')),
    -- The item's current attempt: a number of its step's attempt counter (fencing).
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- Its attempts so far, for the step's retry budget.
    tries            integer NOT NULL DEFAULT 0 CHECK (tries >= 0),
    attempt_token    bytea CHECK (attempt_token IS NULL OR octet_length(attempt_token) = 16),
    value            jsonb NOT NULL,
    result           jsonb,
    error            text,
    lease_expires_at timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (execution_id, step_index, item),
    FOREIGN KEY (execution_id, step_index) REFERENCES execution_steps (execution_id, step_index)
        ON DELETE CASCADE
);

-- The lease scanner reads only items in flight.
CREATE INDEX loop_items_in_flight_leases ON loop_items (lease_expires_at)
    WHERE status IN ('dispatched', 'running');
