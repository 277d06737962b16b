"""Long polls of the change feed: one listening connection and one poll per worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import asyncpg

from service import feed_queries, queries
from service.database import Database
from service.feed_queries import AnyChangeRow
from service.queries import ChangeRow, Position
from service.settings import Settings

logger = logging.getLogger("service")

# The channels schema.sql's triggers notify when a statement writes changes: of
# users, and of groups and memberships (which only the feed of everything reads).
CHANNEL = "user_changes"
GROUP_CHANNEL = "group_changes"
RECONNECT_SECONDS = 1.0
FIRST_RECHECK_SECONDS = 0.01

# Every worker's Watch, for the server to wake the waiting consumers when a
# graceful stop begins, so that none holds the stop up.
running: set[Watch] = set()


class Read(NamedTuple):
    """A page of the feed that consumers asked for at the same time."""

    position: Position
    limit: int
    everything: bool


class Watch:
    """Wakes the long polls waiting after a position once the feed has passed it.

    Waiting costs a consumer no connection: a notification from the writes'
    trigger, or the poll, makes one query of the feed's end for all of them,
    and only those it has passed read their page again. A consumer of
    `everything` (GET /changes) waits for the end of users' and groups'
    changes together, one of the users' feed for users' changes alone.
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings
        self._waiters: dict[asyncio.Future[None], tuple[Position, bool]] = {}
        self._changed = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._reads: dict[Read, asyncio.Future[Sequence[AnyChangeRow] | None]] = {}
        self._identity: str | None = None
        self._notified = False  # of users' changes, since the end was last read
        self._notified_of_groups = False
        self.listening = asyncio.Event()  # set while notifications can come
        self._lost = False  # the listening connection failed, and has not come back
        self.max_consumers = settings.feed_max_consumers
        self.consumers = 0  # long polls and streams held now

    def admit(self) -> bool:
        """Whether one more consumer may wait here: if so it is counted, until it leaves."""
        if self.consumers >= self.max_consumers:
            return False
        self.consumers += 1
        return True

    def leave(self) -> None:
        self.consumers -= 1

    async def identity(self) -> str:
        """queries.feed_identity, read once, and again whenever the listener reconnects."""
        if self._identity is None:
            self._identity = await queries.feed_identity(self._db)
        return self._identity

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._listen())]
        running.add(self)

    async def stop(self) -> None:
        self.release()
        running.discard(self)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def release(self) -> None:
        """Answer every long poll now, and those to come at once: the service is stopping."""
        self._stopping = True
        for future in self._waiters:
            if not future.done():
                future.set_result(None)

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def until_after(
        self, position: Position, seconds: float, *, everything: bool = False
    ) -> None:
        """Return once the feed (of `everything`, or of users) may hold a change after
        `position`, or after `seconds`."""
        if self._stopping:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters[future] = (position, everything)
        self._changed.set()  # the end may have moved since the caller's read
        try:
            await asyncio.wait({future}, timeout=seconds)
        finally:
            del self._waiters[future]

    async def changes_after(self, position: Position, limit: int) -> list[ChangeRow] | None:
        """queries.changes_after, read once for all the consumers that ask at the same time.

        A change wakes every consumer at the end of the feed together, each
        asking for the page after the same position: one query answers them all.
        """
        rows = await self._shared(Read(position, limit, everything=False))
        return rows  # type: ignore[return-value]  # the users' feed's read: theirs alone

    async def all_changes_after(
        self, position: Position, limit: int
    ) -> Sequence[AnyChangeRow] | None:
        """feed_queries.all_changes_after, shared as changes_after is."""
        return await self._shared(Read(position, limit, everything=True))

    async def _shared(self, key: Read) -> Sequence[AnyChangeRow] | None:
        reading = self._reads.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._page(key))
            self._reads[key] = reading
            reading.add_done_callback(partial(self._read, key))
        # One consumer gone (cancelled) does not cancel the others' read.
        return await asyncio.shield(reading)

    async def _page(self, key: Read) -> Sequence[AnyChangeRow] | None:
        if key.everything:
            return await feed_queries.all_changes_after(self._db, key.position, key.limit)
        return await queries.changes_after(self._db, key.position, key.limit)

    def _read(self, key: Read, reading: asyncio.Future[Sequence[AnyChangeRow] | None]) -> None:
        del self._reads[key]
        if not reading.cancelled():
            reading.exception()  # seen, should every consumer of a failed read be gone

    async def _poll(self) -> None:
        poll = self._settings.feed_poll_seconds
        recheck = poll
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns when
            # stop()'s cancel lands just as a change sets the event (CPython
            # gh-86296), and this loop would then outlive stop() forever.
            with contextlib.suppress(TimeoutError):
                # FEED_POLL_SECONDS: how often the feed's readable end is read while
                # consumers wait, what a change waits at most to wake them when no
                # notification comes (behind a pooler in transaction mode, where
                # LISTEN cannot work).
                async with asyncio.timeout(recheck):
                    await self._changed.wait()
            self._changed.clear()
            notified, self._notified = self._notified, False
            notified_of_groups, self._notified_of_groups = self._notified_of_groups, False
            if not self._waiters:
                recheck = poll
                continue
            kinds = {everything for _, everything in self._waiters.values()}
            try:
                # Each end read only for those who wait for it.
                end = await queries.readable_end(self._db) if False in kinds else None
                end_of_all = (
                    await feed_queries.all_readable_end(self._db) if True in kinds else None
                )
            except Exception as exc:  # a failover's errors among them: the loop must go on
                if not self._lost:  # else the listener's line has said it
                    logger.warning("reading the change feed's end failed: %r", exc)
                continue
            behind = held = False
            for future, (position, everything) in self._waiters.items():
                passed = end_of_all if everything else end
                if passed is not None and passed > position:
                    if not future.done():
                        future.set_result(None)
                else:
                    behind = True
                    held = held or notified or (everything and notified_of_groups)
            # A change announced but held back by an older transaction still
            # running (anywhere on the server) is looked for again soon, then
            # less and less often, rather than only at the next poll.
            if held:
                recheck = FIRST_RECHECK_SECONDS
            elif recheck < poll and behind:
                recheck = min(recheck * 2, poll)
            else:
                recheck = poll

    def _notify(self) -> None:
        self._notified = True
        self._changed.set()

    def _notify_of_groups(self) -> None:
        self._notified_of_groups = True
        self._changed.set()

    async def _listen(self) -> None:
        """LISTEN on a connection of its own, opened again whenever it is lost: one
        line when the database is lost (a restart, a failover), one when it is back."""
        while True:
            cause = "the server closed the connection"
            try:
                await self._listen_once()
            except Exception as exc:  # whatever ended it, listen again
                cause = repr(exc)
            if not self._lost:
                logger.warning(
                    "lost the database: listening for changes failed (%s); trying again "
                    "every %.0f s",
                    cause, RECONNECT_SECONDS,
                )  # fmt: skip
                self._lost = True
            self._changed.set()  # a notification may have been missed meanwhile
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen_once(self) -> None:
        """Until the connection is lost."""
        conn = await asyncpg.connect(
            self._settings.database_url,
            timeout=self._settings.db_command_timeout,
            statement_cache_size=0,
            server_settings={"application_name": "users-service-listener"},
        )
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _: lost.set())
            await conn.add_listener(CHANNEL, lambda *_: self._notify())
            await conn.add_listener(GROUP_CHANNEL, lambda *_: self._notify_of_groups())
            self.listening.set()
            # A reconnection may have reached another server (a failover, a restore).
            self._identity = await queries.feed_identity(conn)
            if self._lost:
                logger.info("the database is back: listening for changes again")
                self._lost = False
            await lost.wait()
        finally:
            self.listening.clear()
            conn.terminate()
