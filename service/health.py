"""Liveness and readiness probes for the platform."""

from __future__ import annotations

import asyncio
import math
from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

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


# Not "Status": openapi-python-client then names the model and its field alike,
# and the generated code does not type-check.
class Health(msgspec.Struct, omit_defaults=True):
    """The body of the probes: OK, and with DATABASE_READ_URLS set, each replica's state."""

    status: Literal["ok"]
    replicas: list[ReplicaHealth] | msgspec.UnsetType = msgspec.UNSET


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
        " never makes the service unready."
    ),
    replies={200: Reply(description="Ready.", body=Health)},
    problems={503: "The database did not answer in time."},
)


async def readyz(request: Request) -> Response:
    """The primary answers within a second, and still has the users table.

    Replicas are reported, never waited for: reads go to the primary when none
    qualifies, so a replica that is down or behind leaves the service ready.
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
    if replicas is None:
        return Response(OK, media_type="application/json")
    states = [
        ReplicaHealth(
            replica.address, replica.state, None if math.isinf(replica.lag) else replica.lag
        )
        for replica in replicas.replicas
    ]
    return Response(_encoder.encode(Health("ok", states)), media_type="application/json")
