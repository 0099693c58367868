-- Every topology epoch a server of this shard has seen (wiki/spec.md §3.3). A server refuses a topology
-- document that drops or rewrites an epoch recorded here once that epoch is in force: ids may
-- have been minted under it, and routing them differently would misroute them.
CREATE TABLE topology_epochs (
    epoch          bigint PRIMARY KEY CHECK (epoch >= 1),
    activate_at_ms bigint NOT NULL,
    shard_count    integer NOT NULL CHECK (shard_count >= 1),
    seen_at        timestamptz NOT NULL DEFAULT now()
);
