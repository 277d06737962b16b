"""The floor: each scenario's work as a bare ASGI app, with no framework.

The service's own queries, coalescing and answers (service.queries,
service.lookups, users.look_up, changes.to_change) over its own pool, and
the same msgspec Structs encoded; but no router (a
string comparison picks the work), no Request or Response objects, and none
of the service's features: no auth, ETags, Link headers, idempotency,
metrics, request IDs, logs or problem details. What the service measures
beyond it is what its framework and features cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from service import queries
from service.changes import cursor_of, position_of, to_change
from service.database import Database, close_pool, open_pool
from service.lookups import Creates, Reads
from service.problems import ProblemError
from service.queries import Filters
from service.schemas import (
    Changes,
    Handles,
    NewUser,
    SearchText,
    User,
    email_key,
    is_email,
)
from service.settings import Settings
from service.users import look_up

# ASGI's types, spelt out here: the floor serves requests with no framework's code.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Answer = tuple[int, bytes]

USER_PREFIX = "/users/"
JSON_HEADER = (b"content-type", b"application/json")
NOT_FOUND: Answer = (404, b'{"title":"Not Found"}')
CONFLICT: Answer = (409, b'{"title":"Conflict"}')
BAD_REQUEST: Answer = (400, b'{"title":"Bad Request"}')

encode = msgspec.json.Encoder().encode
decode_new_user = msgspec.json.Decoder(NewUser).decode
decode_handles = msgspec.json.Decoder(Handles).decode


class Floor:
    """GET /users/{email}, GET /users (first, after= and q= pages), GET /users/changes,
    POST /users and POST /users/lookup, as the service does them underneath."""

    def __init__(self) -> None:
        self.settings = Settings.from_env()
        self.reads: Reads | None = None
        self.creates: Creates | None = None
        self.db: Database | None = None
        self.feed = ""  # the feed's identity, which its cursors carry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        try:
            status, body = await self.answer(scope, receive)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError, ProblemError):
            status, body = BAD_REQUEST
        headers = [JSON_HEADER, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, scope: Scope, receive: Receive) -> Answer:
        method, path = scope["method"], scope["path"]
        if method == "GET" and path.startswith(USER_PREFIX) and path != "/users/changes":
            return await self.get_user(path[len(USER_PREFIX) :])
        params = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        if method == "GET" and path == "/users":
            return await self.list_users(params)
        if method == "GET" and path == "/users/changes":
            return await self.list_changes(params)
        if method == "POST" and path == "/users":
            return await self.create_user(await read_body(receive))
        if method == "POST" and path == "/users/lookup":
            return await self.lookup_users(await read_body(receive))
        return NOT_FOUND

    async def get_user(self, email: str) -> Answer:
        assert self.reads is not None
        # As the service reads its {email:path}: one trailing "/" belongs to the path.
        email = email.removesuffix("/")
        if not is_email(email):
            return NOT_FOUND
        stored = await self.reads.user.get(email_key(email))
        return NOT_FOUND if stored is None else (200, encode(stored.user))

    async def list_users(self, params: dict[str, str]) -> Answer:
        assert self.reads is not None
        limit = int(params.get("limit", "50"))
        after = params.get("after")
        if after is not None:
            if not is_email(after):
                return BAD_REQUEST
            after = email_key(after)
        q = params.get("q")
        users: list[User]
        if q is not None:
            filters = Filters(q=email_key(msgspec.convert(q, SearchText)), created_after=None,
                              created_before=None)  # fmt: skip
            search = partial(queries.search_users, filters=filters, after=after, limit=limit,
                             offset=0)  # fmt: skip
            users = await self.reads.in_snapshot(search)
        elif after is None:
            users = await self.reads.page_at.get((limit, 0))
        else:
            users = await self.reads.page_after.get((after, limit, 0))
        return 200, encode(users)

    async def list_changes(self, params: dict[str, str]) -> Answer:
        assert self.db is not None
        position, _ = position_of(params["after"], "after")
        rows = await queries.changes_after(self.db, position, int(params.get("limit", "100")))
        if rows is None:
            return NOT_FOUND
        feed = self.feed
        changes = [to_change(row, feed) for row in rows]
        next = changes[-1].cursor if changes else cursor_of(position, feed)
        return 200, encode(Changes(changes=changes, next=next))

    async def create_user(self, body: bytes) -> Answer:
        assert self.creates is not None
        stored = await self.creates.create(decode_new_user(body))
        return CONFLICT if stored is None else (201, encode(stored.user))

    async def lookup_users(self, body: bytes) -> Answer:
        assert self.reads is not None
        return 200, encode(await look_up(self.reads, decode_handles(body)))

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                pool = await open_pool(self.settings)
                self.db = Database(pool, self.settings.db_pool_timeout)
                self.feed = await queries.feed_identity(self.db)
                self.reads = Reads(self.db)
                self.creates = Creates(self.db)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.db is not None:
                    await close_pool(self.db.pool)
                await send({"type": "lifespan.shutdown.complete"})
                return


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def create_app() -> Floor:
    return Floor()
