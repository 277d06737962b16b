"""The relay: the change feed published into NATS JetStream, each change once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

import asyncpg
import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from prometheus_client import start_http_server

from service import feed_queries, metrics, queries
from service.changes import cursor_of, position_of, to_any_change, to_change
from service.database import CannotStart, Database, PoolBusy, close_pool, open_pool
from service.feed_queries import AnyChangeRow
from service.problems import ProblemError
from service.queries import ChangeRow, Position
from service.schemas import AnyChange, Change
from service.settings import Settings
from service.watch import Watch

logger = logging.getLogger("service")

USER_SUBJECTS = ["users.>"]
# With RELAY_GROUPS: a group's changes, and a membership's, by group and then user.
GROUP_SUBJECTS = ["groups.>", "memberships.>"]
MEMBERS_OF = "memberships.{}.>"
GROUPS = "groups.>"
# Groups purged at once, and the messages of one deleted at once: a page may
# delete many groups, and a group's purge is a request a member.
AT_ONCE = 16
DELETES_AT_ONCE = 64
# JetStream's error for a message to delete that is not there.
NO_MESSAGE = 10057
# Groups remembered as purged by this process, at most: each is purged again
# otherwise, which changes nothing.
PURGED_KEPT = 10_000
# Within it, a publish retried after an unknown outcome is acknowledged as a
# duplicate rather than stored twice (the sequence fence below catches most first).
DUPLICATE_WINDOW = 120.0
# Changes read and published at once, and pages sent before the oldest
# one's acknowledgements are awaited.
PAGE = 1000
IN_FLIGHT = 4
# A page's acknowledgements; past it their outcome is unknown, and the relay
# reads where it stands from the stream again. JetStream answers nothing to a
# duplicate of a message it is still storing: a second relay's, as a rule.
ACK_SECONDS = 5.0
RETRY_SECONDS = 1.0
# After another publisher moved the stream on: the other relay, most likely,
# which goes on publishing while this one waits and then checks again.
STANDBY_SECONDS = 5.0
# A waiting relay reads the feed's end at least this often (NOTIFY wakes it sooner).
IDLE_SECONDS = 5.0
LAG_EVERY = 1.0
LAG_BOUND = 1_000_000  # changes counted at most, so that the count stays cheap
# JetStream's errors for a Nats-Expected-Last-Sequence, or -Msg-Id, that is
# not the stream's last message's.
FENCE_ERRORS = frozenset({10070, 10071})
# nats-py tries again every 2 s: about two minutes, then the relay gives up.
RECONNECT_ATTEMPTS = 60

_encoder = msgspec.json.Encoder()
BEGINNING = Position(0, 0)  # before the feed's first change


class CannotRelay(Exception):
    """The relay must stop: one line says why, and nothing retried would change it."""


class Fenced(Exception):
    """The stream moved on under this relay: another publisher is at work."""


def subjects(settings: Settings) -> list[str]:
    return USER_SUBJECTS + GROUP_SUBJECTS if settings.relay_groups else USER_SUBJECTS


def stream_config(settings: Settings) -> StreamConfig:
    """The stream the relay creates when it is missing (docs/RELAY.md)."""
    return StreamConfig(
        name=settings.nats_stream,
        subjects=subjects(settings),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=settings.nats_replicas,
        # The last message of each user alone: a consumer starts from the
        # stream, and a delete leaves no earlier message of its user.
        max_msgs_per_subject=1,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        duplicate_window=DUPLICATE_WINDOW,
        # A consumer may read one user's last message by its subject.
        allow_direct=True,
    )


def differences(found: StreamConfig, settings: Settings) -> list[str]:
    """What in an existing stream's configuration breaks the relay's guarantees."""
    wanted = stream_config(settings)
    faults = []
    has = set(found.subjects or [])
    if missing := [subject for subject in wanted.subjects or [] if subject not in has]:
        # Without groups' subjects, its earlier changes went out without groups':
        # docs/RELAY.md says to delete it, for the relay to make it again.
        faults.append(f"subjects are {found.subjects}, not including {', '.join(missing)}")
    if not settings.relay_groups and has.intersection(GROUP_SUBJECTS):
        faults.append(
            f"subjects include {', '.join(GROUP_SUBJECTS)}: it holds groups' changes, "
            "which would go stale without RELAY_GROUPS=1"
        )
    if found.retention != RetentionPolicy.LIMITS:
        faults.append(f"retention is {found.retention}, not limits")
    if found.storage != StorageType.FILE:
        faults.append(f"storage is {found.storage}, not file")
    if found.num_replicas != wanted.num_replicas:
        faults.append(f"replicas are {found.num_replicas}, not NATS_REPLICAS={wanted.num_replicas}")
    if found.max_msgs_per_subject != 1:
        faults.append(f"max_msgs_per_subject is {found.max_msgs_per_subject}, not 1")
    for limit in ("max_msgs", "max_bytes"):
        value = getattr(found, limit)
        if value not in (None, -1):
            faults.append(f"{limit} is {value}, not unlimited (-1)")
    if found.max_age:
        faults.append(f"max_age is {found.max_age} s, not unlimited (0)")
    if settings.relay_groups and found.deny_purge:
        faults.append("deny_purge is true: a group's delete purges its members' messages")
    if found.sealed or found.mirror is not None:
        faults.append("it is sealed or a mirror, which takes no publishes")
    return faults


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the stream if it is missing; refuse one that cannot hold the guarantees."""
    try:
        info = await js.stream_info(settings.nats_stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(stream_config(settings))
        logger.info(
            "relay: created stream %s for %s", settings.nats_stream, ", ".join(subjects(settings))
        )
        return
    faults = differences(info.config, settings)
    if faults:
        raise CannotRelay(
            f"stream {settings.nats_stream} cannot hold the relay's guarantees: {'; '.join(faults)}"
        )


@dataclass
class Progress:
    """Where the relay stands: the last change the stream holds, and its sequence."""

    position: Position
    sequence: int
    # The furthest change this process has sent, acknowledged or not: a
    # duplicate of a change past it was stored by another publisher.
    furthest: Position = BEGINNING


async def resume_point(
    js: JetStreamContext, db: Database, settings: Settings, feed: str
) -> Progress:
    """The stream's last message's place in the feed; an empty stream starts the feed
    from the oldest change it keeps."""
    state = (await js.stream_info(settings.nats_stream)).state
    if state.last_seq == 0:
        if settings.relay_groups:
            start = await feed_queries.all_purged_position(db)
        else:
            start = await queries.purged_position(db)
        if start != BEGINNING:
            logger.warning(
                "relay: the stream is empty and the feed was purged up to %s: users or groups "
                "whose last change was purged are not in the stream",
                cursor_of(start, feed),
            )
        return Progress(start, 0)
    try:
        last = await js.get_msg(settings.nats_stream, seq=state.last_seq)
    except nats.js.errors.NotFoundError:
        raise CannotRelay(
            f"stream {settings.nats_stream}: its last message ({state.last_seq}) was deleted "
            "or purged, so where the feed stands in it is unknown"
        ) from None
    cursor = (last.headers or {}).get("ce-id", "")
    try:
        position, made_by = position_of(cursor, "ce-id")
    except ProblemError:
        raise CannotRelay(
            f"stream {settings.nats_stream}: its last message ({state.last_seq}) has no "
            "ce-id cursor of the change feed"
        ) from None
    if made_by is not None and made_by != feed:
        raise CannotRelay(
            f"stream {settings.nats_stream} holds the changes of another database "
            f"(its cursors are {made_by}'s, this database's feed is {feed})"
        )
    return Progress(position, state.last_seq)


class Purger:
    """Takes deleted groups' members' messages out of the stream (RELAY_GROUPS=1).

    Each message goes by its sequence: one purge by subject would take them
    all in a request, but NATS 2.9 then moves every consumer whose filter
    covers the subject (`memberships.>`, `>`) past each message it has not
    yet delivered, of any subject (seen on 2.9.10, not on 2.14.6;
    nats-server #5075 and #8572 fixed such cases in 2024 and 2026). A message
    deleted by its sequence is skipped by consumers, and nothing else. It is
    deleted without erasing its bytes, as a message its subject's next one
    replaced is: erasing took 4.3 ms a message, 43 s for a group of 10,000.
    """

    def __init__(self, nc: NATS, settings: Settings) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._stream = settings.nats_stream
        self._purged: set[str] = set()  # groups this process purged: not purged again

    async def deleted_before(self, last: int) -> None:
        """Purge the members of every group whose delete is among the stream's last
        (IN_FLIGHT + 1) * PAGE messages, up to the sequence `last`: those a relay
        may have stored without purging after them (settle() purges a page's
        before the next page goes out). A deleted group's message is the last
        of its subject, so it is still there."""
        first = max(1, last - (IN_FLIGHT + 1) * PAGE + 1)
        await self.groups(
            [
                (headers["ce-subject"], last)
                for sequence, headers in await self._listed(GROUPS, first)
                if sequence <= last and headers.get("ce-type") == "group.deleted"
            ]
        )

    async def groups(self, groups: list[tuple[str, int]]) -> None:
        """Purge each group's members' messages before the sequence given with it, so
        that the stream's last message, which the relay resumes after, always stays."""
        groups = [(group, below) for group, below in groups if group not in self._purged]
        for start in range(0, len(groups), AT_ONCE):
            some = groups[start : start + AT_ONCE]
            await asyncio.gather(*(self._group(*each) for each in some))
            metrics.RELAY_PURGES.inc(len(some))
            if len(self._purged) > PURGED_KEPT:
                self._purged.clear()
            self._purged.update(group for group, _ in some)

    async def _group(self, group: str, below: int) -> None:
        listed = await self._listed(MEMBERS_OF.format(group), 1)
        sequences = [sequence for sequence, _ in listed if sequence < below]
        for start in range(0, len(sequences), DELETES_AT_ONCE):
            await asyncio.gather(*map(self._delete, sequences[start : start + DELETES_AT_ONCE]))

    async def _listed(self, subject: str, first: int) -> list[tuple[int, dict[str, str]]]:
        """The sequence and headers of each message on `subject` from the sequence
        `first`, read by a consumer of this call's own."""
        name = f"relay-{uuid.uuid4().hex}"
        config = ConsumerConfig(
            name=name,
            filter_subject=subject,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=first,
            ack_policy=AckPolicy.NONE,
            headers_only=True,
            inactive_threshold=60.0,  # should this process stop before deleting it
        )
        info = await self._js.add_consumer(self._stream, config)
        listed: list[tuple[int, dict[str, str]]] = []
        try:
            if info.num_pending:
                reader = await self._js.pull_subscribe_bind(consumer=name, stream=self._stream)
                try:
                    while True:
                        messages = await reader.fetch(PAGE, timeout=ACK_SECONDS)
                        listed += [
                            (message.metadata.sequence.stream, dict(message.headers or {}))
                            for message in messages
                        ]
                        if messages[-1].metadata.num_pending == 0:
                            break
                finally:
                    await reader.unsubscribe()
        finally:
            await self._js.delete_consumer(self._stream, name)
        return listed

    async def _delete(self, sequence: int) -> None:
        """Delete one message, without erasing it (nats-py's delete_msg erases)."""
        body = msgspec.json.encode({"seq": sequence, "no_erase": True})
        reply = await self._nc.request(
            f"$JS.API.STREAM.MSG.DELETE.{self._stream}", body, timeout=ACK_SECONDS
        )
        error = _decode_reply(reply.data).error
        if error is not None and error.err_code != NO_MESSAGE:  # else gone already
            raise nats.js.errors.APIError(
                code=error.code, err_code=error.err_code, description=error.description
            )


class _Error(msgspec.Struct):
    code: int
    err_code: int = 0
    description: str = ""


class _Reply(msgspec.Struct):
    error: _Error | None = None


_decode_reply = msgspec.json.Decoder(_Reply).decode


def addressing(row: AnyChangeRow) -> tuple[str, str, str]:
    """A change's NATS subject, its `ce-type` and its `ce-subject`."""
    if isinstance(row, ChangeRow):
        return f"users.{row.id}", f"user.{row.type}", row.id
    if row.member is None:
        return f"groups.{row.id}", f"group.{row.type}", row.id
    return (
        f"memberships.{row.id}.{row.member}",
        f"membership.{row.type}",
        f"{row.id}/{row.member}",
    )


def change_of(row: AnyChangeRow, feed: str) -> Change | AnyChange:
    """A message's body. A user's change is as GET /users/changes shows it, whichever
    feed is relayed: RELAY_GROUPS changes nothing for the subscribers of users.>."""
    return to_change(row, feed) if isinstance(row, ChangeRow) else to_any_change(row, feed)


def is_group_delete(row: AnyChangeRow) -> bool:
    return not isinstance(row, ChangeRow) and row.member is None and row.type == "deleted"


def headers_of(
    row: AnyChangeRow,
    addressed: tuple[str, str, str],
    cursor: str,
    source: str,
    expected: int,
    previous: str | None,
) -> dict[str, str]:
    """A change's CloudEvents 1.0 headers (binary mode), and JetStream's fence and dedupe:
    stored only right after the message at sequence `expected`, whose cursor is
    `previous` when given. `addressed` is addressing(row)."""
    _, type, subject = addressed
    headers = {
        "ce-specversion": "1.0",
        "ce-id": cursor,
        "ce-type": type,
        "ce-source": source,
        "ce-subject": subject,
        "ce-time": row.at,
        "content-type": "application/json",
        "Nats-Msg-Id": cursor,
        # Stored only right after the message before it: a second relay, or a
        # publish left over from a lost connection, is refused, never reordered.
        "Nats-Expected-Last-Sequence": str(expected),
    }
    if previous is not None:
        # And that message must be this change's predecessor, not one another
        # relay stored under the same number: a delete takes changes out of
        # the feed, so two relays' pages after a cursor may differ.
        headers["Nats-Expected-Last-Msg-Id"] = previous
    return headers


class Page(NamedTuple):
    """Changes sent in one pipeline, and their acknowledgements to come."""

    rows: Sequence[AnyChangeRow]
    acks: list[asyncio.Future[PubAck]]
    # Progress.furthest as the page went out: what this process may have sent before.
    resent_to: Position


async def send(
    js: JetStreamContext,
    rows: Sequence[AnyChangeRow],
    after: int,
    previous: str | None,
    feed: str,
    source: str,
    furthest: Position,
) -> Page:
    """Publish `rows` without waiting, each fenced on the one before, the first on
    the stream sequence `after` (and the cursor `previous`, when given)."""
    acks = []
    for offset, row in enumerate(rows):
        change = change_of(row, feed)
        addressed = addressing(row)
        headers = headers_of(row, addressed, change.cursor, source, after + offset, previous)
        previous = change.cursor
        acks.append(await js.publish_async(addressed[0], _encoder.encode(change), headers=headers))
    return Page(rows, acks, furthest)


async def settle(page: Page, progress: Progress, purger: Purger) -> None:
    """Wait for a page's acknowledgements; move `progress` past each in order, and
    raise at the first that is missing or refused, or that another publisher stored.
    Then purge the members' messages of the groups it deleted: only once their
    deletes are stored, for every message of the group is stored by then."""
    try:
        async with asyncio.timeout(ACK_SECONDS):
            await asyncio.wait(page.acks)
    except TimeoutError:
        pass
    published = duplicates = 0
    deleted: list[tuple[str, int]] = []  # groups, and their deletes' sequences
    try:
        for row, future in zip(page.rows, page.acks, strict=True):
            if not future.done():
                raise TimeoutError(f"no acknowledgement within {ACK_SECONDS} s")
            if (exc := future.exception()) is not None:
                if isinstance(exc, nats.js.errors.APIError) and exc.err_code in FENCE_ERRORS:
                    raise Fenced(exc.description)
                raise exc
            ack = future.result()
            duplicates += bool(ack.duplicate)
            published += not ack.duplicate
            progress.position, progress.sequence = row.position, ack.seq
            if is_group_delete(row):
                deleted.append((row.id, ack.seq))
            if ack.duplicate and row.position > page.resent_to:
                # Never sent by this process: another relay stored it first. NATS
                # 2.9 answers such a duplicate, where 2.10 and later let it time
                # out, and a fence refuses a publish only once the two relays'
                # pages part; so one relay alone goes on publishing.
                raise Fenced(f"sequence {ack.seq} was stored by another publisher")
    finally:
        metrics.RELAY_PUBLISHED.inc(published)
        metrics.RELAY_DUPLICATES.inc(duplicates)
    # Should the relay stop before these are done, the next one's start does them
    # (Purger.deleted_before): a page counts as settled only once they are.
    await purger.groups(deleted)


def drop(pages: deque[Page]) -> None:
    """Forget what a failure left unacknowledged: the stream says what landed."""
    for page in pages:
        for future in page.acks:
            future.cancel()
            if future.done() and not future.cancelled():
                future.exception()  # seen, so not logged as never retrieved
    pages.clear()


async def follow(
    js: JetStreamContext,
    db: Database,
    watch: Watch,
    settings: Settings,
    progress: Progress,
    purger: Purger,
) -> None:
    """Publish every change after the stream's last one, then each as it comes.

    Up to IN_FLIGHT pages go out before the first is acknowledged: each
    message is fenced on the one before, so a page refused refuses every
    later one, and the relay reads where it stands from the stream again.
    """
    feed = await watch.identity()
    start = await resume_point(js, db, settings, feed)
    progress.position, progress.sequence = start.position, start.sequence
    logger.info(
        "relay: resuming after cursor %s at stream sequence %d",
        cursor_of(progress.position, feed), progress.sequence,
    )  # fmt: skip
    everything = settings.relay_groups
    if everything and progress.sequence:
        await purger.deleted_before(progress.sequence)
    sent = Progress(progress.position, progress.sequence)  # the next page starts after it
    pages: deque[Page] = deque()
    try:
        while True:
            # Into an empty stream the first message goes alone, and is
            # acknowledged before any other: two relays that start together
            # may read different starts, and only one of them may land.
            if not pages:  # all acknowledged: the stream's own numbers from here
                sent.position, sent.sequence = progress.position, progress.sequence
            first = sent.sequence == 0
            limit = 1 if first else PAGE
            rows: Sequence[AnyChangeRow] | None = await (
                watch.all_changes_after(sent.position, limit)
                if everything
                else watch.changes_after(sent.position, limit)
            )
            if rows is None:
                raise CannotRelay(
                    "the feed was purged past the stream's last change "
                    f"{cursor_of(sent.position, feed)} (changes are kept "
                    f"CHANGES_RETENTION={settings.changes_retention} s): the "
                    "stream misses changes; delete it for the relay to start it again"
                )
            if rows:
                # After a message acknowledged, its sequence names it; after one
                # in flight, its cursor is named too.
                previous = cursor_of(sent.position, feed) if pages else None
                pages.append(
                    await send(
                        js, rows, sent.sequence, previous, feed, settings.relay_source,
                        progress.furthest,
                    )
                )  # fmt: skip
                progress.furthest = max(progress.furthest, rows[-1].position)
                sent.position, sent.sequence = rows[-1].position, sent.sequence + len(rows)
            while pages and (
                first or not rows or len(pages) > IN_FLIGHT or all(a.done() for a in pages[0].acks)
            ):
                await settle(pages.popleft(), progress, purger)
            if not rows:
                await watch.until_after(sent.position, IDLE_SECONDS, everything=everything)
    finally:
        drop(pages)


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, Fenced):
        return "fenced"
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return "timeout"
    if isinstance(exc, nats.errors.Error):
        return "nats"
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError | PoolBusy):
        return "database"
    return "other"


async def keep_relaying(
    js: JetStreamContext,
    db: Database,
    watch: Watch,
    settings: Settings,
    progress: Progress,
    purger: Purger,
) -> None:
    """follow(), started again from the stream after each failure.

    A lost database (a restart, a failover) is the watch's to tell, in one
    line when lost and one when back; the relay waits for it to listen again.
    """
    while True:
        try:
            await follow(js, db, watch, settings, progress, purger)
        except CannotRelay:
            raise
        except Exception as exc:  # every failure is retried from what the stream holds
            kind = error_kind(exc)
            metrics.RELAY_ERRORS.labels(kind).inc()
            if kind == "fenced":
                logger.warning(
                    "relay: stream %s moved on under this relay (%s): another relay is "
                    "publishing; checking again in %.0f s",
                    settings.nats_stream, exc, STANDBY_SECONDS,
                )  # fmt: skip
                await asyncio.sleep(STANDBY_SECONDS)
                continue
            await asyncio.sleep(RETRY_SECONDS)
            if kind == "database" and not watch.listening.is_set():
                # The database is away: the watch has said so, and says when it is back.
                await watch.listening.wait()
            else:
                logger.warning("relay: %s error, resuming from the stream: %r", kind, exc)


async def measure_lag(db: Database, settings: Settings, progress: Progress) -> None:
    """The changes readable but not yet in the stream, and the age of the oldest."""
    behind = feed_queries.all_changes_behind if settings.relay_groups else queries.changes_behind
    while True:
        with contextlib.suppress(Exception):  # the relay logs the failures that matter
            count, seconds = await behind(db, progress.position, LAG_BOUND)
            metrics.RELAY_LAG_CHANGES.set(count)
            metrics.RELAY_LAG_SECONDS.set(seconds)
        await asyncio.sleep(LAG_EVERY)


def address(url: str) -> str:
    """NATS_URL's servers without their credentials, for log lines."""
    return ",".join(
        f"{parts.scheme}://{parts.hostname}:{parts.port or 4222}"
        for parts in (urlsplit(one.strip()) for one in url.split(","))
    )


async def connect(settings: Settings, closed: asyncio.Event, leaving: asyncio.Event) -> NATS:
    """NATS_URL's servers, reconnected to for about two minutes; `closed` is set once
    nats-py stops trying, and `leaving` is set by the relay before it closes."""
    servers = address(settings.nats_url)

    async def disconnected() -> None:
        if not leaving.is_set():  # the relay's own close says nothing more
            logger.warning("relay: disconnected from NATS at %s", servers)

    async def reconnected() -> None:
        logger.info("relay: reconnected to NATS at %s", servers)

    async def gone() -> None:
        closed.set()

    async def error(exc: Exception) -> None:
        logger.debug("relay: NATS client error: %r", exc)  # reconnects say the rest

    return await nats.connect(
        [url.strip() for url in settings.nats_url.split(",")],
        user_credentials=settings.nats_creds,
        name="users-relay",
        max_reconnect_attempts=RECONNECT_ATTEMPTS,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        closed_cb=gone,
        error_cb=error,
    )


async def run(settings: Settings) -> int:
    """python -m service relay: 0 once stopped by a signal, 1 once it gives up."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if settings.relay_metrics_port:
        start_http_server(settings.relay_metrics_port, registry=metrics.RELAY_REGISTRY)
    closed = asyncio.Event()
    leaving = asyncio.Event()
    try:
        # No floor of connections: asyncpg would log a traceback every second
        # while it restores one to a database away; the watch's line says it.
        pool = await open_pool(msgspec.structs.replace(settings, db_pool_min=0))
    except CannotStart as exc:
        logger.error("relay gives up: %s", exc)
        return 1
    db = Database(pool, settings.db_pool_timeout)
    watch = Watch(db, settings)
    nc: NATS | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        try:
            nc = await connect(settings, closed, leaving)
        except (OSError, nats.errors.Error) as exc:
            raise CannotRelay(
                f"NATS at {address(settings.nats_url)} cannot be reached: {exc!r}"
            ) from None
        js = nc.jetstream(publish_async_max_pending=(IN_FLIGHT + 1) * PAGE)
        await ensure_stream(js, settings)
        watch.start()
        progress = Progress(BEGINNING, 0)
        logger.info(
            "relay started: the feed into stream %s on %s, %s",
            settings.nats_stream, address(settings.nats_url), ", ".join(subjects(settings)),
        )  # fmt: skip
        tasks = [
            asyncio.create_task(
                keep_relaying(js, db, watch, settings, progress, Purger(nc, settings))
            ),
            asyncio.create_task(measure_lag(db, settings, progress)),
        ]
        stop = asyncio.create_task(stopping.wait())
        lost = asyncio.create_task(closed.wait())
        await asyncio.wait([tasks[0], stop, lost], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        lost.cancel()
        if tasks[0].done():
            tasks[0].result()  # raises the CannotRelay that ended it
        if closed.is_set() and not stopping.is_set():
            raise CannotRelay(f"NATS at {address(settings.nats_url)} stayed unreachable")
        logger.info("relay stopped")
        return 0
    except CannotRelay as exc:
        metrics.RELAY_ERRORS.labels("gave_up").inc()
        logger.error("relay gives up: %s", exc)
        return 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await watch.stop()
        if nc is not None and not nc.is_closed:
            leaving.set()
            with contextlib.suppress(Exception):
                await nc.close()
        await close_pool(pool)
