-- The write path of a step (issue 7: cost per execution). Every row of an execution's steps and
-- log is written by the server in the transaction that holds the execution's row lock (or that
-- inserts it), and nothing deletes executions, so the foreign keys only re-checked what that
-- lock already guarantees, at the price of a trigger and a key-share lookup per step and event
-- row written.
ALTER TABLE execution_steps DROP CONSTRAINT execution_steps_execution_id_fkey;
ALTER TABLE execution_events DROP CONSTRAINT execution_events_execution_id_fkey;

-- The outbox is a queue (every row is deleted within milliseconds) and step rows are updated a
-- few times each: vacuum them after a fixed number of dead rows rather than a fraction of the
-- table, so their indexes do not fill with dead entries between passes on a large shard.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
                        autovacuum_vacuum_cost_delay = 0);
ALTER TABLE execution_steps SET (autovacuum_vacuum_scale_factor = 0.02,
                                 autovacuum_vacuum_insert_scale_factor = 0.02);
ALTER TABLE executions SET (autovacuum_vacuum_scale_factor = 0.02,
                            autovacuum_vacuum_insert_scale_factor = 0.02);
