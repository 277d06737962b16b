"""The change feed: every committed write to users, in order, from a cursor."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service import metrics, queries
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
# Server-sent events: what asks for them, and how often a silent stream sends
# a comment, so that proxies and load balancers keep it open.
EVENT_STREAM = "text/event-stream"
HEARTBEAT_SECONDS = 15.0
HEARTBEAT = b": keep-alive\n\n"


_encoder = msgspec.json.Encoder()


def watch_of(request: Request) -> Watch:
    watch: Watch = request.app.state.watch
    return watch


def cursor_of(position: Position) -> str:
    return f"{position.xid:x}-{position.seq:x}"


def position_of(cursor: str, field: str) -> Position:
    """The position a cursor names; one this feed cannot have made, a 422 naming `field`."""
    found = _cursor.fullmatch(cursor)
    if found is None:
        raise ProblemError(
            422,
            f"{field} must be a cursor of this feed (a change's `cursor` or a page's `next`), "
            f"or {NOW}",
            field=field,
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


def wants_stream(request: Request) -> bool:
    """Whether Accept names server-sent events, as an EventSource's does."""
    accept = request.headers.get("accept", "").split(",")
    return any(item.partition(";")[0].strip().lower() == EVENT_STREAM for item in accept)


def gone(request: Request, field: str) -> ProblemError:
    return ProblemError(
        410,
        "The feed cannot go on from this cursor: the changes after it were purged (kept "
        f"{settings_of(request).changes_retention} s), or no transaction has reached it "
        "(a cursor from another database, or from before a failover that lost writes). "
        f"List the users again, and follow the feed from after={NOW} taken before listing",
        field=field,
    )


async def start_of(
    request: Request, after: str | None, limit: int, field: str, *, waits: bool
) -> tuple[Position, list[ChangeRow] | None]:
    """Where `after` starts the feed, and the first page from there. A consumer
    that `waits` for changes shares its read with those asking for the same page
    (a read may then have begun a moment before its request came); any other
    reads on its own, so that it sees every write answered before it asked."""
    db = db_of(request)
    if after == NOW:
        return await queries.present_position(db), []
    if after is None:
        return await from_the_oldest(db, limit)
    position = position_of(after, field)
    if waits:
        return position, await watch_of(request).changes_after(position, limit)
    return position, await queries.changes_after(db, position, limit)


async def list_changes(request: Request) -> Response:
    params = query_params(request, PARAMETERS)
    limit = query_int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    wait = query_int(params, "wait", 0, 0, MAX_WAIT)
    field, after = "after", params.get("after")
    if after not in (None, NOW):
        position_of(after, field)  # refused when malformed, even if Last-Event-ID wins
    # An EventSource reconnecting sends the id of the last event it saw.
    if (last_event_id := request.headers.get("last-event-id")) is not None:
        field, after = "Last-Event-ID", last_event_id
    if wants_stream(request):
        return await stream_changes(request, after, field)
    metrics.FEED_REQUESTS.labels("long_poll" if wait else "page").inc()
    position, rows = await start_of(request, after, limit, field, waits=wait > 0)
    if rows == [] and wait and after != NOW:  # `now` answers the present position at once
        rows = await changes_within(request, position, limit, wait)
    if rows is None:
        raise gone(request, field)
    changes = [to_change(row) for row in rows]
    # Nothing new: the same cursor again, never the present, which a change
    # that became readable after this page's snapshot may already lie behind.
    next = changes[-1].cursor if changes else cursor_of(position)
    return json_response(Changes(changes=changes, next=next))


async def stream_changes(request: Request, after: str | None, field: str) -> Response:
    """The feed as server-sent events, from the cursor `after` given in `field`."""
    metrics.FEED_REQUESTS.labels("stream").inc()
    position, rows = await start_of(request, after, MAX_LIMIT, field, waits=True)
    if rows is None:
        raise gone(request, field)
    return StreamingResponse(
        events(request, position, rows),
        media_type=EVENT_STREAM,
        # No proxy may keep the stream to answer others, or hold it back to buffer it.
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def event(row: ChangeRow) -> bytes:
    """One change as an event: its cursor, its type, and the change as one line of JSON."""
    change = to_change(row)
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        change.cursor.encode(), row.type.encode(), _encoder.encode(change),
    )  # fmt: skip


class EventsOf:
    """The events of the last page encoded, for every stream that read that same
    page: the streams woken by a change share one read (Watch.changes_after)."""

    def __init__(self) -> None:
        self._rows: list[ChangeRow] = []
        self._events = b""

    def __call__(self, rows: list[ChangeRow]) -> bytes:
        if rows is not self._rows:
            self._rows, self._events = rows, b"".join(event(row) for row in rows)
        return self._events


events_of = EventsOf()


async def events(
    request: Request, position: Position, rows: list[ChangeRow] | None
) -> AsyncIterator[bytes]:
    """Each change after `position` as it becomes readable, until the service stops.

    A stream whose position the purge passes, or whose database fails, ends:
    the consumer's reconnection with Last-Event-ID resumes it, or gets the 410.
    """
    watch = watch_of(request)
    loop = asyncio.get_running_loop()
    metrics.FEED_STREAMS.inc()
    try:
        sent = loop.time()
        while rows is not None and not watch.stopping:
            if rows:
                yield events_of(rows)
                position, sent = rows[-1].position, loop.time()
            else:
                if loop.time() - sent >= HEARTBEAT_SECONDS:
                    yield HEARTBEAT
                    sent = loop.time()
                await watch.until_after(position, sent + HEARTBEAT_SECONDS - loop.time())
                if watch.stopping:
                    break
            rows = await watch.changes_after(position, MAX_LIMIT)
    except Exception as exc:  # the headers are sent: a problem can no longer be answered
        logger.warning("a change feed stream ended on an error: %r", exc)
    finally:
        metrics.FEED_STREAMS.dec()


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
        rows = await watch.changes_after(position, limit)
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
