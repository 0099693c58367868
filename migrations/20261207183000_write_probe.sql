-- Readiness proves the shard can commit (issue 27, finding 9): `SELECT 1` also answers on a
-- read-only database (`default_transaction_read_only`, a hot standby), which cannot take a
-- single submit. Each readiness check upserts the one row of this table, a committed write of
-- a few bytes; `probed_at` tells an operator when a check last wrote.
CREATE TABLE write_probe (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    probed_at timestamptz NOT NULL
);
