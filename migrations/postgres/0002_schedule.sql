-- Scheduled digests and alerts.

-- The instant a scheduled edition belongs to (its slot), and the zone it was planned for.
ALTER TABLE editions ADD COLUMN slot_at BIGINT;
ALTER TABLE editions ADD COLUMN timezone TEXT;

-- Each digest remembers the slot it was for and where its content window began, so the
-- next digest of that cadence starts where this one ended.
ALTER TABLE deliveries ADD COLUMN slot_at BIGINT;
ALTER TABLE deliveries ADD COLUMN window_start BIGINT;
CREATE INDEX deliveries_by_reader ON deliveries (subscriber_id, cadence, slot_at);

-- Readers are planned per zone.
CREATE INDEX subscribers_by_zone ON subscribers (timezone, state);
CREATE INDEX articles_breaking ON articles (breaking, ingested_at);

-- Small named values the planner keeps between runs (e.g. the last instant planned).
CREATE TABLE planner_state (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

-- Slots skipped because they were older than max_lateness when first seen.
CREATE TABLE skipped_slots (
    slot_key   TEXT PRIMARY KEY,
    skipped_at BIGINT NOT NULL
);

-- Article placements are the planner's bulk write: one index, keyed by (reader, article).
-- Rows of one email are found by reader, then delivery.
DROP INDEX delivery_articles_by_delivery;
