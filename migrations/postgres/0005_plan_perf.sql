-- Planning a slot looks up each reader's subscriptions at one cadence, then each
-- window's articles by (region, time). Both indexes carry every column those lookups
-- read, so neither touches the table rows. The article index replaces the narrower one.
CREATE INDEX subscriptions_by_reader ON subscriptions (subscriber_id, cadence, region_slug, created_at);
CREATE INDEX article_regions_window ON article_regions (region_slug, added_at, article_id);
DROP INDEX article_regions_by_region;
