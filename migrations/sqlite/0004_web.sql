-- Web sign-up, SQLite flavour. Times are integer Unix seconds (UTC).

-- Proof of consent: one row per web sign-up, with the version of the text the reader
-- agreed to and where the request came from; the confirmation click completes it.
-- Erased with the reader (`herald subscribers remove`).
CREATE TABLE consents (
    id            INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    given_at      INTEGER NOT NULL,
    ip            TEXT NOT NULL,
    user_agent    TEXT NOT NULL,
    text_version  TEXT NOT NULL,
    confirmed_at  INTEGER,
    confirmed_ip  TEXT
);
CREATE INDEX consents_by_subscriber ON consents (subscriber_id, given_at);

-- Recent sign-up attempts, for the per-IP and per-address limits. Keys are keyed
-- hashes, never an address or IP; rows older than their window are pruned.
CREATE TABLE rate_limit_hits (
    scope    TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX rate_limit_hits_by_key ON rate_limit_hits (scope, key_hash, at);
CREATE INDEX rate_limit_hits_by_age ON rate_limit_hits (at);
