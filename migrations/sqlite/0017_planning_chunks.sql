-- A scheduled slot is planned in chunks of readers, each committed on its own, so that
-- delivery starts on the first chunk while the rest are planned (src/store/planning).
-- `plan_cursor` is the highest reader id the edition has planned so far, NULL once
-- every reader is planned (and always for alerts, manual sends and editions planned
-- before this migration). `window_from` and `expires_at` keep the plan's parameters,
-- so that any process can finish a slot another one began and then died.
-- (The zone index, subscribers (timezone, state), already ends in the rowid here, so a
-- chunk of the next readers by id is a range scan of it.)
ALTER TABLE editions ADD COLUMN plan_cursor INTEGER;
ALTER TABLE editions ADD COLUMN window_from INTEGER;
ALTER TABLE editions ADD COLUMN expires_at INTEGER;
CREATE INDEX editions_unfinished ON editions (slot_at) WHERE plan_cursor IS NOT NULL;
