"""Liveness and readiness probes for the platform."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from service.database import HAS_USERS_TABLE, MIGRATE_HINT, UNAVAILABLE, pool_of
from service.problems import RETRY_AFTER_SECONDS, ProblemError

READY_TIMEOUT_SECONDS = 1.0
OK = b'{"status":"ok"}'


async def livez(request: Request) -> Response:
    """The process serves requests; the database is not consulted."""
    return Response(OK, media_type="application/json")


async def readyz(request: Request) -> Response:
    """The database answers within a second, and still has the users table."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            migrated = await pool_of(request).fetchval(HAS_USERS_TABLE)
    except UNAVAILABLE:
        raise ProblemError(
            503, "The database did not answer in time", headers={"Retry-After": RETRY_AFTER_SECONDS}
        ) from None
    if not migrated:
        raise ProblemError(503, f"The database {MIGRATE_HINT}")
    return Response(OK, media_type="application/json")
