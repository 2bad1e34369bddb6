-- Ingest hardening, SQLite flavour. Times are integer Unix seconds (UTC).

-- When each feed is next due, and how many polls in a row have failed (drives backoff).
-- etag and last_modified (for conditional GET) already exist since 0001.
ALTER TABLE feeds ADD COLUMN next_poll_at INTEGER;
ALTER TABLE feeds ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;

-- Bearer tokens for the push API. Only a SHA-256 (hex) of each token is kept, so a
-- copy of the database does not let anyone push articles.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);
