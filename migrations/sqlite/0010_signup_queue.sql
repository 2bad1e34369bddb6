-- Sign-ups the form accepted, waiting for the work that depends on the address's state
-- (new, pending, confirmed, unsubscribed, suppressed). The form answers once its row is
-- stored, so the answer takes as long whatever that state is; the row is deleted in
-- the transaction that does the work, and a crash in between leaves it to be done at
-- the next start.
CREATE TABLE signup_requests (
    id                 INTEGER PRIMARY KEY,
    email              TEXT NOT NULL,
    -- `slug:cadence` per region, separated by commas.
    regions            TEXT NOT NULL,
    timezone           TEXT NOT NULL,
    consent_ip         TEXT NOT NULL,
    consent_user_agent TEXT NOT NULL,
    consent_version    TEXT NOT NULL,
    received_at        INTEGER NOT NULL
);
