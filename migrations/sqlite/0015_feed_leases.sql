-- Feed leases (src/store/feed_leases.rs): a daemon claims a due feed before polling it,
-- so that several daemons on one database poll each feed once. `lease_owner` is the
-- worker (see `workers`) polling it now; `lease_until` is when the claim runs out if
-- that worker stops renewing it. Its heartbeat renews it, a dead worker's leases are
-- cleared at once by the live ones, and the poll's record clears it. Unix seconds.
ALTER TABLE feeds ADD COLUMN lease_owner INTEGER;
ALTER TABLE feeds ADD COLUMN lease_until INTEGER;
