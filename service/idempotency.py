"""Idempotency-Key on POSTs: each answer stored with its write, replayed to retries."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from uuid import UUID

from asyncpg.pool import PoolConnectionProxy
from starlette.requests import Request
from starlette.responses import Response

from service import auth, queries
from service.conditions import match_condition
from service.database import db_of
from service.problems import MEDIA_TYPE, ProblemError, problem_response
from service.queries import StoredAnswer
from service.schemas import MAX_IDEMPOTENCY_KEY_LENGTH

# The headers of an answer that a replay repeats; the rest are the request's own.
STORED_HEADERS = frozenset({"location", "etag", "content-type"})
REPLAYED = ("Idempotent-Replayed", "true")

Write = Callable[[PoolConnectionProxy], Awaitable[Response]]


def key_of(request: Request) -> str | None:
    """The Idempotency-Key, or None; repeated or not 1 to 255 printable ASCII characters, a 400."""
    keys = request.headers.getlist("idempotency-key")
    if not keys:
        return None
    if len(keys) > 1:
        # A key is one item, not a list: which line was meant cannot be known.
        raise ProblemError(400, "Idempotency-Key may be sent once")
    [key] = keys
    if not (1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH and key.isascii() and key.isprintable()):
        raise ProblemError(
            400,
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters",
        )
    return key


def caller_of(request: Request) -> str:
    """Whose keys these are: the digest of the caller's token, or "" when the service is open."""
    caller = auth.caller_of(request.scope)
    return "" if caller is None else caller.token_sha256


async def answer_once(
    request: Request, key: str, body: bytes | bytearray, write: Write
) -> Response:
    """The stored answer to this key, or `write`'s, stored in the write's own transaction.

    A ProblemError from `write` is an answer the database's state gave (a
    409), so it is stored too; any other error rolls back write and key alike.
    """
    caller, route = caller_of(request), request.scope["route"].path
    fingerprint = hashlib.sha256(body).digest()
    ttl: int = request.app.state.settings.idempotency_ttl
    async with db_of(request).connection() as conn, conn.transaction():
        if not await queries.lock_idempotency_key(conn, caller, key):
            raise ProblemError(
                409,
                "A request with this Idempotency-Key is still in progress; retry later",
                headers={"Retry-After": "1"},
            )
        stored = await queries.find_stored_answer(conn, caller, key)
        if stored is not None:
            if stored.route != route or stored.fingerprint not in (fingerprint, b""):
                raise ProblemError(
                    422, "This Idempotency-Key was used with another request body or path"
                )
            return replay(stored)
        emails = None
        try:
            response = await write(conn)
        except ProblemError as error:
            response, emails = problem_response(error), error.conflicts
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in response.raw_headers
            if name.decode("latin-1") in STORED_HEADERS
        ]
        answer = StoredAnswer(
            route, fingerprint, response.status_code, headers, bytes(response.body),
            user_id=shown_user(headers), emails=emails,
        )  # fmt: skip
        await queries.store_answer(conn, caller, key, answer, ttl)
        await queries.purge_expired_keys(conn)
    return response


def shown_user(headers: list[tuple[str, str]]) -> UUID | None:
    """The id of the user an answer shows, which its ETag names; None for none."""
    for name, value in headers:
        if name == "etag":
            named = match_condition(value)  # the (id, version) the tag names
            return named[0][0] if named else None
    return None


# What a stored answer becomes when the user it showed is deleted: a retry
# of its key learns what happened, and nothing of the user is kept.
FORGOTTEN = StoredAnswer(
    route="",
    fingerprint=b"",
    status=410,
    headers=[("content-type", MEDIA_TYPE)],
    body=bytes(
        problem_response(
            ProblemError(410, "The user this request created has since been deleted")
        ).body
    ),
)


# What a stored 409 becomes when a user with an email it names is deleted:
# the same refusal, naming no email.
UNNAMED = bytes(
    problem_response(
        ProblemError(
            409,
            "Emails repeated or already existed; nothing was inserted. The answer no longer "
            "names them: a user with one of them has since been deleted",
        )
    ).body
)


def replay(stored: StoredAnswer) -> Response:
    response = Response(stored.body, stored.status)
    # Response set a Content-Length of its own; the stored headers say the rest.
    response.raw_headers += [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in (*stored.headers, REPLAYED)
    ]
    return response
