"""SQL of the feed of everything (GET /changes): users', groups' and memberships' changes."""

from __future__ import annotations

from typing import NamedTuple

import asyncpg
import msgspec

from service.queries import (
    ChangeRow,
    Executor,
    Position,
    to_change_row,
)
from service.schemas import Group

# user_changes and group_changes (schema.sql) merged in their one order,
# (xid, seq), under the users' feed's rule: only changes of transactions below
# the snapshot's xmin, and nothing after a cursor the purge of either table has
# passed. Each side reads its own page through its primary key, and the two
# are merged (a Merge Append): a page costs what the users' feed's does. The
# columns up to updated_at are queries.CHANGES_PAGE's, so that a user's change
# is read as there; a group's puts its name and attributes in the users' place,
# and `member` is a membership's user.
ALL_CHANGES_PAGE = """
SELECT c.xid::text AS txid, c.seq, c.type, c.version, rfc3339(c.at) AS at, c.actor,
    c.request_id, c.id::text AS id, c.name, c.email, c.status, c.attributes,
    rfc3339(c.created_at) AS created_at, rfc3339(c.updated_at) AS updated_at, c.kind,
    c.member::text AS member
FROM (
    (SELECT xid, seq, type, version, at, actor, request_id, user_id AS id, name, email,
        status, attributes, created_at, updated_at, 'user' AS kind, NULL::uuid AS member
     FROM user_changes
     WHERE (xid, seq) > ($1::text::xid8, $2::bigint)
       AND xid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY xid, seq
     LIMIT $3)
    UNION ALL
    (SELECT xid, seq, type, version, at, actor, request_id, group_id, name, NULL, NULL,
        attributes, created_at, updated_at,
        CASE WHEN user_id IS NULL THEN 'group' ELSE 'membership' END, user_id
     FROM group_changes
     WHERE (xid, seq) > ($1::text::xid8, $2::bigint)
       AND xid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY xid, seq
     LIMIT $3)
) AS c
WHERE NOT EXISTS (
      SELECT FROM user_changes_purged WHERE (xid, seq) > ($1::text::xid8, $2::bigint)
  )
  AND NOT EXISTS (
      SELECT FROM group_changes_purged WHERE (xid, seq) > ($1::text::xid8, $2::bigint)
  )
ORDER BY c.xid, c.seq
LIMIT $3
"""
# The last change a page of everything could hold now; none when both are empty.
ALL_CHANGES_END = """
SELECT txid, seq FROM (
    (SELECT xid, xid::text AS txid, seq FROM user_changes
     WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY xid DESC, seq DESC
     LIMIT 1)
    UNION ALL
    (SELECT xid, xid::text AS txid, seq FROM group_changes
     WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY xid DESC, seq DESC
     LIMIT 1)
) AS ends
ORDER BY xid DESC, seq DESC
LIMIT 1
"""
# As queries.CHANGES_GONE, for either table's purge.
ALL_CHANGES_GONE = """
SELECT (u.xid, u.seq) > ($1::text::xid8, $2::bigint)
    OR (g.xid, g.seq) > ($1::text::xid8, $2::bigint)
    OR $1::text::xid8 > pg_snapshot_xmax(pg_current_snapshot())
FROM user_changes_purged AS u, group_changes_purged AS g
"""
# Where a page of everything from the oldest change kept starts: past both
# purges, which take one prefix of the merged order.
ALL_CHANGES_PURGED = """
SELECT xid::text, seq FROM (
    SELECT xid, seq FROM user_changes_purged
    UNION ALL
    SELECT xid, seq FROM group_changes_purged
) AS purged
ORDER BY xid DESC, seq DESC
LIMIT 1
"""
# As queries.CHANGES_BEHIND, over both tables: the changes readable after
# ($1, $2), up to $3, and how long ago the oldest one's transaction began.
ALL_CHANGES_BEHIND = """
SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(at)), 0)::float8
FROM (
    (SELECT xid, seq, at FROM user_changes
     WHERE (xid, seq) > ($1::text::xid8, $2::bigint)
       AND xid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY xid, seq
     LIMIT $3)
    UNION ALL
    (SELECT xid, seq, at FROM group_changes
     WHERE (xid, seq) > ($1::text::xid8, $2::bigint)
       AND xid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY xid, seq
     LIMIT $3)
    ORDER BY xid, seq
    LIMIT $3
) AS behind
"""

_decode_attributes = msgspec.json.Decoder(dict[str, str])


class GroupChangeRow(NamedTuple):
    """A group's change, or (with `member`) a membership's."""

    position: Position
    type: str
    id: str  # the group's
    version: int | None  # None for a membership's
    at: str
    actor: str | None
    request_id: str | None
    group: Group | None  # None when deleted, and for a membership's
    member: str | None  # the membership's user; None for the group's own


def to_group_change_row(row: asyncpg.Record) -> GroupChangeRow:
    txid, seq, type, version, at, actor, request_id, id, name, _, _, attributes = row[:12]
    group = None
    if name is not None:
        group = Group(
            id=id,
            name=name,
            attributes={} if attributes == "{}" else _decode_attributes.decode(attributes),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )
    return GroupChangeRow(
        Position(int(txid), seq), type, id, version, at, actor, request_id, group, row["member"]
    )


AnyChangeRow = ChangeRow | GroupChangeRow


async def all_changes_after(db: Executor, after: Position, limit: int) -> list[AnyChangeRow] | None:
    """Up to `limit` changes of users, groups and memberships after a position, in
    order; None when the purge has passed it."""
    rows = await db.fetch(ALL_CHANGES_PAGE, str(after.xid), after.seq, limit)
    if not rows and await db.fetchval(ALL_CHANGES_GONE, str(after.xid), after.seq):
        return None
    return [
        to_change_row(row) if row["kind"] == "user" else to_group_change_row(row) for row in rows
    ]


async def all_readable_end(db: Executor) -> Position:
    """The position of the last change of either table readable now: (0, 0) for none."""
    row = await db.fetchrow(ALL_CHANGES_END)
    return Position(0, 0) if row is None else Position(int(row["txid"]), row["seq"])


async def all_purged_position(db: Executor) -> Position:
    row = await db.fetchrow(ALL_CHANGES_PURGED)
    assert row is not None  # schema.sql inserts each table's one row
    return Position(int(row["xid"]), row["seq"])


async def all_changes_behind(db: Executor, after: Position, bound: int) -> tuple[int, float]:
    """As queries.changes_behind, of users', groups' and memberships' changes."""
    row = await db.fetchrow(ALL_CHANGES_BEHIND, str(after.xid), after.seq, bound)
    assert row is not None  # an aggregate's one row
    return row[0], row[1]
