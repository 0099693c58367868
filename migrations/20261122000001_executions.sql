-- Per-shard schema. Every shard database holds only the executions that route to it.
-- Operators and tests read these tables directly: `executions.execution_id` (bigint primary key)
-- and `execution_events (execution_id, seq)` are a contract.

-- Which shard this database is. Written once by the first server to start; a server configured
-- with a different position for this database refuses to start (NOETL_SHARDS entries reordered).
CREATE TABLE shard_identity (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    shard      integer NOT NULL CHECK (shard >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE executions (
    execution_id   bigint PRIMARY KEY CHECK (execution_id >= 0),
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    playbook_name  text NOT NULL,
    playbook       jsonb NOT NULL,
    input          jsonb NOT NULL DEFAULT '{}'::jsonb,
    labels         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Sequence number of the last event appended to this execution's log.
    last_event_seq bigint NOT NULL DEFAULT 1 CHECK (last_event_seq >= 1),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The execution's log. Order is `seq`, allocated under the execution's row lock, not commit order.
CREATE TABLE execution_events (
    execution_id bigint NOT NULL REFERENCES executions (execution_id) ON DELETE CASCADE,
    seq          bigint NOT NULL CHECK (seq >= 1),
    kind         text NOT NULL,
    payload      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, seq)
);
