"""The floor: the service's GET /users/{email} work as a bare ASGI app, with no framework."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import asyncpg
import msgspec

from service.schemas import Email, User, email_key

# ASGI's types, spelt out here so that not even a framework's type module is imported.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The service's lookup query, word for word; python -m bench checks that it still is.
FIND_USERS_BY_KEYS = """
SELECT public_id::text AS id, name, email, status, attributes,
    rfc3339(created_at) AS created_at, rfc3339(updated_at) AS updated_at, version
FROM users WHERE lower(email) = ANY($1::text[])
"""
# The service's bound on the keys of one query.
MAX_BATCH = 500
# The service's pool bounds (DB_POOL_MIN, DB_POOL_MAX defaults).
POOL_MIN = 1
POOL_MAX = 10
PREFIX = "/users/"

JSON_TYPE = (b"content-type", b"application/json")
NOT_FOUND_BODY = msgspec.json.encode(
    {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "No user has that email"}
)
NOT_FOUND_HEADERS = [
    (b"content-type", b"application/problem+json"),
    (b"content-length", str(len(NOT_FOUND_BODY)).encode()),
]

encoder = msgspec.json.Encoder()
decode_attributes = msgspec.json.Decoder(dict[str, str]).decode


async def keep_session(conn: asyncpg.Connection) -> None:
    """No reset query on release, as in the service, which never changes session state."""


class Lookups:
    """The lookups of one loop turn answered by one query, as the service coalesces them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.waiting: dict[str, list[asyncio.Future[User | None]]] = {}
        self.queries: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> User | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[User | None] = loop.create_future()
        if not self.waiting:
            loop.call_soon(self.flush)
        self.waiting.setdefault(key, []).append(future)
        return await future

    def flush(self) -> None:
        waiting, self.waiting = self.waiting, {}
        keys = list(waiting)
        for start in range(0, len(keys), MAX_BATCH):
            batch = {key: waiting[key] for key in keys[start : start + MAX_BATCH]}
            task = asyncio.ensure_future(self.run(batch))
            # Held until done: the loop keeps only weak references to tasks.
            self.queries.add(task)
            task.add_done_callback(self.queries.discard)

    async def run(self, batch: dict[str, list[asyncio.Future[User | None]]]) -> None:
        try:
            rows = await self.pool.fetch(FIND_USERS_BY_KEYS, list(batch))
        except Exception as exc:
            for futures in batch.values():
                for future in futures:
                    future.set_exception(exc)
            return
        found = {
            email_key(row["email"]): User(
                id=row["id"],
                name=row["name"],
                email=row["email"],
                status=row["status"],
                attributes=decode_attributes(row["attributes"]),
                created_at=row["created_at"],
                updated_at=row["updated_at"],
            )
            for row in rows
        }
        for key, futures in batch.items():
            for future in futures:
                future.set_result(found.get(key))


class Floor:
    """GET /users/{email}: validate the email, look it up coalesced, encode the User; else 404."""

    def __init__(self) -> None:
        self.lookups: Lookups | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        user = await self.find(scope)
        if user is None:
            await send({"type": "http.response.start", "status": 404, "headers": NOT_FOUND_HEADERS})
            await send({"type": "http.response.body", "body": NOT_FOUND_BODY})
            return
        body = encoder.encode(user)
        headers = [JSON_TYPE, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def find(self, scope: Scope) -> User | None:
        path: str = scope["path"]
        if scope["method"] != "GET" or not path.startswith(PREFIX) or self.lookups is None:
            return None
        # As the service reads its {email:path}: one trailing "/" belongs to the path.
        email = path[len(PREFIX) :].removesuffix("/")
        try:
            email = msgspec.convert(email, Email)
        except msgspec.ValidationError:
            return None
        return await self.lookups.get(email_key(email))

    async def lifespan(self, receive: Receive, send: Send) -> None:
        pool: asyncpg.Pool | None = None
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                pool = await asyncpg.create_pool(
                    os.environ["DATABASE_URL"],
                    min_size=POOL_MIN,
                    max_size=POOL_MAX,
                    reset=keep_session,
                )
                assert pool is not None
                self.lookups = Lookups(pool)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if pool is not None:
                    await pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> Floor:
    return Floor()
