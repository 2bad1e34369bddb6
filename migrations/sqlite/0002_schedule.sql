-- Scheduled digests and alerts.

-- The instant a scheduled edition belongs to (its slot), and the zone it was planned for.
ALTER TABLE editions ADD COLUMN slot_at INTEGER;
ALTER TABLE editions ADD COLUMN timezone TEXT;

-- Each digest remembers the slot it was for and where its content window began, so the
-- next digest of that cadence starts where this one ended.
ALTER TABLE deliveries ADD COLUMN slot_at INTEGER;
ALTER TABLE deliveries ADD COLUMN window_start INTEGER;
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
    skipped_at INTEGER NOT NULL
);

-- Article placements are the planner's bulk write (a million digests of twenty stories
-- is twenty million rows): keep them in one B-tree keyed by (reader, article), without
-- a rowid table or a second index. Rows of one email are found by reader, then delivery.
CREATE TABLE delivery_articles_compact (
    subscriber_id INTEGER NOT NULL,
    article_id    INTEGER NOT NULL,
    delivery_id   INTEGER NOT NULL,
    region_slug   TEXT NOT NULL,
    PRIMARY KEY (subscriber_id, article_id)
) WITHOUT ROWID;
INSERT INTO delivery_articles_compact (subscriber_id, article_id, delivery_id, region_slug)
    SELECT subscriber_id, article_id, delivery_id, region_slug FROM delivery_articles;
DROP TABLE delivery_articles;
ALTER TABLE delivery_articles_compact RENAME TO delivery_articles;
