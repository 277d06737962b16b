"""Calls that arrive together, answered by one query."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Generic, TypeVar
from uuid import UUID

from asyncpg.pool import PoolConnectionProxy

from service import group_queries, queries
from service.database import Database
from service.group_queries import Membership
from service.queries import NewRow, UserKey
from service.replicas import Replicas
from service.schemas import NewUser, Stored, User

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Keeps one query's parameter arrays and result small next to its round trip.
MAX_BATCH = 500
# after= pages a query: PostgreSQL runs one query's pages one after another in
# one backend, so a loop turn's pages go out as several queries on as many
# connections, and run side by side. Deep pages of 50 at wrk -c64, beside one
# query a turn (6 interleaved rounds): 6,089 against 4,650 req/s, p99 20.3
# against 22.2 ms; 24 a query, 5,323; at -c1 and -c8, no difference.
PAGES_PER_QUERY = 32


class Batcher(Generic[K, V]):
    """Coalesces the calls made in one event-loop turn into one query.

    Under load uvicorn starts many requests per turn of the loop. Instead of a
    round trip each, they wait together for one query over up to `batch`
    distinct keys (`answer` returns a value per key, in order), and each
    caller gets its own value back; callers asking for the same key share it.
    A call never joins a query already under way, so a read after a write
    sees the write. With `weight`, a key counts as that many towards `batch`
    (a key of many handles), and one heavier than `batch` has a query alone.
    """

    def __init__(
        self,
        answer: Callable[[list[K]], Awaitable[list[V]]],
        batch: int = MAX_BATCH,
        weight: Callable[[K], int] | None = None,
    ) -> None:
        self._answer = answer
        self._batch = batch
        self._weight = weight
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        self._queries: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.setdefault(key, []).append(future)
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, {}
        if self._weight is None:
            keys = list(waiting)
            for start in range(0, len(keys), self._batch):
                self._start({key: waiting[key] for key in keys[start : start + self._batch]})
            return
        batch: dict[K, list[asyncio.Future[V]]] = {}
        size = 0
        for key, futures in waiting.items():
            weight = self._weight(key)
            if batch and size + weight > self._batch:
                self._start(batch)
                batch, size = {}, 0
            batch[key] = futures
            size += weight
        if batch:
            self._start(batch)

    def _start(self, batch: dict[K, list[asyncio.Future[V]]]) -> None:
        task = asyncio.ensure_future(self._run(batch))
        # Held until done: the loop keeps only weak references to tasks.
        self._queries.add(task)
        task.add_done_callback(self._queries.discard)

    async def _run(self, batch: dict[K, list[asyncio.Future[V]]]) -> None:
        try:
            values = await self._answer(list(batch))
            if len(values) != len(batch):
                raise RuntimeError(f"{len(values)} answers for {len(batch)} keys")
        except Exception as exc:
            # Every caller waiting on this query fails with it; none hangs.
            self._fail(batch, exc)
            return
        except asyncio.CancelledError:
            # The service is stopping: its callers may retry elsewhere (503).
            self._fail(batch, ConnectionAbortedError("the service is stopping"))
            raise
        for futures, value in zip(batch.values(), values, strict=True):
            for future in futures:
                if not future.done():
                    future.set_result(value)

    @staticmethod
    def _fail(batch: dict[K, list[asyncio.Future[V]]], exc: BaseException) -> None:
        for futures in batch.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc)


class Reads:
    """The reads of the /users endpoints, coalesced, on the primary or on replicas, and
    the membership checks of /groups, coalesced, on the primary."""

    def __init__(self, db: queries.Executor, replicas: Replicas | None = None) -> None:
        # Where each query runs is settled here, once: without replicas a read
        # is the query on `db`, with no per-request choice.
        find_users: Callable[[list[str]], Awaitable[list[Stored | None]]]
        find_handles: Callable[[list[str]], Awaitable[dict[str, User]]]
        if replicas is None:
            find_users = partial(queries.find_users_by_keys, db)
            find_handles = partial(queries.find_users_by_handles, db)
            pages_after = partial(queries.list_pages_after, db)
            page_at = partial(queries.list_page_at, db)
            self.find_user: Callable[[UserKey], Awaitable[Stored | None]] = partial(
                queries.find_user, db
            )
        else:
            find_users = replicas.find_users_by_keys
            find_handles = replicas.find_users_by_handles
            pages_after = partial(replicas.read, queries.list_pages_after)
            page_at = partial(replicas.read, queries.list_page_at)
            self.find_user = replicas.find_user
        self._db = db
        self._replicas = replicas
        # By email_key: the identity of an email.
        self.user: Batcher[str, Stored | None] = Batcher(find_users)
        # By (email_key of after, limit, offset): an index range scan each,
        # cheap to run many of in one LATERAL query.
        self.page_after: Batcher[tuple[str, int, int], list[User]] = Batcher(
            pages_after, batch=PAGES_PER_QUERY
        )
        # By (limit, offset), one page a query: a deep offset walks the index
        # up to it, and pages sharing a query would each wait for the slowest.
        # Callers asking for the same page in one turn still share it.
        self.page_at: Batcher[tuple[int, int], list[User]] = Batcher(page_at, batch=1)
        # By the distinct keys of one POST /users/lookup (see users.handle_key),
        # each request whole in one statement: every request of a query gets
        # the same users by key, of which it reads its own.
        self.handles: Batcher[tuple[str, ...], dict[str, User]] = Batcher(
            partial(find_all_handles, find_handles), weight=len
        )
        # By (group id, user): the membership checks, on the primary, as every
        # read of groups is.
        self.membership: Batcher[tuple[UUID, UserKey], Membership] = Batcher(
            partial(group_queries.are_members, db)
        )

    async def in_snapshot(self, work: Callable[[PoolConnectionProxy], Awaitable[V]]) -> V:
        """`work` (a filtered page, a count) in a read-only snapshot of its own
        (queries.searching), on a replica in use, else on the primary."""

        async def run(db: queries.Executor, _: list[None]) -> list[V]:
            assert isinstance(db, Database)  # the app's primary, or a replica's
            async with queries.searching(db) as conn:
                return [await work(conn)]

        if self._replicas is None:
            [value] = await run(self._db, [None])
        else:
            [value] = await self._replicas.read(run, [None])
        return value


async def find_all_handles(
    find: Callable[[list[str]], Awaitable[dict[str, User]]], lookups: list[tuple[str, ...]]
) -> list[dict[str, User]]:
    """For each lookup, the users its keys name, by key, from one statement for all."""
    found = await find(list(dict.fromkeys(key for keys in lookups for key in keys)))
    return [found] * len(lookups)


class Creates:
    """Single creates that arrive together, inserted by one statement.

    Under load every create would otherwise be a statement and a commit of
    its own, each waiting for its WAL flush; one statement for all of a loop
    turn's creates flushes once. A CHECK violation would refuse them all, but
    the API's validation is the CHECK constraints' mirror and refuses first.
    """

    def __init__(self, db: queries.Executor) -> None:
        # NewRow is its own key, by identity: two creates of one email in a
        # turn must not share an answer, since one is a 201 and one a 409.
        self._batcher: Batcher[NewRow, Stored | None] = Batcher(partial(queries.insert_each, db))

    async def create(self, new: NewUser, actor: queries.Actor = queries.NOBODY) -> Stored | None:
        """The user created by `actor`, or None when the email is taken."""
        return await self._batcher.get(queries.new_row(new, actor))
