"""The change feed: every committed write to users, in order, from a cursor."""

from __future__ import annotations

import asyncio
import logging
import re

from starlette.requests import Request
from starlette.responses import Response

from service import queries
from service.database import Database, db_of
from service.problems import ProblemError
from service.queries import ChangeRow, Position
from service.schemas import Change, Changes
from service.users import json_response, query_int, query_params, settings_of
from service.watch import Watch

logger = logging.getLogger("service")

PARAMETERS = ("after", "limit", "wait")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT = 60  # seconds a long poll may be held
# `after=now`: the present position, for a consumer about to list the users.
NOW = "now"
# The transaction id, an xid8, then seq, a bigint: 16 hex digits at most,
# the sixteenth of a seq no higher than 7.
CURSOR_PATTERN = "([0-9a-f]{1,16})-([0-9a-f]{1,15}|[0-7][0-9a-f]{15})"
_cursor = re.compile(CURSOR_PATTERN)
# The purge: every PURGE_EVERY seconds, batches of PURGE_BATCH changes, at
# most PURGE_BATCHES of them, so that each worker's share stays small.
PURGE_EVERY = 10.0
PURGE_BATCH = 1000
PURGE_BATCHES = 20


def watch_of(request: Request) -> Watch:
    watch: Watch = request.app.state.watch
    return watch


def cursor_of(position: Position) -> str:
    return f"{position.xid:x}-{position.seq:x}"


def position_of(cursor: str) -> Position:
    """The position a cursor names; one this feed cannot have made, a 422."""
    found = _cursor.fullmatch(cursor)
    if found is None:
        raise ProblemError(
            422,
            "after must be a cursor of this feed (a change's `cursor` or a page's `next`), "
            f"or {NOW}",
            field="after",
        )
    return Position(int(found[1], 16), int(found[2], 16))


def to_change(row: ChangeRow) -> Change:
    return Change(
        cursor=cursor_of(row.position),
        type=row.type,  # type: ignore[arg-type]  # the table holds only the three
        id=row.id,
        version=row.version,
        at=row.at,
        user=row.user,
    )


async def list_changes(request: Request) -> Response:
    params = query_params(request, PARAMETERS)
    limit = query_int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    wait = query_int(params, "wait", 0, 0, MAX_WAIT)
    db = db_of(request)
    after = params.get("after")
    if after == NOW:
        present = await queries.present_position(db)
        return json_response(Changes(changes=[], next=cursor_of(present)))
    if after is None:
        position, rows = await from_the_oldest(db, limit)
    else:
        position = position_of(after)
        rows = await queries.changes_after(db, position, limit)
    if rows == [] and wait:
        rows = await changes_within(request, position, limit, wait)
    if rows is None:
        raise ProblemError(
            410,
            "The feed cannot go on from this cursor: the changes after it were purged (kept "
            f"{settings_of(request).changes_retention} s), or no transaction has reached it "
            "(a cursor from another database, or from before a failover that lost writes). "
            f"List the users again, and follow the feed from after={NOW} taken before listing",
            field="after",
        )
    changes = [to_change(row) for row in rows]
    # Nothing new: the same cursor again, never the present, which a change
    # that became readable after this page's snapshot may already lie behind.
    next = changes[-1].cursor if changes else cursor_of(position)
    return json_response(Changes(changes=changes, next=next))


async def changes_within(
    request: Request, position: Position, limit: int, wait: int
) -> list[ChangeRow] | None:
    """The first changes after `position` that come within `wait` seconds; [] for none."""
    watch = watch_of(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    rows: list[ChangeRow] | None = []
    while rows == [] and (remaining := deadline - loop.time()) > 0:
        await watch.until_after(position, remaining)
        rows = await queries.changes_after(db_of(request), position, limit)
        if watch.stopping:
            break
    return rows


async def from_the_oldest(db: Database, limit: int) -> tuple[Position, list[ChangeRow] | None]:
    """The first page of what the feed keeps, and the position it starts from."""
    for _ in range(3):
        # A purge between the two statements moves the start on: try again from there.
        position = await queries.purged_position(db)
        rows = await queries.changes_after(db, position, limit)
        if rows is not None:
            break
    return position, rows


async def keep_purging(db: Database, retention: int) -> None:
    """Purge changes older than `retention` seconds, a few bounded batches at a time."""
    while True:
        await asyncio.sleep(PURGE_EVERY)
        try:
            for _ in range(PURGE_BATCHES):
                if await queries.purge_changes(db, older_than=retention, batch=PURGE_BATCH) == 0:
                    break
        except Exception as exc:  # a failover's errors among them: the loop must go on
            # The next round tries again; the feed only holds more meanwhile.
            logger.warning("purging the change feed failed: %r", exc)
