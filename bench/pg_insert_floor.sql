-- What one zone's delivery insert costs on PostgreSQL, and what it would cost with
-- fewer indexes: the floor under planning a slot, whatever the planning statement.
--
--   psql -h 127.0.0.1 -U postgres -d herald_bench -f bench/pg_insert_floor.sql
--
-- Run it on a database `plan_bench plan` has just planned (a million delivery rows).
-- Inserts the 100,000 Europe/Berlin readers as deliveries of a new edition, the way
-- planning does, in transactions that are rolled back, so the database is unchanged:
-- 1. with the schema as it is (every index and the foreign key), twice;
-- 2. with only the primary key;
-- 3. with the fewest indexes the engine needs: the primary key, the (edition, reader)
--    key, the claim index and one per-reader index for the planner's window lookup.
\timing on
CREATE TEMP TABLE floor_readers AS
    SELECT id FROM subscribers WHERE timezone = 'Europe/Berlin' ORDER BY id;
INSERT INTO editions (slot_key, kind, cadence, planned_at, slot_at, timezone)
    VALUES ('floor-measurement', 'digest', 'daily', 0, 0, 'Europe/Berlin')
    ON CONFLICT (slot_key) DO NOTHING;
\set insert 'INSERT INTO deliveries (edition_id, subscriber_id, kind, cadence, priority, state, attempts, message_id, next_attempt_at, expires_at, created_at, updated_at, slot_at, window_start, content_id, articles_through) SELECT (SELECT id FROM editions WHERE slot_key = $$floor-measurement$$), id, $$digest$$, $$daily$$, 2, $$queued$$, 0, replace(gen_random_uuid()::text, $$-$$, $$$$), 1, 2, 1, 1, 1, 0, 1, 4000 FROM floor_readers'
\echo '1. every index and the foreign key (twice)'
BEGIN; :insert; ROLLBACK;
BEGIN; :insert; ROLLBACK;
\echo '2. primary key only'
BEGIN;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_edition_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_subscriber_id_edition_id_key;
DROP INDEX deliveries_by_edition, deliveries_by_reader, deliveries_articles_through,
    deliveries_waiting, deliveries_leased, deliveries_expiring;
:insert;
ROLLBACK;
\echo '3. primary key, (edition, reader) key, claim index, one per-reader index'
BEGIN;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_edition_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_subscriber_id_edition_id_key;
DROP INDEX deliveries_by_edition, deliveries_by_reader, deliveries_articles_through,
    deliveries_expiring;
CREATE UNIQUE INDEX floor_edition_reader ON deliveries (edition_id, subscriber_id);
CREATE INDEX floor_reader ON deliveries (subscriber_id, cadence, slot_at)
    INCLUDE (articles_through);
:insert;
ROLLBACK;
DELETE FROM editions WHERE slot_key = 'floor-measurement';
