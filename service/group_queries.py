"""SQL for groups and their memberships: one constant and one async function per query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple
from uuid import UUID

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from service.database import Database
from service.queries import (
    NOBODY,
    Actor,
    Condition,
    Executor,
    StoredAnswer,
    UserKey,
    condition_arguments,
    encode_attributes,
    encode_headers,
    like_pattern,
    searching,
    to_user,
)
from service.schemas import Group, StoredGroup, User

# Names are one identity regardless of case: every conflict, order and after=
# goes through lower(name) under the column's "C" collation, which the unique
# index groups_name_lower_key serves. A parameter is folded as
# lower($n COLLATE "C"), never by the database's locale.
#
# Groups leave the database as the API shows them, as users do: the id as text
# and times through schema.sql's rfc3339.
GROUP_COLUMNS = """public_id::text AS id, name, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at"""

# Each write of groups and members names its caller for the change feed: the
# transaction's settings users.actor ($n) and users.request_id ($n + 1), which
# schema.sql's record_group_changes and record_membership_changes read. Local
# to the transaction (a pooler in transaction mode allows it), and set before
# the write, in a CTE the write reads, so that its statement trigger sees them.
CALLER = """caller AS (
    SELECT set_config('users.actor', ${n}, true), set_config('users.request_id', ${m}, true)
)"""


def caller(first: int) -> str:
    """CALLER, with the actor in parameter `first` and the request id in the next."""
    return CALLER.replace("{n}", str(first)).replace("{m}", str(first + 1))


INSERT_GROUP = """
WITH {CALLER}
INSERT INTO groups (name, attributes) SELECT $1, $2::jsonb FROM caller
ON CONFLICT ((lower(name))) DO NOTHING
RETURNING {COLUMNS}, version
""".replace("{COLUMNS}", GROUP_COLUMNS).replace("{CALLER}", caller(3))

FIND_GROUP = "SELECT {COLUMNS}, version FROM groups WHERE public_id = $1".replace(
    "{COLUMNS}", GROUP_COLUMNS
)

# A page in name order, after a name ($1, "" for the first page), optionally of
# the names that hold $3 (a LIKE pattern).
LIST_GROUPS = """
SELECT {COLUMNS} FROM groups
WHERE lower(name) > lower($1 COLLATE "C")
ORDER BY lower(name)
LIMIT $2
""".replace("{COLUMNS}", GROUP_COLUMNS)
SEARCH_GROUPS = """
SELECT {COLUMNS} FROM groups
WHERE lower(name) > lower($1 COLLATE "C") AND lower(name) LIKE $3
ORDER BY lower(name)
LIMIT $2
""".replace("{COLUMNS}", GROUP_COLUMNS)

# The group as a patch leaves it: $5 a new name, null to keep; attributes
# merged (RFC 7396) with those set in $6 and without those removed in $7.
# As users' UPDATE_USER: a patch that changes nothing writes nothing, and
# `unchanged` is false only when another write slipped in (worth a retry).
PATCHED = """(coalesce($5, name), coalesce((attributes || $6::jsonb) - $7::text[], attributes))"""
UPDATE_GROUP = """
WITH {CALLER}, changed AS (
    UPDATE groups
    SET (name, attributes) = {PATCHED}, updated_at = now(), version = version + 1
    FROM caller
    WHERE public_id = $1
      AND ($2 OR (public_id, version) IN (SELECT * FROM unnest($3::uuid[], $4::bigint[])))
      AND (name, attributes) IS DISTINCT FROM {PATCHED}
    RETURNING public_id, name, attributes, created_at, updated_at, version
)
SELECT public_id::text AS id, name, attributes, rfc3339(created_at) AS created_at,
    rfc3339(updated_at) AS updated_at, version, true AS unchanged, true AS changed
FROM changed
UNION ALL
SELECT public_id::text, name, attributes, rfc3339(created_at), rfc3339(updated_at), version,
    (name, attributes) IS NOT DISTINCT FROM {PATCHED}, false
FROM groups
WHERE NOT EXISTS (SELECT FROM changed)
  AND public_id = $1
  AND ($2 OR (public_id, version) IN (SELECT * FROM unnest($3::uuid[], $4::bigint[])))
""".replace("{PATCHED}", PATCHED).replace("{CALLER}", caller(8))

# The memberships go with the group (ON DELETE CASCADE). The answers stored
# for the group's create (Idempotency-Key; user_id holds the id its ETag
# names) are replaced in the same statement by $5, $6 and $7, which show no
# trace of the group, and lose the fingerprint of the body that named it.
DELETE_GROUP = """
WITH {CALLER}, deleted AS (
    DELETE FROM groups USING caller
    WHERE public_id = $1
      AND ($2 OR (public_id, version) IN (SELECT * FROM unnest($3::uuid[], $4::bigint[])))
    RETURNING public_id
), scrubbed AS (
    UPDATE idempotency_keys
    SET status = $5, headers = $6::jsonb, body = $7, fingerprint = '', user_id = NULL
    WHERE user_id IN (SELECT public_id FROM deleted)
)
SELECT count(*) FROM deleted
""".replace("{CALLER}", caller(8))

# One writer of a group's members at a time: the second waits for the
# first's commit, so no two member changes can deadlock whatever users they
# name, and none is lost. One row lock, whatever the group's size.
LOCK_GROUP = """
WITH {CALLER}
SELECT id FROM groups, caller WHERE public_id = $1 FOR NO KEY UPDATE OF groups
""".replace("{CALLER}", caller(2))

# The users named by email keys ($2) and ids ($3), and which of them this
# statement added to group $1 (its internal id), inserted in id order. Served
# by the users' unique indexes and the memberships' primary key: the group's
# other members are never read.
NAMED_USERS = """named AS (
    SELECT id, public_id::text AS public_id, lower(email) AS email_key FROM users
    WHERE lower(email) = ANY($2::text[]) OR public_id = ANY($3::uuid[])
)"""
ADD_MEMBERS = """
WITH {NAMED_USERS}, added AS (
    INSERT INTO memberships (group_id, user_id)
    SELECT $1, id FROM named ORDER BY id
    ON CONFLICT DO NOTHING
    RETURNING user_id
)
SELECT named.public_id, named.email_key, added.user_id IS NOT NULL AS changed
FROM named LEFT JOIN added ON added.user_id = named.id
""".replace("{NAMED_USERS}", NAMED_USERS)
# The removes find each membership by its whole primary key, one probe a user
# (LIMIT keeps the lateral subquery from being flattened into a join): with a
# join to choose, the planner may read the whole group instead, as it did
# (2 ms at 10,000 members) while its statistics still had the group small.
REMOVE_MEMBERS = """
WITH {NAMED_USERS}, removed AS (
    DELETE FROM memberships
    WHERE ctid = ANY(ARRAY(
        SELECT m.ctid FROM named CROSS JOIN LATERAL (
            SELECT ctid FROM memberships WHERE group_id = $1 AND user_id = named.id LIMIT 1
        ) AS m
    ))
    RETURNING user_id
)
SELECT named.public_id, named.email_key, removed.user_id IS NOT NULL AS changed
FROM named LEFT JOIN removed ON removed.user_id = named.id
""".replace("{NAMED_USERS}", NAMED_USERS)

# The membership checks of a loop turn, each a (group id, email key, user id)
# with one of the last two null, answered in their order: whether the group
# exists, whether the user does, and whether the user is in the group; three
# probes of unique indexes a check, in one statement for all.
ARE_MEMBERS = """
SELECT g.id IS NOT NULL AS group_found, u.id IS NOT NULL AS user_found,
    m.user_id IS NOT NULL AS member
FROM unnest($1::uuid[], $2::text[], $3::uuid[]) WITH ORDINALITY AS k (group_id, email, user_id, i)
LEFT JOIN groups g ON g.public_id = k.group_id
LEFT JOIN LATERAL (
    SELECT id FROM users WHERE lower(email) = k.email OR public_id = k.user_id
) u ON true
LEFT JOIN memberships m ON m.group_id = g.id AND m.user_id = u.id
ORDER BY k.i
"""

# A group's members as users, in email order, after an email key ($2, "" for
# the first page). The group is its internal key ($1), planned for its value:
# a big group is best paged by reading users in email order, a small one by
# reading its members and sorting them, and the planner tells them apart only
# by the key itself (see queries.IN_GROUP).
GROUP_KEY = "SELECT id FROM groups WHERE public_id = $1"
LIST_MEMBERS = """
SELECT u.public_id::text AS id, u.name, u.email, u.status, u.attributes,
    rfc3339(u.created_at) AS created_at, rfc3339(u.updated_at) AS updated_at
FROM memberships AS m JOIN users AS u ON u.id = m.user_id
WHERE m.group_id = $1 AND lower(u.email) > $2
ORDER BY lower(u.email)
LIMIT $3
"""

# A user's groups in name order, after a name ($3, "" for the first page).
LIST_USER_GROUPS = """
SELECT g.public_id::text AS id, g.name, g.attributes,
    rfc3339(g.created_at) AS created_at, rfc3339(g.updated_at) AS updated_at
FROM memberships AS m JOIN groups AS g ON g.id = m.group_id
WHERE m.user_id = (SELECT id FROM users WHERE lower(email) = $1 OR public_id = $2)
  AND lower(g.name) > lower($3 COLLATE "C")
ORDER BY lower(g.name)
LIMIT $4
"""
USER_EXISTS = "SELECT EXISTS (SELECT FROM users WHERE lower(email) = $1 OR public_id = $2)"


_decode_attributes = msgspec.json.Decoder(dict[str, str])
_encoder = msgspec.json.Encoder()


def to_group(row: asyncpg.Record) -> Group:
    """The group in a row whose first columns are GROUP_COLUMNS, in their order."""
    id, name, attributes, created_at, updated_at = row[:5]
    return Group(
        id=id,
        name=name,
        attributes={} if attributes == "{}" else _decode_attributes.decode(attributes),
        created_at=created_at,
        updated_at=updated_at,
    )


def to_stored_group(row: asyncpg.Record) -> StoredGroup:
    return StoredGroup(to_group(row), row["version"])


async def insert_group(
    db: Executor, name: str, attributes: dict[str, str], actor: Actor = NOBODY
) -> StoredGroup | None:
    """The group created by `actor`; None when its name is taken, in some letter case."""
    row = await db.fetchrow(INSERT_GROUP, name, encode_attributes(attributes), *actor)
    return None if row is None else to_stored_group(row)


async def find_group(db: Executor, id: UUID) -> StoredGroup | None:
    row = await db.fetchrow(FIND_GROUP, id)
    return None if row is None else to_stored_group(row)


async def list_groups(db: Executor, *, after: str, limit: int, q: str | None) -> list[Group]:
    """A page of groups in name order after a name ("" for the first), matching q if given."""
    if q is None:
        rows = await db.fetch(LIST_GROUPS, after, limit)
    else:
        rows = await db.fetch(SEARCH_GROUPS, after, limit, like_pattern(q))
    return [to_group(row) for row in rows]


class NameTaken(Exception):
    """A group's new name is another group's, in some letter case."""


class AttributesOverflow(Exception):
    """A patch's attributes, merged, would break their bounds."""


class Contended(Exception):
    """Other writes to a group kept coming between an update's snapshot and its change."""


UPDATE_ATTEMPTS = 3


async def update_group(
    db: Executor,
    id: UUID,
    condition: Condition,
    *,
    name: str | None,
    attributes: dict[str, str | None] | None,
    actor: Actor = NOBODY,
) -> tuple[StoredGroup, bool] | None:
    """The group changed, or as it is when the patch changes nothing, and whether it
    changed; None when no group has the id or the condition failed. Raises NameTaken,
    AttributesOverflow or Contended."""
    sets = removals = None
    if attributes is not None:
        sets = encode_attributes({k: v for k, v in attributes.items() if v is not None})
        removals = [k for k, v in attributes.items() if v is None]
    arguments = (id, *condition_arguments(condition), name, sets, removals, *actor)
    for _ in range(UPDATE_ATTEMPTS):
        try:
            row = await db.fetchrow(UPDATE_GROUP, *arguments)
        except asyncpg.UniqueViolationError:
            raise NameTaken from None
        except asyncpg.CheckViolationError as exc:
            if exc.constraint_name == "groups_attributes_valid":
                raise AttributesOverflow from None
            raise
        if row is None or row["unchanged"]:
            return None if row is None else (to_stored_group(row), row["changed"])
    raise Contended


async def delete_group(
    db: Executor, id: UUID, condition: Condition, *, forgotten: StoredAnswer, actor: Actor = NOBODY
) -> bool:
    """Whether the group was deleted, with its memberships: False when none has the id
    or the condition failed. The answers stored for its create become `forgotten`."""
    deleted = await db.fetchval(
        DELETE_GROUP, id, *condition_arguments(condition), forgotten.status,
        encode_headers(forgotten.headers), forgotten.body, *actor,
    )  # fmt: skip
    return deleted == 1


class NamedUser(NamedTuple):
    """A user a member change named, and whether the change added or removed it."""

    id: str
    email_key: str
    changed: bool


class NoSuchGroup(Exception):
    """No group has the id a request names."""


# A user deleted between a member add's read of it and its insert fails the
# insert's foreign key check; the next attempt no longer finds the user.
MEMBER_ATTEMPTS = 3


async def change_members(
    db: Database, group: UUID, add: Sequence[str], remove: Sequence[str], actor: Actor = NOBODY
) -> tuple[list[NamedUser], list[NamedUser]]:
    """Add the users named by the `add` keys to the group and remove those the `remove`
    keys name, in one transaction: the users each found, and whether it changed. Keys
    are email_keys (with an "@") and lower-case ids. Raises NoSuchGroup."""
    for attempt in range(MEMBER_ATTEMPTS):
        try:
            async with db.connection() as conn, conn.transaction():
                return await change_members_once(conn, group, add, remove, actor)
        except asyncpg.ForeignKeyViolationError:
            if attempt == MEMBER_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def change_members_once(
    conn: PoolConnectionProxy,
    group: UUID,
    add: Sequence[str],
    remove: Sequence[str],
    actor: Actor = NOBODY,
) -> tuple[list[NamedUser], list[NamedUser]]:
    group_id = await conn.fetchval(LOCK_GROUP, group, *actor)
    if group_id is None:
        raise NoSuchGroup
    added = await named_users(conn, ADD_MEMBERS, group_id, add) if add else []
    removed = await named_users(conn, REMOVE_MEMBERS, group_id, remove) if remove else []
    return added, removed


async def named_users(
    conn: PoolConnectionProxy, query: str, group_id: int, keys: Sequence[str]
) -> list[NamedUser]:
    emails = [key for key in keys if "@" in key]
    ids = [key for key in keys if "@" not in key]
    return [NamedUser(*row) for row in await conn.fetch(query, group_id, emails, ids)]


class Membership(NamedTuple):
    group_found: bool
    user_found: bool
    member: bool


async def are_members(db: Executor, checks: list[tuple[UUID, UserKey]]) -> list[Membership]:
    """The answer to each (group, user) check, in their order, from one statement."""
    rows = await db.fetch(
        ARE_MEMBERS,
        [group for group, _ in checks],
        [user.email for _, user in checks],
        [user.id for _, user in checks],
    )
    return [Membership(*row) for row in rows]


async def list_members(db: Database, group: UUID, *, after: str, limit: int) -> list[User]:
    """A page of the group's members in email order, after an email key ("" for the
    first). Raises NoSuchGroup."""
    async with searching(db) as conn:
        key = await conn.fetchval(GROUP_KEY, group)
        if key is None:
            raise NoSuchGroup
        return [to_user(row) for row in await conn.fetch(LIST_MEMBERS, key, after, limit)]


class NoSuchUser(Exception):
    """No user has the key a request names."""


async def list_user_groups(db: Executor, user: UserKey, *, after: str, limit: int) -> list[Group]:
    """A page of the user's groups in name order, after a name ("" for the first).
    Raises NoSuchUser."""
    rows = await db.fetch(LIST_USER_GROUPS, user.email, user.id, after, limit)
    if not rows and not await db.fetchval(USER_EXISTS, user.email, user.id):
        raise NoSuchUser
    return [to_group(row) for row in rows]


# SCIM (service/scim/groups.py): the group with its externalId, which the
# native API does not show, and its members as SCIM shows them. The members
# leave the database as the bytes of one JSON array, which the answer embeds
# as they are: a group of 100,000 members is never made into Python objects.
SCIM_GROUP_COLUMNS = """public_id::text AS id, name, external_id,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at, version"""
# The members of group g as [{"value", "$ref", "type"}], the sub-attributes of
# RFC 7643 §8.7.1, each $ref under the URL of /scim/v2/Users/ ($base, escaped
# for JSON by the caller; a public_id needs no escaping). Joined as text, in
# the order the group's memberships are read: json_build_object and an
# ORDER BY took 0.36 s of a group of 100,000, this 0.22 s (EXPLAIN ANALYZE).
SCIM_MEMBERS = """(
    SELECT convert_to('[' || coalesce(string_agg(
        '{"value":"' || u.public_id || '","$ref":"' || $base::text || u.public_id
        || '","type":"User"}', ','
    ), '') || ']', 'UTF8')
    FROM memberships AS m JOIN users AS u ON u.id = m.user_id
    WHERE m.group_id = g.id
)"""


def scim_members(parameter: int) -> str:
    """SCIM_MEMBERS with its base URL as parameter $`parameter`."""
    return SCIM_MEMBERS.replace("$base", f"${parameter}")


SCIM_FIND_GROUP = "SELECT {COLUMNS} FROM groups AS g WHERE public_id = $1".replace(
    "{COLUMNS}", SCIM_GROUP_COLUMNS
)
SCIM_FIND_GROUP_MEMBERS = """
SELECT {COLUMNS}, {MEMBERS} AS members FROM groups AS g WHERE public_id = $1
""".replace("{COLUMNS}", SCIM_GROUP_COLUMNS).replace("{MEMBERS}", scim_members(2))
SCIM_INSERT_GROUP = """
WITH {CALLER}
INSERT INTO groups (name, external_id) SELECT $1, $2 FROM caller
RETURNING id AS key, {COLUMNS}
""".replace("{COLUMNS}", SCIM_GROUP_COLUMNS).replace("{CALLER}", caller(3))
# The group read and locked for a SCIM write, as LOCK_GROUP locks it for a
# member change: writes of one group take turns.
SCIM_LOCK_GROUP = """
WITH {CALLER}
SELECT id AS key, {COLUMNS} FROM groups, caller WHERE public_id = $1 FOR NO KEY UPDATE OF groups
""".replace("{COLUMNS}", SCIM_GROUP_COLUMNS).replace("{CALLER}", caller(2))
SCIM_RENAME_GROUP = """
UPDATE groups SET name = $2, external_id = $3, updated_at = now(), version = version + 1
WHERE id = $1
RETURNING id AS key, {COLUMNS}
""".replace("{COLUMNS}", SCIM_GROUP_COLUMNS)
# A page of groups in name order, and its count, in one snapshot (searching).
SCIM_GROUP_PAGE = """
SELECT {COLUMNS}{members} FROM groups AS g
WHERE {where}
ORDER BY {order}
OFFSET ${offset} LIMIT ${limit}
""".replace("{COLUMNS}", SCIM_GROUP_COLUMNS)
SCIM_GROUP_COUNT = "SELECT count(*) FROM groups AS g WHERE {where}"
# Conditions of SCIM's filters on group g: it has members; the user whose id
# is the parameter {} (as $n) is one, by one probe of the primary key.
HAS_MEMBERS = "EXISTS (SELECT FROM memberships WHERE group_id = g.id)"
HAS_MEMBER = """EXISTS (
    SELECT FROM memberships
    WHERE group_id = g.id AND user_id = (SELECT id FROM users WHERE public_id = {})
)"""
# The internal ids of the users with these public ids ($1), for a replace of
# all members: found through users_public_id_key, one probe each.
SCIM_USER_KEYS = "SELECT id, public_id::text FROM users WHERE public_id = ANY($1::uuid[])"
SCIM_KEEP_MEMBERS = """
DELETE FROM memberships WHERE group_id = $1 AND NOT (user_id = ANY($2::bigint[]))
"""
SCIM_INSERT_MEMBERS = """
INSERT INTO memberships (group_id, user_id)
SELECT $1, user_id FROM unnest($2::bigint[]) AS user_id ORDER BY user_id
ON CONFLICT DO NOTHING
"""


class ExternalIdTaken(Exception):
    """Another group has the externalId."""


class Stale(Exception):
    """If-Match names no version the group is at."""


class UnknownMembers(Exception):
    """Members named users that do not exist: their ids, in the order given."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(", ".join(ids))
        self.ids = ids


class ScimGroupWrite(NamedTuple):
    """What a SCIM write does to a group: its name and externalId (`keep` when
    unchanged), and its members: all of them when `replace` is a list, else
    `add` and `remove`. Members by the lower-case ids of users."""

    name: str | None = None
    external_id: str | msgspec.UnsetType | None = msgspec.UNSET  # UNSET: as it is
    replace: tuple[str, ...] | None = None
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


def taken_by(exc: asyncpg.UniqueViolationError) -> Exception:
    if exc.constraint_name == "groups_external_id_key":
        return ExternalIdTaken()
    return NameTaken()


def json_text(text: str) -> str:
    """A string as it reads inside a JSON string's quotes."""
    return _encoder.encode(text).decode()[1:-1]


async def scim_find_group(
    db: Executor, id: UUID, *, members_under: str | None
) -> asyncpg.Record | None:
    """The group with its members (bytes of JSON), their $ref under `members_under`,
    or without them when it is None."""
    if members_under is None:
        return await db.fetchrow(SCIM_FIND_GROUP, id)
    return await db.fetchrow(SCIM_FIND_GROUP_MEMBERS, id, json_text(members_under))


async def scim_group_page(
    db: Database,
    where: tuple[str, Sequence[object]],
    *,
    descending: bool,
    offset: int,
    limit: int,
    members_under: str | None,
) -> tuple[list[asyncpg.Record], int]:
    """A page of the groups that match `where` (a condition and its arguments, from
    $1), in name order, with their members when `members_under` is given, and how
    many match, in one snapshot."""
    condition, arguments = where
    number = len(arguments)
    members = "" if members_under is None else f", {scim_members(number + 3)} AS members"
    query = SCIM_GROUP_PAGE.format(
        members=members,
        where=condition,
        order="lower(name) DESC" if descending else "lower(name)",
        offset=number + 1,
        limit=number + 2,
    )
    extra = [] if members_under is None else [json_text(members_under)]
    async with searching(db) as conn:
        rows = await conn.fetch(query, *arguments, offset, limit, *extra) if limit else []
        total = await conn.fetchval(SCIM_GROUP_COUNT.format(where=condition), *arguments)
    return rows, int(total)


async def scim_create_group(
    db: Database, name: str, external_id: str | None, members: Sequence[str], actor: Actor
) -> asyncpg.Record:
    """The group created with its members, in one transaction. Raises NameTaken,
    ExternalIdTaken, or UnknownMembers (and nothing is created)."""
    async with db.connection() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(SCIM_INSERT_GROUP, name, external_id, *actor)
        except asyncpg.UniqueViolationError as exc:
            raise taken_by(exc) from None
        assert row is not None
        if members:
            await add_scim_members(conn, row["key"], members)
        return row


async def scim_write_group(
    db: Database, id: UUID, condition: Condition, write: ScimGroupWrite, actor: Actor
) -> asyncpg.Record:
    """The group as `write` leaves it, in one transaction with the group locked.
    Raises NoSuchGroup, Stale, NameTaken, ExternalIdTaken, or UnknownMembers (and
    nothing changes)."""
    async with db.connection() as conn, conn.transaction():
        row = await conn.fetchrow(SCIM_LOCK_GROUP, id, *actor)
        if row is None:
            raise NoSuchGroup
        if condition is not None and (id, row["version"]) not in condition:
            raise Stale
        name = row["name"] if write.name is None else write.name
        external_id = (
            row["external_id"] if write.external_id is msgspec.UNSET else write.external_id
        )
        if (name, external_id) != (row["name"], row["external_id"]):
            try:
                row = await conn.fetchrow(SCIM_RENAME_GROUP, row["key"], name, external_id)
            except asyncpg.UniqueViolationError as exc:
                raise taken_by(exc) from None
            assert row is not None
        key = row["key"]
        if write.replace is not None:
            users = await user_keys(conn, write.replace)
            await conn.execute(SCIM_KEEP_MEMBERS, key, users)
            await conn.execute(SCIM_INSERT_MEMBERS, key, users)
        if write.add:
            await add_scim_members(conn, key, write.add)
        if write.remove:
            await named_users(conn, REMOVE_MEMBERS, key, write.remove)
        return row


async def user_keys(conn: PoolConnectionProxy, ids: Sequence[str]) -> list[int]:
    """The internal ids of the users with these ids; UnknownMembers if one has none."""
    rows = await conn.fetch(SCIM_USER_KEYS, list(ids))
    if len(rows) < len(set(ids)):
        found = {row["public_id"] for row in rows}
        raise UnknownMembers(list(dict.fromkeys(id for id in ids if id not in found)))
    return [row["id"] for row in rows]


async def add_scim_members(conn: PoolConnectionProxy, key: int, ids: Sequence[str]) -> None:
    """Add the users to the group `key`; UnknownMembers if an id names no user."""
    named = await named_users(conn, ADD_MEMBERS, key, ids)
    if len(named) < len(set(ids)):
        found = {user.id for user in named}
        raise UnknownMembers(list(dict.fromkeys(id for id in ids if id not in found)))
