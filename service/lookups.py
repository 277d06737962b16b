"""Lookups by email that arrive together, answered by one query."""

from __future__ import annotations

import asyncio

from service import queries
from service.schemas import User, email_key

# Keeps one query's parameter array and result small next to its round trip.
MAX_BATCH = 500


class UserLookups:
    """Coalesces the lookups made in one event-loop turn into one query.

    Under load uvicorn starts many requests per turn of the loop. Instead of a
    round trip each, they wait together for one `lower(email) = ANY($1)`
    query, and each gets its own user (or None) back. A lookup never waits for
    a query that started before it, so a read after a write sees the write.
    """

    def __init__(self, db: queries.Executor) -> None:
        self._db = db
        self._waiting: dict[str, list[asyncio.Future[User | None]]] = {}
        self._queries: set[asyncio.Task[None]] = set()

    async def find(self, email: str) -> User | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[User | None] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.setdefault(email_key(email), []).append(future)
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, {}
        keys = list(waiting)
        for start in range(0, len(keys), MAX_BATCH):
            batch = {key: waiting[key] for key in keys[start : start + MAX_BATCH]}
            task = asyncio.ensure_future(self._answer(batch))
            # Held until done: the loop keeps only weak references to tasks.
            self._queries.add(task)
            task.add_done_callback(self._queries.discard)

    async def _answer(self, batch: dict[str, list[asyncio.Future[User | None]]]) -> None:
        try:
            users = await queries.find_users_by_keys(self._db, list(batch))
        except (Exception, asyncio.CancelledError) as exc:
            # Every request waiting on this query fails with it, none hangs.
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        found = {email_key(user.email): user for user in users}
        for key, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(key))
