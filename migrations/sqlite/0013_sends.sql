-- Manual sends as objects (src/store/sends): who started one, for which region and
-- cadence, whether a dry run or a test copy, and where it stands. Its emails are the
-- deliveries of its edition (editions.send_id); their counts are read from the ledger,
-- never kept here. The Idempotency-Key of an API request is unique, so the same key
-- makes one send. The state the admin chose is stored; `done` is stored only for sends
-- that queue nothing (dry runs, test copies), a sending send is done once none of its
-- rows waits (read from the ledger).
CREATE TABLE sends (
    id              INTEGER PRIMARY KEY,
    started_by      TEXT NOT NULL,
    region_slug     TEXT NOT NULL,
    cadence         TEXT NOT NULL,
    dry_run         INTEGER NOT NULL DEFAULT 0,
    test_address    TEXT,
    state           TEXT NOT NULL CHECK (state = 'planning' OR state = 'sending'
                        OR state = 'paused' OR state = 'done' OR state = 'cancelled'),
    idempotency_key TEXT,
    report          TEXT,
    error           TEXT,
    started_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE UNIQUE INDEX sends_by_idempotency_key ON sends (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE editions ADD COLUMN send_id INTEGER REFERENCES sends (id);
-- Several editions may make one send (a send of several regions, later on).
CREATE INDEX editions_by_send ON editions (send_id) WHERE send_id IS NOT NULL;

-- A paused send's waiting rows are `paused`: out of the claim's partial index, so a
-- claim never walks past them. The state CHECK learns the new state the way migration
-- 0012 added it: the table rebuilt column for column, every row keeping its id, every
-- index made again.
CREATE TABLE deliveries_pausable (
    id               INTEGER PRIMARY KEY,
    edition_id       INTEGER NOT NULL REFERENCES editions (id),
    subscriber_id    INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    cadence          TEXT,
    priority         INTEGER NOT NULL,
    state            TEXT NOT NULL CHECK (state = 'queued' OR state = 'sending'
                         OR state = 'sent' OR state = 'deferred' OR state = 'bounced'
                         OR state = 'failed' OR state = 'expired' OR state = 'cancelled'
                         OR state = 'suppressed' OR state = 'paused'),
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
INSERT INTO deliveries_pausable (id, edition_id, subscriber_id, kind, cadence, priority, state,
        attempts, message_id, next_attempt_at, lease_until, expires_at, smtp_reply, last_error,
        created_at, updated_at, sent_at, slot_at, window_start, lease_owner, content_id,
        articles_through)
    SELECT id, edition_id, subscriber_id, kind, cadence, priority, state, attempts, message_id,
        next_attempt_at, lease_until, expires_at, smtp_reply, last_error, created_at, updated_at,
        sent_at, slot_at, window_start, lease_owner, content_id, articles_through
    FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_pausable RENAME TO deliveries;

CREATE INDEX deliveries_by_edition ON deliveries (edition_id);
CREATE INDEX deliveries_by_reader ON deliveries (subscriber_id, cadence, slot_at);
CREATE INDEX deliveries_waiting ON deliveries (priority, next_attempt_at)
    WHERE state IN ('queued', 'deferred');
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE state = 'sending';
CREATE INDEX deliveries_articles_through ON deliveries (subscriber_id, articles_through)
    WHERE articles_through IS NOT NULL;
CREATE INDEX deliveries_expiring ON deliveries (expires_at) WHERE state IN ('queued', 'deferred');
