"""SQL for the users table: one constant and one async function per query."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from service.database import Database
from service.schemas import DEFAULT_STATUS, NewUser, Stored, User, email_key

# Emails are one identity regardless of case: every lookup, conflict and order
# goes through lower(email), which the unique index users_email_lower_key serves.
# Email parameters are always keys, folded in Python by email_key: lower() of a
# parameter would fold by the database's locale, not by the column's "C".
#
# Users leave the database as the API shows them: the id as text and times
# through schema.sql's rfc3339, so no UUID or datetime is made per row only
# to be encoded again (asyncpg's timestamptz decode was ~1 µs a value).

# Every write names who made it (users.actor and users.request_id, or for a
# delete the transaction's settings of those names), for the change feed: see
# schema.sql's record_user_changes.

# Single creates that arrive together, in one statement and so one commit.
# Their emails are distinct keys (insert_each sees to it); each row is
# inserted unless its email is taken, and RETURNING lists those inserted.
# Each row has its own actor and request id: the creates come from many requests.
INSERT_EACH = """
INSERT INTO users (name, email, status, attributes, actor, request_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::text[])
ON CONFLICT ((lower(email))) DO NOTHING
RETURNING public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at, version
"""

FIND_USERS_BY_KEYS = """
SELECT public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at, version
FROM users WHERE lower(email) = ANY($1::text[])
"""

# Users by email keys ($1) and by ids ($2), in one statement and so one
# snapshot: a BitmapOr of the two unique indexes' scans. Without the version,
# as a page: the answer has no ETags.
FIND_USERS_BY_HANDLES = """
SELECT public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at
FROM users WHERE lower(email) = ANY($1::text[]) OR public_id = ANY($2::uuid[])
"""

# A user by email key ($1) or by id ($2), the other being null: one
# statement, each arm served by its unique index.
FIND_USER = """
SELECT public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at, version
FROM users WHERE lower(email) = $1 OR public_id = $2
"""

# The text columns are made in the outer query, for the page's rows alone:
# made in the inner one, they would be made for every row OFFSET skips.
LIST_PAGE_AT = """
SELECT public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at
FROM (
    SELECT public_id, name, email, status, attributes, created_at, updated_at FROM users
    ORDER BY lower(email)
    LIMIT $1 OFFSET $2
) AS page
ORDER BY lower(email)
"""

# Many pages in one query: the subquery runs once per ($n[i]) row, through the
# index, and the ordinality says which page a row belongs to.
LIST_PAGES_AFTER = """
SELECT page.number, u.public_id::text AS id, u.name, u.email, u.status, u.attributes,
    rfc3339(u.created_at) AS created_at, rfc3339(u.updated_at) AS updated_at
FROM unnest($1::text[], $2::int[], $3::bigint[]) WITH ORDINALITY AS page(after, size, skip, number)
CROSS JOIN LATERAL (
    SELECT public_id, name, email, status, attributes, created_at, updated_at FROM users
    WHERE lower(email) > page.after
    ORDER BY lower(email)
    LIMIT page.size OFFSET page.skip
) AS u
ORDER BY page.number, lower(u.email)
"""

# Filtered pages (GET /users?q=&created_after=&created_before=), and their
# counts, are composed of these: the WHERE clause holds the filters given.
# SEARCH_TEXT is the expression of the users_search_trgm index, which serves
# q; the order and the after= key stay those of every page.
SEARCH_TEXT = """lower((email || E'\\x01' || name) COLLATE "C")"""
MATCHES = SEARCH_TEXT + " LIKE ${}"
CREATED_AFTER = "created_at > ${}"
CREATED_BEFORE = "created_at < ${}"
STATUS_IS = "status = ${}"
# "attributes <> '{}'" tells the planner that the partial index
# users_attributes holds every match.
HAS_ATTRIBUTES = "attributes @> ${}::jsonb AND attributes <> '{{}}'"
# The members of a group, by its internal key (resolve_group), which the
# planner must see: with the key behind a subquery, it guessed half the users
# for every group, and read a million users in email order to page a group of
# ten (84 ms at 100,000 users).
IN_GROUP = "id IN (SELECT user_id FROM memberships WHERE group_id = ${})"
# 0 when no group has the id: no group has that key, so no user matches.
GROUP_KEY = "SELECT coalesce((SELECT id FROM groups WHERE public_id = $1), 0)"
AFTER_EMAIL = "lower(email) > ${}"
SEARCH_PAGE = """
SELECT public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at
FROM (
    SELECT public_id, name, email, status, attributes, created_at, updated_at FROM users
    WHERE {where}
    ORDER BY lower(email)
    LIMIT ${limit} OFFSET ${offset}
) AS page
ORDER BY lower(email)
"""
COUNT_USERS = "SELECT count(*) FROM users{where}"
# The planner's estimate of the rows the filters match; below
# ESTIMATE_EXACT_BELOW, where an estimate is least reliable (it never says
# fewer than 0.01% of the table), counted instead, up to that bound.
ESTIMATE_EXACT_BELOW = 1000
COUNT_USERS_UP_TO = "SELECT count(*) FROM (SELECT FROM users{where} LIMIT {bound}) AS hit"
PLAN_USERS = "EXPLAIN (FORMAT JSON) SELECT FROM users{where}"
TABLE_ROWS = "SELECT reltuples FROM pg_class WHERE oid = 'users'::regclass"
# Reading in email order finds a page after visiting about (limit + offset)
# x table / matches rows; fetching every match through the index and sorting
# costs about MATCH_VISITS row visits a match (a heap page and a recheck each),
# as measured on a million users. The planner, whose costs are made for disks,
# reads in email order for q matching 0.05% to 0.3% of the users, up to 10
# times slower (okaf, 0.14%: 50 ms, against 7 ms); so the choice is made here,
# from its estimate of the matches. Local to the transaction.
MATCH_VISITS = 6
FETCH_MATCHES_FIRST = "SET LOCAL enable_indexscan = off"

# Each statement of a search is planned for its own values: a plan cached for
# any q would suit none, since "gmail" matches a third of the users (best
# read in email order, stopping at the page's end) and "okafor" a few
# (best found through the trigram index, then sorted). Local to the transaction.
PLAN_FOR_EACH_CALL = "SET LOCAL plan_cache_mode = force_custom_plan"


# The If-Match condition of a write, in the write's own statement so that no
# other write slips between check and change: $3 true for none (or "*"),
# else the row's (id, version) must be one of the pairs in $4 and $5.
#
# The user as a patch leaves it: $6 to $8 a new name, email and status, each
# null to keep; attributes merged (RFC 7396) with those set in $9 and without
# those removed in $10, both null to keep them all. jsonb's = compares
# objects whatever their keys' order.
PATCHED = """(coalesce($6, name), coalesce($7, email), coalesce($8, status),
    coalesce((attributes || $9::jsonb) - $10::text[], attributes))"""
# A patch that changes nothing writes nothing (the version moves exactly when
# the user changes): the UPDATE skips the row, and the SELECT after it returns
# the row as the statement's snapshot has it. Its `unchanged` is false only
# when the row needed a change that the UPDATE did not make: another write
# committed after the snapshot, and the statement is worth running again.
UPDATE_USER = """
WITH changed AS (
    UPDATE users
    SET (name, email, status, attributes) = {PATCHED}, updated_at = now(), version = version + 1,
        actor = $11, request_id = $12
    WHERE (lower(email) = $1 OR public_id = $2)
      AND ($3 OR (public_id, version) IN (SELECT * FROM unnest($4::uuid[], $5::bigint[])))
      AND (name, email, status, attributes) IS DISTINCT FROM {PATCHED}
    RETURNING public_id, name, email, status, attributes, created_at, updated_at, version
)
SELECT public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at, version,
    true AS unchanged, true AS changed
FROM changed
UNION ALL
SELECT public_id::text, name, email, status, attributes, rfc3339(created_at),
    rfc3339(updated_at), version,
    (name, email, status, attributes) IS NOT DISTINCT FROM {PATCHED}, false
FROM users
WHERE NOT EXISTS (SELECT FROM changed)
  AND (lower(email) = $1 OR public_id = $2)
  AND ($3 OR (public_id, version) IN (SELECT * FROM unnest($4::uuid[], $5::bigint[])))
""".replace("{PATCHED}", PATCHED)

# The answers stored for the user's create (Idempotency-Key) are replaced in
# the same statement by $6, $7 and $8, which show no trace of the user; the
# fingerprint, a digest of the request body, goes too, so a retry of the key
# gets that answer whatever its body. Stored 409s that name the user's email
# keep their status, and their body becomes $9, which names no email.
#
# The row being gone, the statement trigger learns who deleted it ($10, $11)
# from settings local to the transaction, set in RETURNING: for each row
# deleted, and so before the trigger, which fires at the statement's end.
DELETE_USER = """
WITH deleted AS (
    DELETE FROM users
    WHERE (lower(email) = $1 OR public_id = $2)
      AND ($3 OR (public_id, version) IN (SELECT * FROM unnest($4::uuid[], $5::bigint[])))
    RETURNING public_id, lower(email) AS email_key,
        set_config('users.actor', $10, true), set_config('users.request_id', $11, true)
), scrubbed AS (
    UPDATE idempotency_keys
    SET status = $6, headers = $7::jsonb, body = $8, fingerprint = '', user_id = NULL
    WHERE user_id IN (SELECT public_id FROM deleted)
), unnamed AS (
    UPDATE idempotency_keys SET body = $9, emails = NULL
    WHERE emails && ARRAY(SELECT email_key FROM deleted)
)
SELECT count(*) FROM deleted
"""

FIND_TAKEN_EMAILS = """
SELECT email FROM users
WHERE lower(email) = ANY($1::text[])
ORDER BY lower(email)
"""

# Requests with one Idempotency-Key take turns without waiting: a transaction
# that does not get the key's lock answers 409 at once. A lock rather than
# the key row itself: inserting a row another transaction has inserted but
# not committed would wait for that transaction.
LOCK_IDEMPOTENCY_KEY = "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || ' ' || $2, 0))"

FIND_STORED_ANSWER = """
SELECT route, fingerprint, status, headers::text, body FROM idempotency_keys
WHERE caller = $1 AND key = $2 AND expires_at > now()
"""

# An expired row of the same key, not yet purged, is replaced.
STORE_ANSWER = """
INSERT INTO idempotency_keys
    (caller, key, route, fingerprint, status, headers, body, expires_at, user_id, emails)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, now() + make_interval(secs => $8), $9,
    (SELECT array_agg(lower(email)) FROM unnest($10::text[]) AS email))
ON CONFLICT (caller, key) DO UPDATE SET
    route = excluded.route, fingerprint = excluded.fingerprint, status = excluded.status,
    headers = excluded.headers, body = excluded.body, created_at = now(),
    expires_at = excluded.expires_at, user_id = excluded.user_id, emails = excluded.emails
"""

# At most PURGE_BATCH expired keys a keyed write, skipping rows another
# purge holds: bounded work, and no waits.
PURGE_BATCH = 100
PURGE_EXPIRED_KEYS = """
DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys WHERE expires_at < now()
    LIMIT $1 FOR UPDATE SKIP LOCKED
))
"""


# SCIM (service/scim): the user with its externalId, which the native API
# does not show. A list's page and its count are read in one snapshot
# (searching): the count reads every match, the page only up to its end.
SCIM_COLUMNS = """public_id::text AS id, name, email, status, external_id, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at, version"""
SCIM_FIND = "SELECT {COLUMNS} FROM users WHERE public_id = $1".replace("{COLUMNS}", SCIM_COLUMNS)
# A user's groups as SCIM shows them: [{"value", "$ref", "display"}] in name
# order, $ref under the URL of /scim/v2/Groups/ (${base}). Read in the user's
# own statement, one probe of memberships_user_id: a read that shows them
# costs no round trip more, and one that leaves them out reads none.
SCIM_USER_GROUPS = """(
    SELECT coalesce(json_agg(json_build_object(
        'value', g.public_id, '$ref', ${base}::text || g.public_id, 'display', g.name
    ) ORDER BY lower(g.name)), '[]')::text
    FROM memberships AS m JOIN groups AS g ON g.id = m.group_id
    WHERE m.user_id = users.id
)"""
SCIM_FIND_WITH_GROUPS = (
    "SELECT {COLUMNS}, {GROUPS} AS groups FROM users WHERE public_id = $1".replace(
        "{COLUMNS}", SCIM_COLUMNS
    ).replace("{GROUPS}", SCIM_USER_GROUPS.format(base=2))
)
# The user read to be changed and written back: a concurrent write waits for this one.
SCIM_LOCK = SCIM_FIND + " FOR UPDATE"
SCIM_CREATE = """
INSERT INTO users (name, email, status, external_id, attributes, actor, request_id)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
RETURNING {COLUMNS}
""".replace("{COLUMNS}", SCIM_COLUMNS)
# A write of the whole user, its attributes with it, made only if it is still
# at the version read ($7), whose If-Match the caller checked, and only if it
# changes something (jsonb's = compares objects whatever their keys' order);
# else the user as it is. $8 and $9 name who wrote it.
SCIM_REPLACE = """
WITH changed AS (
    UPDATE users SET (name, email, status, external_id, attributes) = ($2, $3, $4, $5, $6::jsonb),
        updated_at = now(), version = version + 1, actor = $8, request_id = $9
    WHERE public_id = $1 AND version = $7
      AND (name, email, status, external_id, attributes)
        IS DISTINCT FROM ($2, $3, $4, $5, $6::jsonb)
    RETURNING {COLUMNS}
)
SELECT * FROM changed
UNION ALL
SELECT {COLUMNS} FROM users
WHERE NOT EXISTS (SELECT FROM changed) AND public_id = $1 AND version = $7
  AND (name, email, status, external_id, attributes)
    IS NOT DISTINCT FROM ($2, $3, $4, $5, $6::jsonb)
""".replace("{COLUMNS}", SCIM_COLUMNS)
SCIM_PAGE = """
SELECT {COLUMNS}{groups} FROM users
WHERE {where}
ORDER BY {order}
OFFSET ${offset} LIMIT ${limit}
""".replace("{COLUMNS}", SCIM_COLUMNS)
SCIM_COUNT = "SELECT count(*) FROM users WHERE {where}"


# The change feed: positions are (xid, seq), see schema.sql's user_changes.
# A page holds only changes of transactions below the snapshot's xmin: all
# of them have ended, and none that ends later can fall behind the page.
# The NOT EXISTS makes a cursor the purge has passed read nothing, in the
# same snapshot as the page.
#
# The transaction id is sent as text, under a name of its own: ORDER BY xid
# would otherwise sort by the text, and put xid 10000 before 9999.
CHANGES_PAGE = """
SELECT xid::text AS txid, seq, type, version, rfc3339(at) AS at, actor, request_id,
    user_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at
FROM user_changes
WHERE (xid, seq) > ($1::text::xid8, $2::bigint)
  AND xid < pg_snapshot_xmin(pg_current_snapshot())
  AND NOT EXISTS (
      SELECT FROM user_changes_purged WHERE (xid, seq) > ($1::text::xid8, $2::bigint)
  )
ORDER BY xid, seq
LIMIT $3
"""
# Where CHANGES_PAGE's USER_COLUMNS begin.
CHANGE_USER = 7
# One user's changes (GET /users/{user}/changes), as CHANGES_PAGE reads the
# feed's, after the same kind of position ($3, $4), or from the oldest kept when
# $3 is null: the user by email key ($1) or id ($2). No row when no user has
# the handle; one with a null seq when the user has no change after the
# position. Sorted, not read in order through an index: a user has few
# changes, found by user_changes_user_key.
USER_CHANGES_PAGE = """
SELECT c.xid::text AS txid, c.seq, c.type, c.version, rfc3339(c.at) AS at, c.actor,
    c.request_id, c.user_id::text AS id, c.name, c.email, c.status, c.attributes,
    rfc3339(c.created_at) AS created_at, rfc3339(c.updated_at) AS updated_at
FROM (SELECT id FROM users WHERE lower(email) = $1 OR public_id = $2) AS u
LEFT JOIN LATERAL (
    SELECT xid, seq, type, version, at, actor, request_id, user_id, name, email, status,
        attributes, created_at, updated_at
    FROM user_changes
    WHERE user_key = u.id
      AND xid < pg_snapshot_xmin(pg_current_snapshot())
      AND ($3::text IS NULL OR (xid, seq) > ($3::text::xid8, $4::bigint) AND NOT EXISTS (
          SELECT FROM user_changes_purged WHERE (xid, seq) > ($3::text::xid8, $4::bigint)
      ))
    ORDER BY xid, seq
    LIMIT $5
) AS c ON true
ORDER BY c.xid, c.seq
"""
# The last change a page could hold now; none when the feed is empty.
CHANGES_END = """
SELECT xid::text AS txid, seq FROM user_changes
WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY xid DESC, seq DESC
LIMIT 1
"""
# The present position: before every change not yet readable.
CHANGES_PRESENT = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
# The feed's delay: how long the oldest change committed but not yet readable,
# held back by an older transaction still running, has waited since it began.
CHANGES_DELAY = """
SELECT coalesce(extract(epoch FROM clock_timestamp() - min(at)), 0)::float8
FROM user_changes
WHERE xid >= pg_snapshot_xmin(pg_current_snapshot())
"""
# How far a reader at ($1, $2) is behind: the changes readable after it (up
# to $3 of them) and how long ago the oldest one's transaction began.
CHANGES_BEHIND = """
SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(at)), 0)::float8
FROM (
    SELECT at FROM user_changes
    WHERE (xid, seq) > ($1::text::xid8, $2::bigint)
      AND xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY xid, seq
    LIMIT $3
) AS behind
"""
CHANGES_PURGED = "SELECT xid::text, seq FROM user_changes_purged"
# What the feed's positions belong to: this server's history (its system
# identifier, which its standbys share) and this database in it. A cursor
# carries a digest of it (service/changes.py).
FEED_IDENTITY = """
SELECT system_identifier::text || '/' || (
    SELECT oid FROM pg_database WHERE datname = current_database()
)::text
FROM pg_control_system()
"""
# Whether a page after ($1, $2) can miss changes: the purge has passed it, or
# no transaction id has reached it yet (a cursor from before a failover that
# lost writes, or from another database), which would read nothing for ever.
CHANGES_GONE = """
SELECT (xid, seq) > ($1::text::xid8, $2::bigint)
    OR $1::text::xid8 > pg_snapshot_xmax(pg_current_snapshot())
FROM user_changes_purged
"""
# Changes older than $2 seconds, oldest first, up to $1 of them and only as a
# prefix of what a page can read: the purge stops at the first change still
# kept, and before any transaction still running, so that the purged
# position never passes a change and only moves on. One purge at a time.
# The prefix is of user_changes and group_changes in their one order (the
# feed of everything, service/feed_queries.py), and each table's purged
# position is the last of its own changes purged: the users' feed tells a
# cursor the purge has passed just as it did before groups had changes.
PURGE_LOCK_KEY = 7_262_100_002  # any fixed number; the migration's is ...001
PURGE_CHANGES = """
WITH turn AS (
    SELECT pg_try_advisory_xact_lock($3) AS mine
), oldest AS (
    SELECT xid, seq, of_group, bool_and(at < now() - make_interval(secs => $2))
        OVER (ORDER BY xid, seq) AS expired
    FROM (
        (SELECT xid, seq, at, false AS of_group FROM user_changes
         WHERE (SELECT mine FROM turn) AND xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY xid, seq
         LIMIT $1)
        UNION ALL
        (SELECT xid, seq, at, true FROM group_changes
         WHERE (SELECT mine FROM turn) AND xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY xid, seq
         LIMIT $1)
    ) AS both_tables
    ORDER BY xid, seq
    LIMIT $1
), purged AS (
    DELETE FROM user_changes
    WHERE (xid, seq) IN (SELECT xid, seq FROM oldest WHERE expired AND NOT of_group)
    RETURNING xid, seq
), purged_of_groups AS (
    DELETE FROM group_changes
    WHERE (xid, seq) IN (SELECT xid, seq FROM oldest WHERE expired AND of_group)
    RETURNING xid, seq
), moved_of_groups AS (
    UPDATE group_changes_purged SET (xid, seq) = (
        SELECT xid, seq FROM purged_of_groups ORDER BY xid DESC, seq DESC LIMIT 1
    )
    WHERE EXISTS (SELECT FROM purged_of_groups)
), moved AS (
    UPDATE user_changes_purged SET (xid, seq) = (
        SELECT xid, seq FROM purged ORDER BY xid DESC, seq DESC LIMIT 1
    )
    WHERE EXISTS (SELECT FROM purged)
)
SELECT (SELECT count(*) FROM purged) + (SELECT count(*) FROM purged_of_groups)
"""


class Filters(NamedTuple):
    """What GET /users narrows its users to; None for a filter not given."""

    q: str | None  # an email_key: ASCII letters folded
    created_after: datetime | None
    created_before: datetime | None
    status: str | None = None
    attributes: dict[str, str] | None = None  # each name with this value
    # Its members only: the group's id, then its internal key once resolve_group ran.
    group: UUID | int | None = None


def like_escaped(text: str) -> str:
    """Text in a LIKE pattern, every character of it matching itself."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def like_pattern(text: str) -> str:
    """A LIKE pattern matching text anywhere, every character of it literally."""
    return f"%{like_escaped(text)}%"


def filter_clauses(filters: Filters, first: int = 1) -> tuple[list[str], list[object]]:
    """The WHERE conditions of the filters given, numbered from $first, and their arguments."""
    assert not isinstance(filters.group, UUID), "resolve_group first"
    clauses: list[str] = []
    arguments: list[object] = []
    for clause, value in (
        (MATCHES, None if filters.q is None else like_pattern(filters.q)),
        (CREATED_AFTER, filters.created_after),
        (CREATED_BEFORE, filters.created_before),
        (STATUS_IS, filters.status),
        (HAS_ATTRIBUTES, filters.attributes and encode_attributes(filters.attributes)),
        (IN_GROUP, filters.group),
    ):
        if value is not None:
            arguments.append(value)
            clauses.append(clause.format(first + len(arguments) - 1))
    return clauses, arguments


async def resolve_group(conn: Connection, filters: Filters) -> Filters:
    """The filters with a group's id replaced by its internal key, which filter_clauses needs."""
    if not isinstance(filters.group, UUID):
        return filters
    return filters._replace(group=await conn.fetchval(GROUP_KEY, filters.group))


def where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


# The Database runs each query on whichever connection is free; a connection
# keeps a caller's transaction.
Executor = Database | asyncpg.Connection | PoolConnectionProxy
Connection = asyncpg.Connection | PoolConnectionProxy


class UserKey(NamedTuple):
    """Who a request names: an email key or an id, the other None."""

    email: str | None
    id: UUID | None


# The (id, version) pairs a write may find, or None for any.
Condition = list[tuple[UUID, int]] | None


_decode_attributes = msgspec.json.Decoder(dict[str, str])
_encoder = msgspec.json.Encoder()


def encode_attributes(attributes: dict[str, str]) -> str:
    """Attributes as the JSON text asyncpg sends for a jsonb parameter."""
    return _encoder.encode(attributes).decode()


# The columns, in order, of every query whose rows to_user reads.
USER_COLUMNS = ("id", "name", "email", "status", "attributes", "created_at", "updated_at")


def to_user(row: asyncpg.Record, first: int = 0) -> User:
    """The user in a row whose columns from `first` on are USER_COLUMNS, in their order.

    Unpacked by position: a Record's lookups by name made up 40% of a page's
    conversion (16.6 µs for 50 users, 10 µs so).
    """
    id, name, email, status, attributes, created_at, updated_at = row[first : first + 7]
    return User(
        id=id,
        name=name,
        email=email,
        status=status,
        # asyncpg's jsonb is text; most users have none.
        attributes={} if attributes == "{}" else _decode_attributes.decode(attributes),
        created_at=created_at,
        updated_at=updated_at,
    )


def to_stored(row: asyncpg.Record) -> Stored:
    return Stored(to_user(row), row["version"])


def condition_arguments(condition: Condition) -> tuple[bool, list[UUID], list[int]]:
    if condition is None:
        return True, [], []
    return False, [id for id, _ in condition], [version for _, version in condition]


class Actor(NamedTuple):
    """Who makes a write: the caller's client name and the request's ID, both None
    when the service runs open. The change feed shows them with the write's change."""

    name: str | None
    request_id: str | None


NOBODY = Actor(None, None)


class NewRow(msgspec.Struct, eq=False):
    """A user to insert: its columns, with status and attributes as given or by default,
    and who creates it.

    Compared by identity (eq=False), so that each is a create of its own
    whatever its values, and hashed as cheaply as an object can be.
    """

    name: str
    email: str
    status: str
    attributes: str  # JSON text, as asyncpg sends jsonb
    actor: str | None
    request_id: str | None


NEW_ROW_COLUMNS = NewRow.__struct_fields__


def new_row(user: NewUser, actor: Actor = NOBODY) -> NewRow:
    status = DEFAULT_STATUS if user.status is msgspec.UNSET else user.status
    attributes = encode_attributes(user.attributes) if user.attributes else "{}"
    return NewRow(user.name, user.email, status, attributes, *actor)


async def insert_each(db: Executor, rows: list[NewRow]) -> list[Stored | None]:
    """For each row, the user created, or None when the email was taken.

    Of several creates of one email, in any letter case, the first in the
    list is tried and the rest get None, as they would one after another.
    """
    first_of: dict[str, int] = {}
    for index, row in enumerate(rows):
        first_of.setdefault(email_key(row.email), index)
    # In email_key order, as copy_users inserts: see there why.
    tried = [rows[first_of[key]] for key in sorted(first_of)]
    columns = ([getattr(row, column) for row in tried] for column in NEW_ROW_COLUMNS)
    created = {
        email_key(record["email"]): to_stored(record)
        for record in await db.fetch(INSERT_EACH, *columns)
    }
    return [
        created.get(key) if first_of[key] == index else None
        for index, key in enumerate(email_key(row.email) for row in rows)
    ]


async def find_users_by_keys(db: Executor, keys: list[str]) -> list[Stored | None]:
    """The user of each key (an email_key), or None, in the order of the keys."""
    rows = await db.fetch(FIND_USERS_BY_KEYS, keys)
    found = {email_key(row["email"]): to_stored(row) for row in rows}
    return [found.get(key) for key in keys]


async def find_users_by_handles(db: Executor, keys: Sequence[str]) -> dict[str, User]:
    """The users named by these email_keys (with an "@") and lower-case ids, by key."""
    emails = [key for key in keys if "@" in key]
    ids = [key for key in keys if "@" not in key]
    found: dict[str, User] = {}
    for row in await db.fetch(FIND_USERS_BY_HANDLES, emails, ids):
        found[row["id"]] = found[email_key(row["email"])] = to_user(row)
    return found


async def find_user(db: Executor, key: UserKey) -> Stored | None:
    row = await db.fetchrow(FIND_USER, key.email, key.id)
    return None if row is None else to_stored(row)


async def list_page_at(db: Executor, pages: list[tuple[int, int]]) -> list[list[User]]:
    """The page of users at (limit, offset), in email order; one page a call."""
    [(size, skip)] = pages
    return [[to_user(row) for row in await db.fetch(LIST_PAGE_AT, size, skip)]]


async def list_pages_after(db: Executor, pages: list[tuple[str, int, int]]) -> list[list[User]]:
    """For each (email key, limit, offset), the users after that email, in email order."""
    afters, sizes, skips = zip(*pages, strict=True)
    return to_pages(await db.fetch(LIST_PAGES_AFTER, afters, sizes, skips), len(pages))


def to_pages(rows: list[asyncpg.Record], count: int) -> list[list[User]]:
    pages: list[list[User]] = [[] for _ in range(count)]
    for row in rows:  # in email order within each page, as the subquery gave them
        pages[row[0] - 1].append(to_user(row, 1))
    return pages


class EmailTaken(Exception):
    """An update's new email is another user's, in some letter case."""


class Contended(Exception):
    """Other writes to a user kept coming between an update's snapshot and its change."""


class AttributesOverflow(Exception):
    """A patch's attributes, merged, would break their bounds: too many names or bytes."""


async def update_user(
    db: Executor,
    key: UserKey,
    condition: Condition,
    *,
    name: str | None,
    email: str | None,
    status: str | None,
    attributes: dict[str, str | None] | None,
    actor: Actor = NOBODY,
) -> tuple[Stored, bool] | None:
    """The user changed, or as it is when the patch changes nothing, and whether
    it changed; None when no user has the key or the condition failed.
    `attributes` is a merge patch of them. Raises EmailTaken, AttributesOverflow
    or Contended."""
    sets = removals = None
    if attributes is not None:
        sets = encode_attributes({k: v for k, v in attributes.items() if v is not None})
        removals = [k for k, v in attributes.items() if v is None]
    arguments = (
        *key, *condition_arguments(condition), name, email, status, sets, removals, *actor
    )  # fmt: skip
    for _ in range(UPDATE_ATTEMPTS):
        try:
            row = await db.fetchrow(UPDATE_USER, *arguments)
        except asyncpg.UniqueViolationError:
            raise EmailTaken from None
        except asyncpg.CheckViolationError as exc:
            if exc.constraint_name == "users_attributes_valid":
                raise AttributesOverflow from None
            raise
        if row is None or row["unchanged"]:
            return None if row is None else (to_stored(row), row["changed"])
    raise Contended


# Each attempt after the first follows a write to the same user that committed
# while the previous one ran; with If-Match, that write fails the next attempt.
UPDATE_ATTEMPTS = 3


async def delete_user(
    db: Executor,
    key: UserKey,
    condition: Condition,
    *,
    forgotten: StoredAnswer,
    unnamed: bytes,
    actor: Actor = NOBODY,
) -> bool:
    """Whether a user was deleted: False when none has the key or the condition failed.

    The answers stored for its create become `forgotten`'s status, headers and
    body; the stored 409s that name its email get the body `unnamed`.
    """
    deleted = await db.fetchval(
        DELETE_USER, *key, *condition_arguments(condition), forgotten.status,
        encode_headers(forgotten.headers), forgotten.body, unnamed, *actor,
    )  # fmt: skip
    return deleted == 1


async def find_taken_emails(db: Executor, emails: Sequence[str]) -> list[str]:
    """The stored emails among these, as they were stored."""
    keys = [email_key(email) for email in emails]
    return [row["email"] for row in await db.fetch(FIND_TAKEN_EMAILS, keys)]


async def copy_users(
    conn: PoolConnectionProxy, users: Sequence[NewUser], actor: Actor = NOBODY
) -> list[str] | None:
    """Insert all users or none, created by `actor`: None on success, else the emails
    already taken.

    The connection may be in a transaction of its caller's. COPY is the
    fastest way in; the unique index makes it fail whole when any email
    exists, and only then is the conflict list worth a second query.
    """
    # In email_key order, as insert_each inserts too: of two writes that
    # share emails, one waits for the other at the first email they share and
    # is refused once it commits (a 409). In other orders each could hold an
    # email the other waits for: a deadlock, which PostgreSQL ends by failing
    # one of them (a 500). The sort: ~3 ms of a 10,000-user load.
    users = sorted(users, key=lambda user: email_key(user.email))
    # Without a status or attributes, the columns' defaults are the rows'
    # own: the COPY sends two columns, not four (four with an actor).
    if any(user.status is not msgspec.UNSET or user.attributes for user in users):
        columns = NEW_ROW_COLUMNS
        records: list[tuple[Any, ...]] = [
            msgspec.structs.astuple(new_row(user, actor)) for user in users
        ]
    elif actor == NOBODY:
        columns = NEW_ROW_COLUMNS[:2]
        records = [(user.name, user.email) for user in users]
    else:
        columns = ("name", "email", "actor", "request_id")
        records = [(user.name, user.email, *actor) for user in users]
    try:
        # One COPY is one statement: all rows or none. In a caller's
        # transaction, a savepoint keeps that transaction usable after a refusal.
        if conn.is_in_transaction():
            async with conn.transaction():
                await conn.copy_records_to_table("users", records=records, columns=columns)
        else:
            await conn.copy_records_to_table("users", records=records, columns=columns)
    except asyncpg.UniqueViolationError:
        return await find_taken_emails(conn, [user.email for user in users])
    return None


class Position(NamedTuple):
    """A place in the change feed: after the change of transaction xid numbered seq."""

    xid: int
    seq: int


class ChangeRow(NamedTuple):
    position: Position
    type: str
    id: str
    version: int
    at: str
    actor: str | None
    request_id: str | None
    user: User | None  # None when deleted


def to_change_row(row: asyncpg.Record) -> ChangeRow:
    return ChangeRow(
        Position(int(row["txid"]), row["seq"]), row["type"], row["id"], row["version"],
        row["at"], row["actor"], row["request_id"],
        None if row["name"] is None else to_user(row, CHANGE_USER),
    )  # fmt: skip


async def changes_after(db: Executor, after: Position, limit: int) -> list[ChangeRow] | None:
    """Up to `limit` changes after a position, in order; None when the purge has
    passed it: changes it has not seen are gone."""
    rows = await db.fetch(CHANGES_PAGE, str(after.xid), after.seq, limit)
    if not rows and await db.fetchval(CHANGES_GONE, str(after.xid), after.seq):
        return None
    return [to_change_row(row) for row in rows]


class NoSuchUser(Exception):
    """No user has the key a request names."""


async def user_changes_after(
    db: Executor, key: UserKey, after: Position | None, limit: int
) -> list[ChangeRow] | None:
    """Up to `limit` of one user's changes after a position (from the oldest kept when
    None), in order; None when the purge has passed it. Raises NoSuchUser."""
    xid, seq = (None, None) if after is None else (str(after.xid), after.seq)
    rows = await db.fetch(USER_CHANGES_PAGE, *key, xid, seq, limit)
    if not rows:
        raise NoSuchUser
    if rows[0]["seq"] is None:  # the user, without changes after the position
        if after is not None and await db.fetchval(CHANGES_GONE, xid, seq):
            return None
        return []
    return [to_change_row(row) for row in rows]


async def readable_end(db: Executor) -> Position:
    """The position of the last change readable now: (0, 0) when there is none."""
    row = await db.fetchrow(CHANGES_END)
    return Position(0, 0) if row is None else Position(int(row["txid"]), row["seq"])


async def present_position(db: Executor) -> Position:
    """Before every change not yet readable, and after every one that is."""
    xmin = await db.fetchval(CHANGES_PRESENT)
    return Position(int(str(xmin)), 0)


async def feed_delay(db: Executor) -> float:
    delay = await db.fetchval(CHANGES_DELAY)
    assert isinstance(delay, float)
    return delay


async def changes_behind(db: Executor, after: Position, bound: int) -> tuple[int, float]:
    """The changes readable after a position (at most `bound`), and the seconds since
    the oldest of them began: (0, 0.0) when none is."""
    row = await db.fetchrow(CHANGES_BEHIND, str(after.xid), after.seq, bound)
    assert row is not None  # an aggregate's one row
    return row[0], row[1]


async def feed_identity(db: Executor) -> str:
    """8 hex digits that tell this database's feed from any other's."""
    identity = await db.fetchval(FEED_IDENTITY)
    return hashlib.sha256(str(identity).encode()).hexdigest()[:8]


async def purged_position(db: Executor) -> Position:
    row = await db.fetchrow(CHANGES_PURGED)
    assert row is not None  # schema.sql inserts the one row
    return Position(int(row["xid"]), row["seq"])


async def purge_changes(db: Executor, *, older_than: int, batch: int) -> int:
    """Purge up to `batch` changes older than `older_than` seconds; how many went."""
    purged = await db.fetchval(PURGE_CHANGES, batch, float(older_than), PURGE_LOCK_KEY)
    assert isinstance(purged, int)
    return purged


class StoredAnswer(NamedTuple):
    route: str
    fingerprint: bytes  # empty once the user it showed is deleted: any body matches
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    user_id: UUID | None = None  # the user it shows, if any
    emails: list[str] | None = None  # the emails a 409 names, if any


def encode_headers(headers: list[tuple[str, str]]) -> str:
    return _encoder.encode(headers).decode()


async def lock_idempotency_key(conn: PoolConnectionProxy, caller: str, key: str) -> bool:
    """Whether this transaction holds the key now; False while another does."""
    locked: bool = await conn.fetchval(LOCK_IDEMPOTENCY_KEY, caller, key)
    return locked


async def find_stored_answer(
    conn: PoolConnectionProxy, caller: str, key: str
) -> StoredAnswer | None:
    row = await conn.fetchrow(FIND_STORED_ANSWER, caller, key)
    if row is None:
        return None
    headers = [(name, value) for name, value in msgspec.json.decode(row["headers"])]
    return StoredAnswer(row["route"], row["fingerprint"], row["status"], headers, row["body"])


async def store_answer(
    conn: PoolConnectionProxy, caller: str, key: str, answer: StoredAnswer, ttl: int
) -> None:
    await conn.execute(
        STORE_ANSWER, caller, key, answer.route, answer.fingerprint, answer.status,
        encode_headers(answer.headers), answer.body, float(ttl), answer.user_id, answer.emails,
    )  # fmt: skip


async def purge_expired_keys(conn: PoolConnectionProxy) -> None:
    await conn.execute(PURGE_EXPIRED_KEYS, PURGE_BATCH)


@asynccontextmanager
async def searching(db: Database) -> AsyncIterator[PoolConnectionProxy]:
    """A connection in a read-only transaction whose statements are planned for their values.

    Repeatable read: a page and its count see the same users.
    """
    async with (
        db.connection() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        await conn.execute(PLAN_FOR_EACH_CALL)
        yield conn


async def search_users(
    conn: PoolConnectionProxy, filters: Filters, *, after: str | None, limit: int, offset: int
) -> list[User]:
    """The page of users that match the filters, in email order, after an email key if given."""
    clauses, arguments = filter_clauses(filters)
    await choose_plan(conn, clauses, arguments, rows=limit + offset)
    if after is not None:
        arguments.append(after)
        clauses.append(AFTER_EMAIL.format(len(arguments)))
    query = SEARCH_PAGE.format(
        where=" AND ".join(clauses), limit=len(arguments) + 1, offset=len(arguments) + 2
    )
    return [to_user(row) for row in await conn.fetch(query, *arguments, limit, offset)]


async def choose_plan(
    conn: Connection, clauses: list[str], arguments: list[object], *, rows: int
) -> None:
    """Fetch every match first, for the rest of the transaction, when that is the
    cheaper way to the first `rows` users in email order (see MATCH_VISITS)."""
    matches = await planned_rows(conn, clauses, arguments)
    table: float = await conn.fetchval(TABLE_ROWS)  # -1 before the first ANALYZE
    if MATCH_VISITS * matches * matches < rows * table:
        await conn.execute(FETCH_MATCHES_FIRST)


async def planned_rows(conn: Connection, clauses: list[str], arguments: list[object]) -> int:
    """How many users the planner expects these conditions to match."""
    plan = await conn.fetchval(PLAN_USERS.format(where=where(clauses)), *arguments)
    [explained] = msgspec.json.decode(plan)
    rows: int = explained["Plan"]["Plan Rows"]
    return rows


async def count_users(conn: PoolConnectionProxy, filters: Filters) -> int:
    """How many users match the filters, counted."""
    clauses, arguments = filter_clauses(filters)
    total: int = await conn.fetchval(COUNT_USERS.format(where=where(clauses)), *arguments)
    return total


async def estimate_users(conn: PoolConnectionProxy, filters: Filters) -> int:
    """How many users match the filters, as the planner estimates from the table's
    statistics; counted instead when it estimates fewer than ESTIMATE_EXACT_BELOW."""
    clauses, arguments = filter_clauses(filters)
    estimate = await planned_rows(conn, clauses, arguments)
    if estimate >= ESTIMATE_EXACT_BELOW:
        return estimate
    # Bounded: an estimate far too low costs at most this many rows' reading.
    bounded = COUNT_USERS_UP_TO.format(where=where(clauses), bound=ESTIMATE_EXACT_BELOW)
    counted: int = await conn.fetchval(bounded, *arguments)
    return counted if counted < ESTIMATE_EXACT_BELOW else max(estimate, counted)
