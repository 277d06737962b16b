-- The users table. Idempotent: safe to apply any number of times.

CREATE TABLE IF NOT EXISTS users (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    -- "C" collation: lower() folds ASCII only and ordering is bytewise, so
    -- identity and order are the same on every server whatever its locale.
    email      text COLLATE "C" NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One user per email regardless of letter case; also serves lookups and
-- keyset paging in email order.
CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower_key ON users (lower(email));

-- Added in the second release. ADD COLUMN IF NOT EXISTS makes these a no-op
-- on a table that has them, and brings a first-release table up to date with
-- every user kept. public_id is the user's stable id, the API's "id" (the
-- bigint "id" above stays the internal key, never shown). Its volatile
-- default fills existing rows by rewriting the table, under a lock that
-- blocks reads while the rewrite lasts: 0.6 s for 100,000 users, measured.
-- The constant defaults of the other two are stored once in the catalog, so
-- adding them rewrites nothing.
ALTER TABLE users
    ADD COLUMN IF NOT EXISTS public_id uuid NOT NULL DEFAULT gen_random_uuid(),
    -- Both set by every UPDATE statement; version names the ETag.
    ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1;

CREATE UNIQUE INDEX IF NOT EXISTS users_public_id_key ON users (public_id);

-- Added in the third release: a user's status and attributes (the caller's
-- facts). Their defaults are constants, stored once in the catalog: adding
-- the columns rewrites nothing, and every user already there is active with
-- no attributes.
ALTER TABLE users
    ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'active',
    ADD COLUMN IF NOT EXISTS attributes jsonb NOT NULL DEFAULT '{}';

-- Added in the fourth release: the id a SCIM provider (Okta, Entra ID) keeps
-- for the user, its externalId; null for users made otherwise. No default:
-- adding it rewrites nothing.
ALTER TABLE users ADD COLUMN IF NOT EXISTS external_id text;

-- Added in the fifth release: who made the user's last write, for its change
-- in the feed (user_changes below): the caller's client name and the
-- request's X-Request-ID, null when the service runs open. On the row, set by
-- every INSERT and UPDATE, because one statement may write many callers' rows
-- (the creates of a loop turn) and the statement trigger sees only the rows.
-- No default: adding them rewrites nothing, and older rows have null.
ALTER TABLE users
    ADD COLUMN IF NOT EXISTS actor text,
    ADD COLUMN IF NOT EXISTS request_id text;

-- The rules of attributes (service/schemas.py): at most 50 names of 1 to 64
-- characters [a-z0-9_.-] starting with a letter, each a string of at most
-- 1,000 characters without control characters or bidi overrides, and at most
-- 8,192 bytes as the API's compact JSON. jsonb's text puts a space after
-- each ":" and ",", 2n - 1 bytes more than the compact form. A function, as a
-- CHECK cannot hold a subquery; users_attributes_valid calls it only for
-- users with attributes, so the rest cost no more than one comparison. In
-- PL/pgSQL: the planner tries to inline a LANGUAGE sql function in a CHECK
-- for every INSERT statement, parsing its body each time only to find that
-- it cannot, ~45 µs a statement (measured on a 30-row INSERT); PL/pgSQL is
-- never inlined. A name's length is checked apart from its pattern: with a
-- bounded repeat ({0,63}), which PostgreSQL's regex engine expands into 64
-- copies of the class, the function took 3 times as long (16 names).
CREATE OR REPLACE FUNCTION attributes_valid(attributes jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$ BEGIN
    IF jsonb_typeof(attributes) <> 'object' THEN
        RETURN false;
    END IF;
    RETURN (
        SELECT count(*) <= 50
            AND coalesce(bool_and(
                key ~ '^[a-z][a-z0-9_.-]*$'
                AND char_length(key) <= 64
                AND jsonb_typeof(value) = 'string'
                AND char_length(value #>> '{}') <= 1000
                AND value #>> '{}' !~ '[\x01-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]'
            ), true)
            AND octet_length(attributes::text) - greatest(2 * count(*) - 1, 0) <= 8192
        FROM jsonb_each(attributes)
    );
END $$;

-- Mirrors of the API's validation rules (service/schemas.py), as a second
-- line of defence. Written with split_part and one character class rather
-- than a single anchored regex: the same rules at a third of the cost on a
-- bulk COPY. The classes spell out every character, as the API's patterns do
-- (NUL aside, which text cannot hold).
--
-- Each rule is replaced when its comment does not name its current version,
-- so that a database made by an earlier release is brought up to date in
-- place. Added NOT VALID, the new rule holds for every row written from now
-- on without a scan of the table under this transaction's lock; the VALIDATE
-- statements at the end check the rows already there.
DO $$ BEGIN
    IF obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 'users'::regclass
            AND conname = 'users_name_valid'), 'pg_constraint') IS DISTINCT FROM 'version 2' THEN
        ALTER TABLE users DROP CONSTRAINT IF EXISTS users_name_valid;
        ALTER TABLE users ADD CONSTRAINT users_name_valid CHECK (
            char_length(name) BETWEEN 1 AND 200
            AND name !~ '[\x01-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]'
        ) NOT VALID;
        COMMENT ON CONSTRAINT users_name_valid ON users IS 'version 2';
    END IF;
    IF obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 'users'::regclass
            AND conname = 'users_email_valid'), 'pg_constraint') IS DISTINCT FROM 'version 2' THEN
        ALTER TABLE users DROP CONSTRAINT IF EXISTS users_email_valid;
        ALTER TABLE users ADD CONSTRAINT users_email_valid CHECK (
            char_length(email) BETWEEN 3 AND 254
            AND char_length(split_part(email, '@', 1)) BETWEEN 1 AND 64
            AND split_part(email, '@', 2) <> ''
            AND split_part(email, '@', 3) = ''
            AND strpos(split_part(email, '@', 2), '/') = 0
            AND email !~ '[ \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff\u200b-\u200f\u2060\u061c\u202a-\u202e\u2066-\u2069\x01-\x1f\x7f-\x9f]'
        ) NOT VALID;
        COMMENT ON CONSTRAINT users_email_valid ON users IS 'version 2';
    END IF;
    IF obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 'users'::regclass
            AND conname = 'users_status_valid'), 'pg_constraint') IS DISTINCT FROM 'version 1' THEN
        ALTER TABLE users DROP CONSTRAINT IF EXISTS users_status_valid;
        ALTER TABLE users ADD CONSTRAINT users_status_valid
            CHECK (status IN ('active', 'disabled')) NOT VALID;
        COMMENT ON CONSTRAINT users_status_valid ON users IS 'version 1';
    END IF;
    IF obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 'users'::regclass
            AND conname = 'users_attributes_valid'), 'pg_constraint') IS DISTINCT FROM 'version 1' THEN
        ALTER TABLE users DROP CONSTRAINT IF EXISTS users_attributes_valid;
        ALTER TABLE users ADD CONSTRAINT users_attributes_valid
            CHECK (attributes = '{}' OR attributes_valid(attributes)) NOT VALID;
        COMMENT ON CONSTRAINT users_attributes_valid ON users IS 'version 1';
    END IF;
    IF obj_description((SELECT oid FROM pg_constraint WHERE conrelid = 'users'::regclass
            AND conname = 'users_external_id_valid'), 'pg_constraint') IS DISTINCT FROM 'version 1' THEN
        ALTER TABLE users DROP CONSTRAINT IF EXISTS users_external_id_valid;
        ALTER TABLE users ADD CONSTRAINT users_external_id_valid
            CHECK (char_length(external_id) BETWEEN 1 AND 255) NOT VALID;
        COMMENT ON CONSTRAINT users_external_id_valid ON users IS 'version 1';
    END IF;
END $$;

-- The answers to POSTs sent with an Idempotency-Key, each written in the
-- same transaction as its write, replayed to retries until expires_at.
-- caller is the sha256 of the bearer token ("" without API_TOKENS), so
-- callers never see each other's keys.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    caller      text NOT NULL,
    key         text NOT NULL,
    route       text NOT NULL,
    fingerprint bytea NOT NULL,  -- sha256 of the request body
    status      int NOT NULL,
    headers     jsonb NOT NULL,  -- [[name, value], ...]
    body        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (caller, key)
);

-- Serves the purge of expired keys.
CREATE INDEX IF NOT EXISTS idempotency_keys_expires_at ON idempotency_keys (expires_at);

-- The user a stored answer shows (a create's), so that deleting the user
-- scrubs it: null for answers that show no user. A group's create stores its
-- group's id here (its ETag names it as a user's does), and deleting the group
-- scrubs it alike.
ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS user_id uuid;
-- The answers stored before the column came: the user is the one their ETag
-- names ("version-id"). A no-op once every row that has an ETag has its id.
UPDATE idempotency_keys SET user_id = named.id
FROM (
    SELECT caller, key, (regexp_match(header->>1, '^"\d+-([0-9a-f-]{36})"$'))[1]::uuid AS id
    FROM idempotency_keys, jsonb_array_elements(headers) AS header
    WHERE user_id IS NULL AND header->>0 = 'etag'
) AS named
WHERE idempotency_keys.caller = named.caller AND idempotency_keys.key = named.key
  AND named.id IS NOT NULL;

-- The emails a stored 409 names (its `conflicts`), as email identities
-- (lower()), so that deleting a user with one of them scrubs the answer: null
-- for answers that name none.
ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS emails text[];
-- The 409s stored before the column came. A no-op once each has its emails.
UPDATE idempotency_keys SET emails = ARRAY(
    SELECT lower(email)
    FROM jsonb_array_elements_text(convert_from(body, 'UTF8')::jsonb -> 'conflicts') AS email
)
WHERE status = 409 AND emails IS NULL
  AND jsonb_typeof(convert_from(body, 'UTF8')::jsonb -> 'conflicts') = 'array';

-- The change feed (GET /users/changes): every committed write to users, one
-- row a user, written by the triggers below in the write's own statement.
--
-- Its position is (xid, seq): the writing transaction's id, then the order
-- of the change within it. Sequences hand out numbers in the order writes
-- start, not the order they commit, so a reader polling "seq > last" would
-- skip a change whose transaction commits late. Instead a reader takes only
-- the changes of transactions older than its snapshot's xmin, the oldest
-- transaction still running: every transaction below it has ended, and any
-- transaction that commits later has an xid at or above it, a position the
-- reader has not passed. The price: a long transaction anywhere on the
-- server holds the feed back until it ends (docs/RELIABILITY.md).
CREATE TABLE IF NOT EXISTS user_changes (
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    type       text NOT NULL,  -- created, updated or deleted
    user_id    uuid NOT NULL,  -- the user's public_id
    user_key   bigint NOT NULL,  -- the user's internal id, which serves the scrubbing
    version    bigint NOT NULL,  -- the number in the user's ETag after the change
    at         timestamptz NOT NULL DEFAULT now(),
    -- The user after the change, as stored, all null when deleted: columns
    -- rather than the JSON the feed sends, which costs a write 3 µs a user
    -- more to build (a 10,000-user COPY: 205 ms against 178 ms).
    name       text,
    email      text,
    status     text,
    attributes jsonb,
    created_at timestamptz,
    updated_at timestamptz,
    PRIMARY KEY (xid, seq)
);

-- Added in the fifth release: who made the change, the caller's client name
-- and the request's X-Request-ID (users.actor and users.request_id for a
-- create or an update; the statement's settings for a delete, whose row is
-- gone). Null for the changes recorded before, and when the service runs open.
ALTER TABLE user_changes
    ADD COLUMN IF NOT EXISTS actor text,
    ADD COLUMN IF NOT EXISTS request_id text;

-- Serves the scrubbing of a deleted user's earlier changes. On the internal
-- id, which grows with each user, rather than the random public_id: new
-- entries go to the index's last page (a 10,000-user COPY: 163 ms against
-- 177 ms).
CREATE INDEX IF NOT EXISTS user_changes_user_key ON user_changes (user_key);

-- How far the retention purge has gone: a cursor before it has missed
-- changes, and is told to list again (410). One row.
CREATE TABLE IF NOT EXISTS user_changes_purged (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    xid  xid8 NOT NULL,
    seq  bigint NOT NULL
);
INSERT INTO user_changes_purged (xid, seq) VALUES ('0', 0) ON CONFLICT DO NOTHING;

-- One trigger function for the three statement-level triggers: a statement
-- writes its rows' changes in one INSERT, a COPY of 10,000 users included.
-- A deleted user's earlier changes are removed, so that its name, email and
-- attributes are nowhere but in its own row until that row goes; the
-- "deleted" change keeps only the id, with a version above every earlier one.
-- A delete's actor and request id are the transaction's settings users.actor
-- and users.request_id, set (local to the transaction, as a pooler in
-- transaction mode needs) by the DELETE statement itself; unset, '' or null.
CREATE OR REPLACE FUNCTION record_user_changes() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM user_changes WHERE user_key IN (SELECT id FROM old_users);
        INSERT INTO user_changes (type, user_id, user_key, version, actor, request_id)
        SELECT 'deleted', public_id, id, version + 1,
            nullif(current_setting('users.actor', true), ''),
            nullif(current_setting('users.request_id', true), '')
        FROM old_users;
    ELSE
        INSERT INTO user_changes (type, user_id, user_key, version, name, email, status,
            attributes, created_at, updated_at, actor, request_id)
        SELECT CASE TG_OP WHEN 'INSERT' THEN 'created' ELSE 'updated' END, public_id, id,
            version, name, email, status, attributes, created_at, updated_at, actor,
            request_id
        FROM new_users;
    END IF;
    -- Delivered at commit, once a transaction: wakes the long polls
    -- (service/watch.py). A statement that changed no row notifies nothing.
    IF FOUND THEN
        PERFORM pg_notify('user_changes', '');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER users_created AFTER INSERT ON users
    REFERENCING NEW TABLE AS new_users FOR EACH STATEMENT EXECUTE FUNCTION record_user_changes();
CREATE OR REPLACE TRIGGER users_updated AFTER UPDATE ON users
    REFERENCING NEW TABLE AS new_users FOR EACH STATEMENT EXECUTE FUNCTION record_user_changes();
CREATE OR REPLACE TRIGGER users_deleted AFTER DELETE ON users
    REFERENCING OLD TABLE AS old_users FOR EACH STATEMENT EXECUTE FUNCTION record_user_changes();

-- Added in the sixth release: groups of users. Like users, each has an
-- internal bigint id (the key memberships use) and a public_id, the API's
-- "id". Its name is one group per name regardless of letter case, folded as
-- emails are ("C": ASCII letters only), the same on every server. The rules
-- mirror the API's (service/schemas.py): 1 to 256 characters without control
-- characters or bidi overrides, and the users' rules of attributes.
CREATE TABLE IF NOT EXISTS groups (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id  uuid NOT NULL DEFAULT gen_random_uuid(),
    name       text COLLATE "C" NOT NULL,
    attributes jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Both set by every UPDATE statement; version names the ETag.
    updated_at timestamptz NOT NULL DEFAULT now(),
    version    bigint NOT NULL DEFAULT 1,
    CONSTRAINT groups_name_valid CHECK (
        char_length(name) BETWEEN 1 AND 256
        AND name !~ '[\x01-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]'
    ),
    CONSTRAINT groups_attributes_valid CHECK (attributes = '{}' OR attributes_valid(attributes))
);

-- Built with the table, which no earlier release has: nothing to wait for.
CREATE UNIQUE INDEX IF NOT EXISTS groups_public_id_key ON groups (public_id);
-- One group per name regardless of case; also serves paging in name order.
CREATE UNIQUE INDEX IF NOT EXISTS groups_name_lower_key ON groups (lower(name));
-- SCIM's externalId of a group: the provider's id for it (Entra's objectId),
-- as users keep theirs; unique when set (groups_external_id_key, below).
ALTER TABLE groups ADD COLUMN IF NOT EXISTS external_id text
    CONSTRAINT groups_external_id_valid CHECK (char_length(external_id) BETWEEN 1 AND 255);

-- Who is in which group, by internal ids, so that a user's email change or a
-- group's rename touches no membership. A row goes with its user or its group
-- (ON DELETE CASCADE), and nothing of either stays here. The primary key
-- serves a group's members and the membership check; memberships_user_id a
-- user's groups and the cascade of a user's delete. A write to users costs
-- what it did, as the foreign key's checks run only on a user's delete (and on
-- an update of its id, which never changes); the feed's trigger below
-- (record_membership_changes) is not fired by the delete's cascade.
CREATE TABLE IF NOT EXISTS memberships (
    group_id   bigint NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX IF NOT EXISTS memberships_user_id ON memberships (user_id, group_id);

-- Added in the seventh release: groups and memberships in the change feed
-- (GET /changes, which merges them with user_changes; GET /users/changes
-- reads users alone, as before). A table of their own, so that a write to
-- users costs what it did: no trigger of users writes here. Positions are
-- user_changes' own: seq draws from the same sequence and xid is the
-- writer's, so that (xid, seq) of both tables is one order, read under the
-- same rule (below xmin). A change is a group's (created, updated, deleted:
-- user_id null, the group as stored after it) or a membership's (added,
-- removed: user_id the member's public_id). A membership that ends with its
-- user or its group records nothing: the user's or the group's deleted change
-- says it, and costs a delete no row a membership.
CREATE TABLE IF NOT EXISTS group_changes (
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq        bigint NOT NULL DEFAULT nextval('user_changes_seq_seq'),
    type       text NOT NULL,
    group_id   uuid NOT NULL,  -- the group's public_id
    group_key  bigint NOT NULL,  -- the group's internal id, which serves the scrubbing
    user_id    uuid,  -- a membership's user, by public_id; null for the group's own
    version    bigint,  -- the number in the group's ETag after the change; null for a member's
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text,
    request_id text,
    -- The group after the change, as stored: null when deleted, and for a member's.
    name       text,
    attributes jsonb,
    created_at timestamptz,
    updated_at timestamptz,
    PRIMARY KEY (xid, seq)
);

-- Serves the scrubbing of a deleted group's earlier changes, its members' among them.
CREATE INDEX IF NOT EXISTS group_changes_group_key ON group_changes (group_key);

-- How far the retention purge has gone in group_changes, as user_changes_purged
-- says it of user_changes; one purge takes a prefix of both in their one order.
CREATE TABLE IF NOT EXISTS group_changes_purged (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    xid  xid8 NOT NULL,
    seq  bigint NOT NULL
);
INSERT INTO group_changes_purged (xid, seq) VALUES ('0', 0) ON CONFLICT DO NOTHING;

-- As record_user_changes: one INSERT a statement, and a deleted group's
-- earlier changes (its members' too) removed, so that its name and attributes
-- are nowhere once its row goes. The caller is the transaction's settings
-- users.actor and users.request_id, which the service sets with each write of
-- groups (a group's row is one caller's, never a loop turn's). Notifies a
-- channel of its own: a long poll of the users' feed alone is never woken.
CREATE OR REPLACE FUNCTION record_group_changes() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM group_changes WHERE group_key IN (SELECT id FROM old_groups);
        INSERT INTO group_changes (type, group_id, group_key, version, actor, request_id)
        SELECT 'deleted', public_id, id, version + 1,
            nullif(current_setting('users.actor', true), ''),
            nullif(current_setting('users.request_id', true), '')
        FROM old_groups;
    ELSE
        INSERT INTO group_changes (type, group_id, group_key, version, name, attributes,
            created_at, updated_at, actor, request_id)
        SELECT CASE TG_OP WHEN 'INSERT' THEN 'created' ELSE 'updated' END, public_id, id,
            version, name, attributes, created_at, updated_at,
            nullif(current_setting('users.actor', true), ''),
            nullif(current_setting('users.request_id', true), '')
        FROM new_groups;
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('group_changes', '');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER groups_created AFTER INSERT ON groups
    REFERENCING NEW TABLE AS new_groups FOR EACH STATEMENT EXECUTE FUNCTION record_group_changes();
CREATE OR REPLACE TRIGGER groups_updated AFTER UPDATE ON groups
    REFERENCING NEW TABLE AS new_groups FOR EACH STATEMENT EXECUTE FUNCTION record_group_changes();
CREATE OR REPLACE TRIGGER groups_deleted AFTER DELETE ON groups
    REFERENCING OLD TABLE AS old_groups FOR EACH STATEMENT EXECUTE FUNCTION record_group_changes();

-- A member added or removed, by the public ids of its group and its user,
-- each found by its primary key (LIMIT keeps the lookups from being planned
-- as a join that reads the whole table, which took a 1,000-member add from
-- 24 to 100 ms). A removal that is a cascade of a group's or a user's delete
-- records nothing, as their deleted change ends it: the trigger fires only
-- for a DELETE that no trigger made (pg_trigger_depth() = 0; the foreign
-- key's cascade runs in one), so that a user's delete costs about what it did
-- (a trigger that fired and found the user gone cost it 14.5 µs more, 62.8
-- against 48.3). So a removal made by a trigger of one's own, beside the
-- service, is not recorded either. bench/group_feed.sql measures what the
-- triggers cost (bench/GROUPS.md).
CREATE OR REPLACE FUNCTION record_membership_changes() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH caller AS (
            SELECT nullif(current_setting('users.actor', true), '') AS actor,
                nullif(current_setting('users.request_id', true), '') AS request_id
        )
        INSERT INTO group_changes (type, group_id, group_key, user_id, actor, request_id)
        SELECT 'added', g.public_id, g.id, u.public_id, caller.actor, caller.request_id
        FROM new_memberships AS m
        CROSS JOIN LATERAL (SELECT public_id, id FROM groups WHERE id = m.group_id LIMIT 1) AS g
        CROSS JOIN LATERAL (SELECT public_id FROM users WHERE id = m.user_id LIMIT 1) AS u
        CROSS JOIN caller;
    ELSE
        WITH caller AS (
            SELECT nullif(current_setting('users.actor', true), '') AS actor,
                nullif(current_setting('users.request_id', true), '') AS request_id
        )
        INSERT INTO group_changes (type, group_id, group_key, user_id, actor, request_id)
        SELECT 'removed', g.public_id, g.id, u.public_id, caller.actor, caller.request_id
        FROM old_memberships AS m
        CROSS JOIN LATERAL (SELECT public_id, id FROM groups WHERE id = m.group_id LIMIT 1) AS g
        CROSS JOIN LATERAL (SELECT public_id FROM users WHERE id = m.user_id LIMIT 1) AS u
        CROSS JOIN caller;
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('group_changes', '');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER memberships_added AFTER INSERT ON memberships
    REFERENCING NEW TABLE AS new_memberships FOR EACH STATEMENT
    EXECUTE FUNCTION record_membership_changes();
CREATE OR REPLACE TRIGGER memberships_removed AFTER DELETE ON memberships
    REFERENCING OLD TABLE AS old_memberships FOR EACH STATEMENT
    WHEN (pg_trigger_depth() = 0)
    EXECUTE FUNCTION record_membership_changes();

-- A time as the API shows it, RFC 3339 in UTC with microseconds. The service
-- reads times (and ids, as ::text) in the text it sends, so that no datetime
-- or UUID object is made and encoded again per row: asyncpg's timestamptz
-- decode alone cost more than the rest of a looked-up row. A one-expression
-- SQL function, STABLE as to_char is: the planner inlines it.
CREATE OR REPLACE FUNCTION rfc3339(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

-- Search by part of an email or name (GET /users?q=) uses pg_trgm, a trusted
-- extension since PostgreSQL 13: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- concurrently: the statements below build indexes on a table that may be
-- live. `python -m service migrate` runs each on its own, outside any
-- transaction (CREATE INDEX CONCURRENTLY cannot run in one), after everything
-- above has committed; before a CREATE INDEX CONCURRENTLY IF NOT EXISTS, it
-- drops an index of the same name that an interrupted build left INVALID.
-- Each statement ends in ";" and holds no other.

-- Serves q: trigrams of the email and the name, letters folded as email
-- identity folds them ("C": ASCII only). E'\x01' joins the two: neither it
-- nor q may hold a control character, so no match spans both.
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_search_trgm ON users
    USING gin (lower((email || E'\x01' || name) COLLATE "C") gin_trgm_ops);

-- The planner estimates how many users a q matches from a sample of this
-- expression's values: 1,000 of them rather than 100 tell a q that matches
-- 0.5% from one that matches 0.01%, and so which plan to pick (reading in
-- email order and stopping at the page's end, or finding all through the
-- index and sorting them). ANALYZE samples 300,000 rows instead of 30,000.
ALTER INDEX users_search_trgm ALTER COLUMN 1 SET STATISTICS 1000;

-- Serves the scrubbing of the stored answers that show a deleted user.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idempotency_keys_user_id ON idempotency_keys (user_id)
    WHERE user_id IS NOT NULL;
-- One user per externalId, when set; serves SCIM's filter externalId eq.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_external_id_key ON users (external_id)
    WHERE external_id IS NOT NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS idempotency_keys_emails ON idempotency_keys
    USING gin (emails) WHERE emails IS NOT NULL;

-- One group per externalId, when set; serves SCIM's filter externalId eq.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS groups_external_id_key ON groups (external_id)
    WHERE external_id IS NOT NULL;

-- Serves GET /groups?q=: trigrams of the name, folded as its identity is.
CREATE INDEX CONCURRENTLY IF NOT EXISTS groups_search_trgm ON groups
    USING gin (lower(name) gin_trgm_ops);

-- Serves created_after and created_before when the range is narrow.
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_created_at ON users (created_at);

-- Serves attribute.<name>= filters (attributes @> '{"name": "value"}'). Only
-- users with attributes are in it, so the others cost a write nothing; the
-- filter says attributes <> '{}' too, for the planner to know it may use it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_attributes ON users
    USING gin (attributes jsonb_path_ops) WHERE attributes <> '{}';

-- Serves status=disabled, in email order: the few disabled users are found
-- at once at any table size, and the active ones cost a write nothing.
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_disabled ON users (lower(email))
    WHERE status = 'disabled';

-- The rules added NOT VALID above, checked against the rows already there,
-- under a lock that blocks neither reads nor writes; a no-op once they are
-- valid. Rows an earlier release accepted and a rule now refuses leave it NOT
-- VALID, still enforced on every write: the migration says so and goes on.
ALTER TABLE users VALIDATE CONSTRAINT users_name_valid;

ALTER TABLE users VALIDATE CONSTRAINT users_email_valid;

ALTER TABLE users VALIDATE CONSTRAINT users_status_valid;

ALTER TABLE users VALIDATE CONSTRAINT users_attributes_valid;

ALTER TABLE users VALIDATE CONSTRAINT users_external_id_valid;
