-- Step orchestration (issue 3): one row per step of an execution, and the outbox of commands
-- that must reach JetStream. Both are written in the same transaction as the execution's state.

CREATE TABLE execution_steps (
    execution_id     bigint NOT NULL REFERENCES executions (execution_id) ON DELETE CASCADE,
    step_index       integer NOT NULL CHECK (step_index >= 0),
    name             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'dispatched', 'running', 'succeeded', 'failed',
                                       'skipped', 'cancelled')),
    -- The attempt that owns the step; reports of other attempts are ignored (fencing).
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    result           jsonb,
    error            text,
    -- While dispatched or running: when the attempt is presumed lost unless it heartbeats.
    lease_expires_at timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, step_index)
);

-- The lease scanner reads only in-flight steps.
CREATE INDEX execution_steps_in_flight_leases ON execution_steps (lease_expires_at)
    WHERE status IN ('dispatched', 'running');

-- Commands committed but not yet acknowledged by JetStream. The relay publishes rows that are
-- due and deletes them once stored; a publish that fails leaves the row for the next pass.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    execution_id bigint NOT NULL,
    pool         text NOT NULL,
    command      jsonb NOT NULL,
    not_before   timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_due ON outbox (not_before, id);
