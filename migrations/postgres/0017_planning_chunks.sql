-- A scheduled slot is planned in chunks of readers, each committed on its own, so that
-- delivery starts on the first chunk while the rest are planned (src/store/planning).
-- `plan_cursor` is the highest reader id the edition has planned so far, NULL once
-- every reader is planned (and always for alerts, manual sends and editions planned
-- before this migration). `window_from` and `expires_at` keep the plan's parameters,
-- so that any process can finish a slot another one began and then died.
ALTER TABLE editions ADD COLUMN plan_cursor BIGINT;
ALTER TABLE editions ADD COLUMN window_from BIGINT;
ALTER TABLE editions ADD COLUMN expires_at BIGINT;
CREATE INDEX editions_unfinished ON editions (slot_at) WHERE plan_cursor IS NOT NULL;
-- A chunk is the next readers of a zone by id: the zone index in id order answers it
-- with a range scan instead of sorting the whole zone for every chunk.
DROP INDEX subscribers_by_zone;
CREATE INDEX subscribers_by_zone ON subscribers (timezone, state, id);
