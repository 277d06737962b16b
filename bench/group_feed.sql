-- What the feed's triggers on memberships cost the writes they follow:
--   psql -X -q -d <a database with schema.sql> -f bench/group_feed.sql
-- In one transaction, rolled back at the end: the tables are as before, but
-- it empties them meanwhile, and holds their locks: a database of its own.
-- 1. A 1,000-member add (ADD_MEMBERS' INSERT) with the trigger and without,
--    taking turns, 50 of each, among 120,000 users.
-- 2. A user's delete (no memberships) with the trigger on removals and
--    without, taking turns, 10 rounds of 1,000 deletes each.
-- Prints the median of each.
BEGIN;
TRUNCATE users, groups, memberships, idempotency_keys, user_changes, group_changes;
INSERT INTO users (name, email) SELECT 'n', 'u' || i || '@x.io' FROM generate_series(1, 120000) i;
INSERT INTO groups (name) SELECT 'g' || i FROM generate_series(1, 100) i;
ANALYZE users;

CREATE FUNCTION pg_temp.timed_adds(first int, count int) RETURNS SETOF float8
LANGUAGE plpgsql AS $$
DECLARE
    began timestamptz;
    first_user bigint := (SELECT min(id) FROM users);
BEGIN
    FOR g IN first..first + count - 1 LOOP
        began := clock_timestamp();
        INSERT INTO memberships (group_id, user_id)
        SELECT (SELECT min(id) FROM groups) + g - 1, id FROM users
        WHERE id BETWEEN first_user + (g - 1) * 1000 AND first_user + g * 1000 - 1
        ORDER BY id ON CONFLICT DO NOTHING;
        RETURN NEXT extract(epoch FROM clock_timestamp() - began) * 1000;
    END LOOP;
END $$;

CREATE FUNCTION pg_temp.timed_deletes(first bigint, count int) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE began timestamptz := clock_timestamp();
BEGIN
    FOR i IN first..first + count - 1 LOOP
        DELETE FROM users WHERE id = i;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - began) * 1e6 / count;
END $$;

CREATE TEMP TABLE timings (what text, feed boolean, value float8);
DO $$ BEGIN
    FOR round IN 0..4 LOOP
        INSERT INTO timings SELECT 'add 1,000 members, ms', true, pg_temp.timed_adds(round * 20 + 1, 10);
        ALTER TABLE memberships DISABLE TRIGGER memberships_added;
        INSERT INTO timings SELECT 'add 1,000 members, ms', false, pg_temp.timed_adds(round * 20 + 11, 10);
        ALTER TABLE memberships ENABLE TRIGGER memberships_added;
    END LOOP;
    -- The 20,000 users after the members above: each delete cascades to none.
    FOR round IN 0..9 LOOP
        INSERT INTO timings SELECT 'delete a user, µs', true,
            pg_temp.timed_deletes((SELECT min(id) FROM users) + 100000 + round * 2000, 1000);
        ALTER TABLE memberships DISABLE TRIGGER memberships_removed;
        INSERT INTO timings SELECT 'delete a user, µs', false,
            pg_temp.timed_deletes((SELECT min(id) FROM users) + 101000 + round * 2000, 1000);
        ALTER TABLE memberships ENABLE TRIGGER memberships_removed;
    END LOOP;
END $$;

SELECT what, CASE WHEN feed THEN 'with the feed' ELSE 'without' END AS triggers, count(*) AS runs,
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY value)::numeric, 1) AS median
FROM timings GROUP BY what, feed ORDER BY what, feed DESC;
ROLLBACK;
