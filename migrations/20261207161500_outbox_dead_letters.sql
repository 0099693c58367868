-- Commands that can never be published (issue 27): a command over NATS max_payload would make
-- nats-server close the relay's connection on every pass, forever. Such a row is moved here, in
-- the transaction that fails its step with `command_too_large`, so an operator can see what was
-- refused and why; nothing reads it back.
CREATE TABLE outbox_dead_letters (
    id               bigint PRIMARY KEY,
    execution_id     bigint NOT NULL,
    pool             text NOT NULL,
    command          jsonb NOT NULL,
    reason           text NOT NULL,
    size_bytes       bigint NOT NULL,
    max_payload      bigint NOT NULL,
    created_at       timestamptz NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_dead_letters_execution ON outbox_dead_letters (execution_id);
