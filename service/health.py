"""Liveness and readiness probes for the platform."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service.access_tokens import AccessTokens
from service.database import HAS_USERS_TABLE, MIGRATE_HINT, UNAVAILABLE, pool_of
from service.operations import Operation, Reply
from service.problems import RETRY_AFTER_SECONDS, ProblemError
from service.replicas import Replicas, State

READY_TIMEOUT_SECONDS = 1.0
OK = b'{"status":"ok"}'


class ReplicaHealth(msgspec.Struct):
    """A read replica as the lag monitor last found it."""

    address: str
    state: State
    # Seconds behind the primary; null when it did not answer.
    lag_seconds: float | None


class SigningKeysHealth(msgspec.Struct):
    """The identity provider's signing keys, with JWT_ISSUER set: until some are held,
    access tokens are answered 503 while static clients are served."""

    state: Literal["held", "missing"]
    keys: int
    # Seconds since the last fetch that succeeded; null before the first.
    age_seconds: float | None
    # Why the last fetch failed, while fetches fail; null otherwise.
    failure: str | None


# Not "Status": openapi-python-client then names the model and its field alike,
# and the generated code does not type-check.
class Health(msgspec.Struct, omit_defaults=True):
    """The body of the probes: OK, and with DATABASE_READ_URLS set, each replica's state;
    with JWT_ISSUER set, the identity provider's signing keys."""

    status: Literal["ok"]
    replicas: list[ReplicaHealth] | msgspec.UnsetType = msgspec.UNSET
    signing_keys: SigningKeysHealth | msgspec.UnsetType = msgspec.UNSET


_encoder = msgspec.json.Encoder()


LIVEZ = Operation(
    operation_id="livez",
    tag="operations",
    summary="Liveness probe",
    description="200 while the process serves requests; the database is not consulted.",
    replies={200: Reply(description="Alive.", body=Health)},
)


async def livez(request: Request) -> Response:
    """The process serves requests; the database is not consulted."""
    return Response(OK, media_type="application/json")


READYZ = Operation(
    operation_id="readyz",
    tag="operations",
    summary="Readiness probe",
    description=(
        "200 when the primary answers a trivial query within a second and has the users"
        " table. With read replicas, the body reports each replica's state; a replica"
        " never makes the service unready. With JWT_ISSUER, it reports the identity"
        " provider's signing keys, which never make it unready either: until they are"
        " held, access tokens get a 503 while static clients are served."
    ),
    replies={200: Reply(description="Ready.", body=Health)},
    problems={503: "The database did not answer in time."},
)


async def readyz(request: Request) -> Response:
    """The primary answers within a second, and still has the users table.

    Replicas are reported, never waited for: reads go to the primary when none
    qualifies, so a replica that is down or behind leaves the service ready. So are the
    identity provider's signing keys: another instance could not fetch them either, and
    static clients are served meanwhile.
    """
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            migrated = await pool_of(request).fetchval(HAS_USERS_TABLE)
    except UNAVAILABLE:
        raise ProblemError(
            503, "The database did not answer in time", headers={"Retry-After": RETRY_AFTER_SECONDS}
        ) from None
    if not migrated:
        raise ProblemError(503, f"The database {MIGRATE_HINT}")
    replicas: Replicas | None = request.app.state.replicas
    access_tokens: AccessTokens | None = request.app.state.access_tokens
    if replicas is None and access_tokens is None:
        return Response(OK, media_type="application/json")
    health = Health("ok")
    if replicas is not None:
        health.replicas = [
            ReplicaHealth(
                replica.address, replica.state, None if math.isinf(replica.lag) else replica.lag
            )
            for replica in replicas.replicas
        ]
    if access_tokens is not None:
        keys = access_tokens.keys
        health.signing_keys = SigningKeysHealth(
            "held" if keys.held else "missing",
            len(keys.keys),
            None if keys.fetched_at is None else round(time.monotonic() - keys.fetched_at, 1),
            keys.failure,
        )
    return Response(_encoder.encode(health), media_type="application/json")
