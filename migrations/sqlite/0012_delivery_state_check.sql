-- A delivery row can only hold a state herald knows (src/domain/delivery.rs), whatever
-- writes it. SQLite adds a CHECK to a column only by rebuilding the table: the new one
-- is the old one column for column, in the same order, plus the CHECK; every row keeps
-- its id; then every index is made again as migrations 0001-0009 left it. No table
-- refers to deliveries, so dropping the old one touches no other row. The CHECK is a
-- chain of equalities, not `state IN (…)`: SQLite evaluates a constant IN list of more
-- than two values through a temporary b-tree built for each row written, which made
-- every claim and outcome update several times slower.
CREATE TABLE deliveries_checked (
    id               INTEGER PRIMARY KEY,
    edition_id       INTEGER NOT NULL REFERENCES editions (id),
    subscriber_id    INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    cadence          TEXT,
    priority         INTEGER NOT NULL,
    state            TEXT NOT NULL CHECK (state = 'queued' OR state = 'sending'
                         OR state = 'sent' OR state = 'deferred' OR state = 'bounced'
                         OR state = 'failed' OR state = 'expired' OR state = 'cancelled'
                         OR state = 'suppressed'),
    attempts         INTEGER NOT NULL DEFAULT 0,
    message_id       TEXT NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    lease_until      INTEGER,
    expires_at       INTEGER NOT NULL,
    smtp_reply       TEXT,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    sent_at          INTEGER,
    slot_at          INTEGER,
    window_start     INTEGER,
    lease_owner      INTEGER,
    content_id       INTEGER,
    articles_through INTEGER,
    UNIQUE (subscriber_id, edition_id)
);
INSERT INTO deliveries_checked (id, edition_id, subscriber_id, kind, cadence, priority, state,
        attempts, message_id, next_attempt_at, lease_until, expires_at, smtp_reply, last_error,
        created_at, updated_at, sent_at, slot_at, window_start, lease_owner, content_id,
        articles_through)
    SELECT id, edition_id, subscriber_id, kind, cadence, priority, state, attempts, message_id,
        next_attempt_at, lease_until, expires_at, smtp_reply, last_error, created_at, updated_at,
        sent_at, slot_at, window_start, lease_owner, content_id, articles_through
    FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_checked RENAME TO deliveries;

CREATE INDEX deliveries_by_edition ON deliveries (edition_id);
CREATE INDEX deliveries_by_reader ON deliveries (subscriber_id, cadence, slot_at);
CREATE INDEX deliveries_waiting ON deliveries (priority, next_attempt_at)
    WHERE state IN ('queued', 'deferred');
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE state = 'sending';
CREATE INDEX deliveries_articles_through ON deliveries (subscriber_id, articles_through)
    WHERE articles_through IS NOT NULL;
CREATE INDEX deliveries_expiring ON deliveries (expires_at) WHERE state IN ('queued', 'deferred');
