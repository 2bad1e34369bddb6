-- Site-wide rate limits (src/store/rate_budgets.rs): one row per paced budget (the
-- global `smtp.rate_per_second`, and each `[smtp.domains]` rate), holding the time
-- (Unix microseconds) at which the next message may go. A process books a short run of
-- send times by moving it forward in one statement, so the rate holds across every
-- process on the database, not per process.
CREATE TABLE rate_budgets (
    name    TEXT PRIMARY KEY,
    next_at BIGINT NOT NULL
);

-- Which process a worker row belongs to, for a live worker on the same machine to tell
-- at once that it is gone (src/store/workers.rs): `process_scope` names the kernel boot
-- and the pid namespace the pid is counted in, `process_start` the process's start time
-- in that kernel's clock ticks, so a pid taken again by another process does not pass.
ALTER TABLE workers ADD COLUMN process_scope TEXT;
ALTER TABLE workers ADD COLUMN process_start BIGINT;
