-- The suppression list kept a bare SHA-256 of each address, which anyone holding the
-- database reverses by hashing a list of addresses. Entries are now keyed with the site
-- secret (src/store/suppressions.rs). SQL cannot compute them, so the rows made before
-- this migration are marked here and re-keyed by herald right after migrating; rows
-- inserted from now on are keyed ones by default.
ALTER TABLE suppressions ADD COLUMN hash_scheme TEXT NOT NULL DEFAULT 'hmac-sha256';
UPDATE suppressions SET hash_scheme = 'sha256';
CREATE INDEX suppressions_unkeyed ON suppressions (email_hash) WHERE hash_scheme = 'sha256';
