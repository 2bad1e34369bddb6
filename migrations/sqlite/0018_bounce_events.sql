-- Bounces, complaints and unsubscribes that arrive after a message was accepted: from
-- the bounce mailbox or a relay's webhook (src/store/bounces.rs). One row per report,
-- matched to the delivery row it answers; (source, source_id) makes a replayed report
-- change nothing. Reports that match no row are not kept. `domain` is the recipient's
-- domain when the report came, for the per-domain figures. Times are Unix seconds.
CREATE TABLE bounce_events (
    id            INTEGER PRIMARY KEY,
    source        TEXT NOT NULL,
    source_id     TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind = 'hard' OR kind = 'soft' OR kind = 'complaint'
                      OR kind = 'unsubscribe'),
    delivery_id   INTEGER NOT NULL,
    subscriber_id INTEGER NOT NULL,
    domain        TEXT NOT NULL,
    diagnostic    TEXT,
    message_id    TEXT,
    occurred_at   INTEGER NOT NULL,
    recorded_at   INTEGER NOT NULL,
    UNIQUE (source, source_id)
);
CREATE INDEX bounce_events_by_subscriber ON bounce_events (subscriber_id, kind, occurred_at);
CREATE INDEX bounce_events_by_delivery ON bounce_events (delivery_id);

-- A report without a VERP token is matched by the Message-ID it quotes.
CREATE INDEX deliveries_by_message_id ON deliveries (message_id);

-- Which report suppressed an address (none for a refusal during the SMTP session or
-- an erasure).
ALTER TABLE suppressions ADD COLUMN bounce_event_id INTEGER;

-- A complaint or an unsubscribe by mail withdraws consent: the consent record says when
-- and how.
ALTER TABLE consents ADD COLUMN withdrawn_at INTEGER;
ALTER TABLE consents ADD COLUMN withdrawn_by TEXT;

-- Sign-ups never confirmed and erased once their link expired, counted per day.
CREATE TABLE purged_signups (
    day   INTEGER PRIMARY KEY,
    count INTEGER NOT NULL
);
