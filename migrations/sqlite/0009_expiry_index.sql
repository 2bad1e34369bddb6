-- Claims read waiting and leased rows through partial indexes (0006), so the index over
-- every row's state only cost an index write on each state change, in the small commits
-- that record outcomes. The expiry sweep gets its own partial index over waiting rows.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_expiring ON deliveries (expires_at) WHERE state IN ('queued', 'deferred');
