-- Claiming walks waiting rows in lane order and stops after a batch: a partial index
-- over just the waiting rows keeps that O(batch) however large the ledger grows.
CREATE INDEX deliveries_waiting ON deliveries (priority, next_attempt_at)
    WHERE state IN ('queued', 'deferred');
-- Leases are looked up only among rows being sent.
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE state = 'sending';
