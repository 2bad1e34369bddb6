-- herald schema, SQLite flavour. Times are integer Unix seconds (UTC).

CREATE TABLE regions (
    slug        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    parent      TEXT,
    timezone    TEXT NOT NULL
);

CREATE TABLE feeds (
    id              INTEGER PRIMARY KEY,
    region_slug     TEXT NOT NULL,
    url             TEXT NOT NULL,
    etag            TEXT,
    last_modified   TEXT,
    last_polled_at  INTEGER,
    last_success_at INTEGER,
    last_error      TEXT,
    UNIQUE (region_slug, url)
);

CREATE TABLE articles (
    id           INTEGER PRIMARY KEY,
    link         TEXT NOT NULL UNIQUE,
    title        TEXT NOT NULL,
    summary      TEXT NOT NULL DEFAULT '',
    category     TEXT NOT NULL DEFAULT '',
    breaking     INTEGER NOT NULL DEFAULT 0,
    published_at INTEGER,
    ingested_at  INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- Which feed item (feed, guid) is which article: dedup by GUID within a feed.
CREATE TABLE article_sources (
    feed_id    INTEGER NOT NULL REFERENCES feeds (id) ON DELETE CASCADE,
    guid       TEXT NOT NULL,
    article_id INTEGER NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    PRIMARY KEY (feed_id, guid)
);

-- One article can belong to several regions (a state feed and a town feed).
CREATE TABLE article_regions (
    article_id  INTEGER NOT NULL REFERENCES articles (id) ON DELETE CASCADE,
    region_slug TEXT NOT NULL,
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (article_id, region_slug)
);
CREATE INDEX article_regions_by_region ON article_regions (region_slug, added_at);

CREATE TABLE subscribers (
    id              INTEGER PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL,
    timezone        TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    confirmed_at    INTEGER,
    unsubscribed_at INTEGER,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE subscriptions (
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    region_slug   TEXT NOT NULL,
    cadence       TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (subscriber_id, region_slug)
);
CREATE INDEX subscriptions_by_region ON subscriptions (region_slug, cadence);

-- Addresses that must never be mailed again, kept as SHA-256 hex so erasure keeps no address.
CREATE TABLE suppressions (
    email_hash TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- One planned send: a manual send, or (later) a scheduled slot. slot_key makes planning idempotent.
CREATE TABLE editions (
    id          INTEGER PRIMARY KEY,
    slot_key    TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    cadence     TEXT,
    region_slug TEXT,
    planned_at  INTEGER NOT NULL
);

-- The outbox and the delivery ledger: one row per email, kept after it reaches a final state.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    edition_id      INTEGER NOT NULL REFERENCES editions (id),
    subscriber_id   INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    cadence         TEXT,
    priority        INTEGER NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    message_id      TEXT NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    expires_at      INTEGER NOT NULL,
    smtp_reply      TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    UNIQUE (subscriber_id, edition_id)
);
CREATE INDEX deliveries_due ON deliveries (state, priority, next_attempt_at);
CREATE INDEX deliveries_by_edition ON deliveries (edition_id);

-- Which articles an email carries. The primary key gives a reader each article at most once.
CREATE TABLE delivery_articles (
    delivery_id   INTEGER NOT NULL,
    subscriber_id INTEGER NOT NULL,
    article_id    INTEGER NOT NULL,
    region_slug   TEXT NOT NULL,
    PRIMARY KEY (subscriber_id, article_id)
);
CREATE INDEX delivery_articles_by_delivery ON delivery_articles (delivery_id);
