-- Which process holds a row's lease. A worker renews only the leases it still owns and
-- records or returns only rows it still owns, so a row another worker took over after
-- a lapse is never touched twice.
ALTER TABLE deliveries ADD COLUMN lease_owner INTEGER;
