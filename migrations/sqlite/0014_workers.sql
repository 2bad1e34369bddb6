-- The processes that deliver (src/store/workers.rs): one row per running worker, its id
-- the lease owner its claims carry, with a heartbeat it renews every few seconds. A
-- worker whose heartbeat is older than `deliver.worker_timeout` is dead: any live one
-- gives its claimed rows back to the queue and deletes its row, without waiting for
-- their leases to run out. Times are Unix seconds, as everywhere.
CREATE TABLE workers (
    id           INTEGER PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
