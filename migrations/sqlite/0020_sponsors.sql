-- Sponsor slots: a booking shows one sponsor block in the digests of its regions (and
-- of the regions below them) from `starts_on` to `ends_on`, both days included and read
-- in each reader's zone (text, YYYY-MM-DD, so they compare as text).
CREATE TABLE sponsors (
    id         INTEGER PRIMARY KEY,
    label      TEXT NOT NULL,
    headline   TEXT NOT NULL,
    body       TEXT NOT NULL,
    link       TEXT NOT NULL,
    image_url  TEXT,
    image_alt  TEXT,
    starts_on  TEXT NOT NULL,
    ends_on    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE sponsor_regions (
    sponsor_id  INTEGER NOT NULL REFERENCES sponsors (id) ON DELETE CASCADE,
    region_slug TEXT NOT NULL,
    PRIMARY KEY (sponsor_id, region_slug)
);
CREATE INDEX sponsor_regions_by_region ON sponsor_regions (region_slug);

-- The booking a digest carries, chosen when it is planned: the ledger of what each
-- booking went out in (`herald sponsors report`). Alerts and sign-up emails have none.
ALTER TABLE deliveries ADD COLUMN sponsor_id INTEGER;
CREATE INDEX deliveries_by_sponsor ON deliveries (sponsor_id) WHERE sponsor_id IS NOT NULL;
