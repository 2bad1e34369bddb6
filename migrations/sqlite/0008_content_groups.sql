-- A digest's articles are stored once per content group instead of once per reader.
-- Readers of one edition who follow the same regions at its cadence, whose windows start
-- at the same instant and who had none of its articles yet get the same email body: a
-- million digests of twenty stories become a million delivery rows and a few thousand
-- placement rows, not twenty million. A reader who already had some of the window's
-- articles (as an alert, in another cadence's digest, or under another region) is in a
-- group of readers who had exactly those, whose content leaves them out.
CREATE TABLE contents (
    id         INTEGER PRIMARY KEY,
    edition_id INTEGER NOT NULL REFERENCES editions (id),
    -- What the group shares, e.g. regions, window start and the articles left out.
    group_key  TEXT NOT NULL,
    UNIQUE (edition_id, group_key)
);

-- Which articles a content carries, each under the region it is shown in.
CREATE TABLE content_articles (
    content_id  INTEGER NOT NULL,
    article_id  INTEGER NOT NULL,
    region_slug TEXT NOT NULL,
    PRIMARY KEY (content_id, article_id)
) WITHOUT ROWID;

-- The email's content, and the highest article id in it. An article can only be in a
-- reader's earlier emails whose `articles_through` is at least its id, so the planner
-- looks for articles a reader already had only where one of those emails exists.
ALTER TABLE deliveries ADD COLUMN content_id INTEGER;
ALTER TABLE deliveries ADD COLUMN articles_through INTEGER;

-- Rows planned before this migration keep their articles: each becomes its own content
-- (with the delivery's id, which no content has yet), carrying the same placements.
INSERT INTO contents (id, edition_id, group_key)
    SELECT d.id, d.edition_id, 'delivery:' || d.id FROM deliveries d
    WHERE d.id IN (SELECT delivery_id FROM delivery_articles);
INSERT INTO content_articles (content_id, article_id, region_slug)
    SELECT delivery_id, article_id, region_slug FROM delivery_articles;
UPDATE deliveries SET content_id = id,
    articles_through = (SELECT MAX(ca.article_id) FROM content_articles ca
                        WHERE ca.content_id = deliveries.id)
    WHERE id IN (SELECT id FROM contents);
DROP TABLE delivery_articles;

CREATE INDEX deliveries_articles_through ON deliveries (subscriber_id, articles_through)
    WHERE articles_through IS NOT NULL;
