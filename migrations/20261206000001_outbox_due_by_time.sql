-- The outbox's due index keys on `not_before` alone. Keyed on (not_before, id), it offered the
-- planner a second index for `id = ANY($1)` (id as a non-leading key: a scan of the whole index
-- per id), and a generic plan made while the statistics said the outbox was empty picked it as
-- readily as the primary key. Only the primary key finds rows by id now; what the due index
-- serves (the earliest `not_before`) needs no id.
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (not_before);
