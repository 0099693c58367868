-- The labels index takes its entries at once instead of through GIN's pending list. With the
-- list (the default), each insert appends to it cheaply, and the insert that finds it past
-- gin_pending_list_limit (4 MB) merges all of it into the index before its commit: a stall of
-- that one submit or report, tens of milliseconds, about every few thousand executions.
ALTER INDEX executions_by_labels SET (fastupdate = off);
