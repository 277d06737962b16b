"""The change feed: every committed write to users (and, in the feed of everything,
to groups and memberships), in order, from a cursor."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine, Sequence
from typing import Annotated, Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from service import feed_queries, metrics, queries, streams
from service.database import Database, db_of
from service.feed_queries import AnyChangeRow
from service.observe import WAITED
from service.operations import USER, Operation, Parameter, Reply
from service.problems import ProblemError
from service.queries import ChangeRow, Position
from service.schemas import (
    AllChanges,
    AnyChange,
    Change,
    Changes,
    GroupChange,
    MembershipChange,
    UserChange,
)
from service.users import (
    NO_USER,
    json_response,
    path_user,
    query_int,
    query_params,
    settings_of,
)
from service.watch import Watch

logger = logging.getLogger("service")
T = TypeVar("T")

PARAMETERS = ("after", "limit", "wait")
HISTORY_PARAMETERS = ("after", "limit")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT = 60  # seconds a long poll may be held
# `after=now`: the present position, for a consumer about to list the users.
NOW = "now"
# The transaction id, an xid8, then seq, a bigint: 16 hex digits at most,
# the sixteenth of a seq no higher than 7; then the feed's identity
# (queries.feed_identity), absent from the cursors made before it was added.
CURSOR_PATTERN = "([0-9a-f]{1,16})-([0-9a-f]{1,15}|[0-7][0-9a-f]{15})(?:-([0-9a-f]{8}))?"
_cursor = re.compile(CURSOR_PATTERN)
# The purge: every PURGE_EVERY seconds, batches of PURGE_BATCH changes, at
# most PURGE_BATCHES of them, so that each worker's share stays small.
PURGE_EVERY = 10.0
PURGE_BATCH = 1000
PURGE_BATCHES = 20
# Server-sent events: what asks for them (service/streams.py sends them).
EVENT_STREAM = streams.EVENT_STREAM
JSON = "application/json"
# One element of Accept: a media range and its weight (RFC 9110 §12.5.1).
_MEDIA_RANGE = re.compile(
    r"\s*([!#$%&'*+.^_`|~0-9a-z-]+)/([!#$%&'*+.^_`|~0-9a-z-]+)\s*((?:;[^;]*)*)", re.IGNORECASE
)
_WEIGHT = re.compile(r";\s*q\s*=\s*(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\s*(?:;|$)", re.IGNORECASE)
_Q = re.compile(r";\s*q\s*=", re.IGNORECASE)
RETRY_FULL_SECONDS = "5"
# A stream reads its backlog STREAM_PAGE changes at a time (about 40 KB as
# events), and a silent one sends a comment every HEARTBEAT_SECONDS, so that
# proxies and load balancers keep it open.
STREAM_PAGE = 100
HEARTBEAT_SECONDS = 15.0
HEARTBEAT = b": keep-alive\n\n"


_encoder = msgspec.json.Encoder()


def watch_of(request: Request) -> Watch:
    watch: Watch = request.app.state.watch
    return watch


def cursor_of(position: Position, feed: str) -> str:
    """The cursor of `position` in the feed whose identity is `feed`; opaque to callers."""
    return f"{position.xid:x}-{position.seq:x}-{feed}"


def position_of(cursor: str, field: str) -> tuple[Position, str | None]:
    """The position a cursor names, and the identity of the feed that made it
    (None for a cursor made before cursors carried one); one this feed cannot
    have made, a 422 naming `field`."""
    found = _cursor.fullmatch(cursor)
    if found is None:
        raise ProblemError(
            422,
            f"{field} must be a cursor of this feed (a change's `cursor` or a page's `next`), "
            f"or {NOW}",
            field=field,
        )
    return Position(int(found[1], 16), int(found[2], 16)), found[3]


def to_change(row: ChangeRow, feed: str) -> Change:
    return Change(
        cursor=cursor_of(row.position, feed),
        type=row.type,  # type: ignore[arg-type]  # the table holds only the three
        id=row.id,
        version=row.version,
        at=row.at,
        actor=row.actor,
        request_id=row.request_id,
        user=row.user,
    )


def to_any_change(row: AnyChangeRow, feed: str) -> AnyChange:
    """A change of the feed of everything: a user's, a group's or a membership's."""
    cursor = cursor_of(row.position, feed)
    if isinstance(row, ChangeRow):
        return UserChange(
            cursor=cursor, type=row.type, id=row.id, version=row.version, at=row.at,  # type: ignore[arg-type]
            actor=row.actor, request_id=row.request_id, user=row.user,
        )  # fmt: skip
    if row.member is not None:
        return MembershipChange(
            cursor=cursor, type=row.type, group_id=row.id, user_id=row.member, at=row.at,  # type: ignore[arg-type]
            actor=row.actor, request_id=row.request_id,
        )  # fmt: skip
    assert row.version is not None  # a group's own change has one
    return GroupChange(
        cursor=cursor, type=row.type, id=row.id, version=row.version, at=row.at,  # type: ignore[arg-type]
        actor=row.actor, request_id=row.request_id, group=row.group,
    )  # fmt: skip


def quality(accept: str, media_type: str, *, named: bool = False) -> float:
    """The weight Accept gives `media_type`, from its most specific range (RFC
    9110 §12.5.1): 0 when none matches; with `named`, only its own name counts."""
    main, _, sub = media_type.partition("/")
    best, weight = -1, 0.0
    for element in accept.split(","):
        found = _MEDIA_RANGE.fullmatch(element)
        if found is None:
            continue
        kind, subkind = found[1].lower(), found[2].lower()
        if (kind, subkind) == (main, sub):
            specificity = 2
        elif named:
            continue
        elif (kind, subkind) == (main, "*"):
            specificity = 1
        elif (kind, subkind) == ("*", "*"):
            specificity = 0
        else:
            continue
        if specificity > best:
            q = _WEIGHT.search(found[3])
            if q is None and _Q.search(found[3]):
                continue  # a weight that is not one: the element says nothing
            best, weight = specificity, 1.0 if q is None else float(q[1])
    return weight


def wants_stream(request: Request) -> bool:
    """Whether Accept names server-sent events, as an EventSource's does, with a
    weight above 0 and no lower than JSON's: a wildcard alone (curl's */*)
    asks for the page, whose end a client can wait for."""
    accept = ", ".join(request.headers.getlist("accept"))
    stream = quality(accept, EVENT_STREAM, named=True)
    return stream > 0 and stream >= quality(accept, JSON)


def listing(everything: bool) -> str:
    """What a consumer lists again when its cursor is gone."""
    return "the users, the groups and their members" if everything else "the users"


def gone(request: Request, field: str, *, everything: bool = False) -> ProblemError:
    return ProblemError(
        410,
        "The feed cannot go on from this cursor: the changes after it were purged (kept "
        f"{settings_of(request).changes_retention} s), or no transaction has reached it "
        "(a cursor from another database, or from before a failover that lost writes). "
        f"List {listing(everything)} again, and follow the feed from after={NOW} taken "
        "before listing",
        field=field,
    )


def foreign(field: str, *, everything: bool = False) -> ProblemError:
    return ProblemError(
        410,
        "This cursor was made by another database (another server, another database of "
        "this one, or this one before it was restored from a dump): its positions mean "
        f"nothing here. List {listing(everything)} again, and follow the feed from "
        f"after={NOW} taken before listing",
        field=field,
    )


def admit(request: Request) -> Watch:
    """Count a long poll or a stream among this worker's waiting consumers (until
    Watch.leave); past FEED_MAX_CONSUMERS, a 503 that says when to come back."""
    watch = watch_of(request)
    if not watch.admit():
        metrics.FEED_REFUSED.inc()
        raise ProblemError(
            503,
            f"This worker already holds {watch.max_consumers} long polls and streams of the "
            "change feed; retry shortly",
            headers={"Retry-After": RETRY_FULL_SECONDS},
        )
    return watch


async def start_of(
    request: Request,
    after: str | None,
    limit: int,
    field: str,
    *,
    waits: bool,
    everything: bool = False,
) -> tuple[Position, Sequence[AnyChangeRow] | None]:
    """Where `after` starts the feed (of `everything`, or of users), and the first
    page from there. A consumer that `waits` for changes shares its read with those
    asking for the same page (a read may then have begun a moment before its
    request came); any other reads on its own, so that it sees every write
    answered before it asked."""
    db = db_of(request)
    if after == NOW:
        return await queries.present_position(db), []
    if after is None:
        return await from_the_oldest(db, limit, everything=everything)
    position, feed = position_of(after, field)
    # A cursor without an identity keeps working: it was made before cursors
    # carried one, by this database as a rule, and every answer hands out the
    # new form. Refusing it would make every consumer list all users again.
    if feed is not None and feed != await watch_of(request).identity():
        raise foreign(field, everything=everything)
    return position, await read_after(request, position, limit, waits=waits, everything=everything)


async def read_after(
    request: Request, position: Position, limit: int, *, waits: bool, everything: bool
) -> Sequence[AnyChangeRow] | None:
    """The page after `position`: shared with other consumers when it `waits`."""
    if waits:
        watch = watch_of(request)
        if everything:
            return await watch.all_changes_after(position, limit)
        return await watch.changes_after(position, limit)
    if everything:
        return await feed_queries.all_changes_after(db_of(request), position, limit)
    return await queries.changes_after(db_of(request), position, limit)


ChangesLimit = Annotated[
    int,
    msgspec.Meta(ge=1, le=MAX_LIMIT, extra_json_schema={"default": DEFAULT_LIMIT}),
]
ChangeCursor = Annotated[str, msgspec.Meta(pattern=f"^(?:{CURSOR_PATTERN}|{NOW})$")]
ChangeEvents = Annotated[
    str,
    msgspec.Meta(
        title="ChangeEvents",
        description="Server-sent events. First an `id:` alone, the position the stream starts "
        "from, which an EventSource keeps as its last id without firing an event; then one "
        "per change as it commits: `id:` is its cursor, "
        "`event:` its type, `data:` the change as one line of JSON (a `Change`). A comment "
        f"line, `{HEARTBEAT.decode().strip()}`, comes after "
        f"{HEARTBEAT_SECONDS:.0f} s without one. The stream has no end: the service "
        "ends it when it stops, or when its client reads nothing for FEED_STALL_SECONDS, and "
        "a consumer resumes it with `Last-Event-ID`.",
    ),
]

# The 422 of the feed and of a user's history alike.
BAD_PARAMETER = (
    "A parameter that is unknown, given twice or breaks its rule, a cursor this "
    "feed did not make among them; `field` names it."
)


LIST_CHANGES = Operation(
    operation_id="listChanges",
    tag="users",
    summary="Follow every change to users",
    description="Every committed create, update and delete of a user, in the order a "
    "consumer can follow without gaps or repeats: from a cursor, each change committed "
    "after it exactly once, whatever order concurrent writes commit in. Pass `next` as "
    "`after` to go on. Without `after`, from the oldest change kept; `after=now` answers "
    "no changes, and its `next` is the present position. To copy the users: take `next` "
    "from `after=now`, page through `GET /users`, then follow the feed from there, "
    "applying a change only when its `version` is above the one held. Changes are kept "
    "CHANGES_RETENTION seconds (a week by default). A deleted user's earlier changes "
    "are removed: its `deleted` change keeps only its id. A long transaction on the "
    "database holds the feed back until it ends. With `Accept: text/event-stream`, the "
    "changes come as server-sent events, each as soon as it can be read; `limit` and "
    "`wait` then do not apply. A stream is sent when Accept names `text/event-stream` "
    "with a weight above 0 and no lower than JSON's; its first bytes are an `id:` "
    "alone, the position it starts from. Also served at `/users/changes/`.",
    parameters=(
        Parameter(
            name="after",
            location="query",
            type=ChangeCursor,
            description="A change's `cursor` or a page's `next`, or `now`.",
        ),
        Parameter(
            name="limit",
            location="query",
            type=ChangesLimit,
            description="Changes per page.",
        ),
        Parameter(
            name="wait",
            location="query",
            type=Annotated[int, msgspec.Meta(ge=0, le=MAX_WAIT)],
            description="A long poll: when nothing is new, hold the request up to this "
            "many seconds, answering as soon as a change can be read, or with no "
            "changes when the time runs out. 0, the default, answers at once. A "
            "waiting request holds no database connection; a graceful stop answers "
            "it at once.",
        ),
        Parameter(
            name="Last-Event-ID",
            location="header",
            type=ChangeCursor,
            description="The cursor to go on after, in place of `after`: what an "
            "EventSource sends as it reconnects a stream, the `id:` of the last event "
            "it received.",
        ),
    ),
    replies={
        200: Reply(
            description="The changes after the cursor; with `Accept: text/event-stream`, "
            "a stream of them, as they come, until the service stops.",
            body=Changes,
            alternatives=((EVENT_STREAM, ChangeEvents),),
        )
    },
    problems={
        410: "The feed cannot go on from this cursor: the changes after it were purged, "
        "it was made by another database (another server, another database of this one, "
        "or this one before a restore from a dump), or no transaction has reached it "
        "(from before a failover that lost writes). List the users again, and follow the "
        "feed from `after=now` taken before listing.",
        503: "The database is down or too slow; or, for a long poll or a stream, the "
        "worker already holds FEED_MAX_CONSUMERS of them (`Retry-After: 5`).",
        422: BAD_PARAMETER,
    },
    uses_database=True,
)


async def list_changes(request: Request) -> Response:
    return await answer_feed(request, everything=False)


async def answer_feed(request: Request, *, everything: bool) -> Response:
    """A page, a long poll or a stream of the feed of users, or of `everything`."""
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
        return await stream_changes(request, after, field, everything=everything)
    waits = wait > 0 and after != NOW  # `now` answers the present position at once
    metrics.FEED_REQUESTS.labels("long_poll" if wait else "page").inc()
    watch = admit(request) if waits else watch_of(request)
    try:
        position, rows = await start_of(
            request, after, limit, field, waits=waits, everything=everything
        )
        if rows == [] and waits:
            within = changes_within(request, position, limit, wait, everything=everything)
            rows = await unless_gone(request, within)
    finally:
        if waits:
            watch.leave()
    if rows is None:
        raise gone(request, field, everything=everything)
    feed = await watch.identity()
    # Nothing new: the same cursor again, never the present, which a change
    # that became readable after this page's snapshot may already lie behind.
    next = cursor_of(rows[-1].position if rows else position, feed)
    if everything:
        return json_response(AllChanges(changes=[to_any_change(r, feed) for r in rows], next=next))
    changes = [to_change(row, feed) for row in rows]  # type: ignore[arg-type]  # users' alone
    return json_response(Changes(changes=changes, next=next))


LIST_ALL_CHANGES = Operation(
    operation_id="listAllChanges",
    tag="groups",
    summary="Follow every change to users, groups and memberships",
    description="The feed of `GET /users/changes` with the changes of groups and "
    "memberships merged into its order: the same cursors, pages, long polls, streams, "
    "retention and 410s, and the same promise (each change committed after a cursor "
    "exactly once, whatever order concurrent writes commit in). Each change names its "
    "`kind`: a `user`'s is the users' feed's change; a `group`'s is `created`, `updated` or "
    "`deleted`, with the group after it and its `version`; a `membership`'s is `added` or "
    "`removed`, with `group_id` and `user_id`. A deleted group's earlier changes, its "
    "members' among them, are removed: its `deleted` change keeps only its id, and ends "
    "every membership of the group; a user's `deleted` change ends every membership of "
    "the user. To copy users, groups and members: take `next` from `after=now`, page "
    "through `GET /users`, `GET /groups` and each group's members, then follow this feed "
    "from there. As server-sent events, each event's name is the change's kind and type "
    "(`membership.added`). Needs both `users:changes` and `groups:read`. Also served at "
    "`/changes/`.",
    parameters=LIST_CHANGES.parameters,
    replies={
        200: Reply(
            description="The changes after the cursor; with `Accept: text/event-stream`, "
            "a stream of them, as they come, until the service stops.",
            body=AllChanges,
            alternatives=((EVENT_STREAM, ChangeEvents),),
        )
    },
    problems={
        **LIST_CHANGES.problems,
        410: "The feed cannot go on from this cursor: the changes after it were purged, "
        "it was made by another database, or no transaction has reached it. List the users, "
        "the groups and their members again, and follow the feed from `after=now` taken "
        "before listing.",
    },
    uses_database=True,
)


async def list_all_changes(request: Request) -> Response:
    return await answer_feed(request, everything=True)


LIST_USER_CHANGES = Operation(
    operation_id="listUserChanges",
    tag="users",
    summary="A user's history",
    description="The changes still kept of the user with an email, in any letter case, "
    "or with an id, oldest first: who changed the user (`actor`, `request_id`), when, "
    "and to what. Paged as the feed is, and its cursors are the feed's: pass `next` as "
    "`after` to go on. A deleted user's history goes with it. Also served at "
    "`/users/{user}/changes/`.",
    parameters=(
        USER,
        Parameter(
            name="after",
            location="query",
            type=ChangeCursor,
            description="A change's `cursor` or a page's `next`, or `now`.",
        ),
        Parameter(
            name="limit", location="query", type=ChangesLimit, description="Changes per page."
        ),
    ),
    replies={200: Reply(description="The user's changes after the cursor.", body=Changes)},
    problems={
        404: "No user has that email or id.",
        410: "The changes after this cursor were purged, or it was made by another "
        "database: read the history again without `after`.",
        422: BAD_PARAMETER,
    },
    uses_database=True,
)


async def list_user_changes(request: Request) -> Response:
    """One user's changes still kept, oldest first, paged as the feed is: who changed
    the user, and when. A deleted user has none (404), as its changes went with it."""
    key = path_user(request)
    params = query_params(request, HISTORY_PARAMETERS)
    limit = query_int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = params.get("after")
    db = db_of(request)
    feed = await watch_of(request).identity()
    position: Position | None = None
    if after == NOW:
        position = await queries.present_position(db)
    elif after is not None:
        position, made_by = position_of(after, "after")
        if made_by is not None and made_by != feed:
            raise foreign("after")
    try:
        rows = await queries.user_changes_after(db, key, position, limit)
    except queries.NoSuchUser:
        raise ProblemError(404, NO_USER) from None
    if rows is None:
        raise ProblemError(
            410,
            "The user's changes after this cursor were purged (kept "
            f"{settings_of(request).changes_retention} s), or no transaction has reached it "
            "(from before a failover that lost writes). Read the history again without after",
            field="after",
        )
    changes = [to_change(row, feed) for row in rows]
    if changes:
        next = changes[-1].cursor
    else:  # nothing new: `after` again, or, without one, where the feed's purge has reached
        next = cursor_of(position or await queries.purged_position(db), feed)
    return json_response(Changes(changes=changes, next=next))


async def unless_gone(request: Request, waiting: Coroutine[Any, Any, T]) -> T:
    """What `waiting` returns; ClientDisconnect (a 499) as soon as the client goes,
    so that a consumer that hung up is not held, nor counted, to the end of its wait."""
    waited = asyncio.ensure_future(waiting)
    client = asyncio.ensure_future(streams.disconnected(request.receive))
    began = time.perf_counter()
    try:
        await asyncio.wait({waited, client}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        client.cancel()
        waited.cancel()  # a no-op once it is done
        # Time spent waiting for changes is not time spent answering (observe.py).
        request.scope[WAITED] = request.scope.get(WAITED, 0.0) + time.perf_counter() - began
    if not waited.done():
        raise ClientDisconnect
    return waited.result()


async def stream_changes(
    request: Request, after: str | None, field: str, *, everything: bool = False
) -> Response:
    """The feed as server-sent events, from the cursor `after` given in `field`."""
    metrics.FEED_REQUESTS.labels("stream").inc()
    watch = admit(request)
    try:
        position, rows = await start_of(
            request, after, STREAM_PAGE, field, waits=True, everything=everything
        )
        if rows is None:
            raise gone(request, field, everything=everything)
        feed = await watch.identity()
    except BaseException:
        watch.leave()
        raise
    return streams.EventStream(
        events(watch, feed, position, rows, everything=everything),
        stall_seconds=settings_of(request).feed_stall_seconds,
        ended=watch.leave,  # the stream holds its place until it ends
    )


def event(row: ChangeRow, feed: str) -> bytes:
    """One change as an event: its cursor, its type, and the change as one line of JSON."""
    change = to_change(row, feed)
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        change.cursor.encode(), row.type.encode(), _encoder.encode(change),
    )  # fmt: skip


def any_event(row: AnyChangeRow, feed: str) -> bytes:
    """One change of the feed of everything as an event, named by its kind and type
    (`user.created`, `group.deleted`, `membership.added`)."""
    change = to_any_change(row, feed)
    kind = "user" if isinstance(row, ChangeRow) else "group" if row.member is None else "membership"
    return b"id: %s\nevent: %s.%s\ndata: %s\n\n" % (
        change.cursor.encode(), kind.encode(), row.type.encode(), _encoder.encode(change),
    )  # fmt: skip


class EventsOf:
    """The events of the last page encoded, for every stream that read that same
    page: the streams woken by a change share one read (Watch.changes_after)."""

    def __init__(self, everything: bool) -> None:
        self._rows: Sequence[AnyChangeRow] = []
        self._events = b""
        self._event = any_event if everything else event

    def __call__(self, rows: Sequence[AnyChangeRow], feed: str) -> bytes:
        if rows is not self._rows:
            self._rows = rows
            self._events = b"".join(self._event(row, feed) for row in rows)  # type: ignore[arg-type]
        return self._events


events_of = {everything: EventsOf(everything) for everything in (False, True)}


async def events(
    watch: Watch,
    feed: str,
    position: Position,
    rows: Sequence[AnyChangeRow] | None,
    *,
    everything: bool = False,
) -> streams.Chunks:
    """Each change after `position` as it becomes readable, a page at a time, until the
    service stops. The next page is read only once the last has left for the socket.

    First, an event with only an `id`, the start: an EventSource that reconnects
    before any change sends it as Last-Event-ID, and misses nothing. A stream
    whose position the purge passes, or whose database fails, ends: the
    consumer's reconnection with Last-Event-ID resumes it, or gets the 410.
    """
    loop = asyncio.get_running_loop()
    metrics.FEED_STREAMS.inc()
    try:
        yield b"id: %s\n\n" % cursor_of(position, feed).encode(), 0
        sent = loop.time()
        while rows is not None and not watch.stopping:
            if rows:
                count, position = len(rows), rows[-1].position
                chunk, rows = events_of[everything](rows, feed), None  # held no longer
                # than its bytes
                yield chunk, count
                sent = loop.time()
            else:
                if loop.time() - sent >= HEARTBEAT_SECONDS:
                    yield HEARTBEAT, 0
                    sent = loop.time()
                await watch.until_after(
                    position, sent + HEARTBEAT_SECONDS - loop.time(), everything=everything
                )
                if watch.stopping:
                    break
            if everything:
                rows = await watch.all_changes_after(position, STREAM_PAGE)
            else:
                rows = await watch.changes_after(position, STREAM_PAGE)
    finally:
        metrics.FEED_STREAMS.dec()


async def changes_within(
    request: Request, position: Position, limit: int, wait: int, *, everything: bool = False
) -> Sequence[AnyChangeRow] | None:
    """The first changes after `position` that come within `wait` seconds; [] for none."""
    watch = watch_of(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    rows: Sequence[AnyChangeRow] | None = []
    while rows == [] and (remaining := deadline - loop.time()) > 0:
        await watch.until_after(position, remaining, everything=everything)
        rows = await read_after(request, position, limit, waits=True, everything=everything)
        if watch.stopping:
            break
    return rows


async def from_the_oldest(
    db: Database, limit: int, *, everything: bool = False
) -> tuple[Position, Sequence[AnyChangeRow] | None]:
    """The first page of what the feed keeps, and the position it starts from."""
    rows: Sequence[AnyChangeRow] | None
    for _ in range(3):
        # A purge between the two statements moves the start on: try again from there.
        if everything:
            position = await feed_queries.all_purged_position(db)
            rows = await feed_queries.all_changes_after(db, position, limit)
        else:
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
