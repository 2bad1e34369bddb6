-- Top stories first, with a cap (`[digest] max_stories`), and feeds recovered from
-- broken XML. Times are integer Unix seconds (UTC).

-- Each region's page (the "and N more stories" link) and how its stories are ordered
-- in a digest: 'newest' (publication time) or 'feed' (the order its feed lists them).
-- Both are synced from `[[regions]]` at start-up.
ALTER TABLE regions ADD COLUMN url TEXT;
ALTER TABLE regions ADD COLUMN story_order TEXT NOT NULL DEFAULT 'newest';

-- The site link a feed gives for itself (RSS channel <link>, Atom alternate link), the
-- fallback for a region without `url`; when the last read needed repairs, the strict
-- parser's first error; and when it had <item>/<entry> elements but gave no items, why.
ALTER TABLE feeds ADD COLUMN site_url TEXT;
ALTER TABLE feeds ADD COLUMN recovered_error TEXT;
ALTER TABLE feeds ADD COLUMN parse_warning TEXT;

-- Where the item stood in its feed when it was added (0 = first), for `order = "feed"`.
ALTER TABLE article_regions ADD COLUMN feed_position INTEGER NOT NULL DEFAULT 0;

-- A content's rank of each story (0 = the top story). Rows planned before this
-- migration all carry 0 and keep their old order (region, newest first).
ALTER TABLE content_articles ADD COLUMN position INTEGER NOT NULL DEFAULT 0;

-- The stories of a content's window that the cap left out, counted per region. They
-- are not in `content_articles`, so they count as not sent, and the reader's next
-- digest of that cadence reaches back for them.
CREATE TABLE content_overflow (
    content_id  INTEGER NOT NULL,
    region_slug TEXT NOT NULL,
    stories     INTEGER NOT NULL,
    PRIMARY KEY (content_id, region_slug)
) WITHOUT ROWID;
