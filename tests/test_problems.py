"""Errors the caller did not cause: 5xx problems that reveal nothing inside."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from msgspec.structs import replace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.settings import Settings
from tests.conftest import assert_problem, client_of, connect


async def explode(request: Request) -> Response:
    raise RuntimeError("secret internal detail")


async def test_an_unexpected_error_is_a_500_problem_that_reveals_nothing(
    app: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    app.router.routes.append(Route("/explode", explode))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/explode")
    problem = assert_problem(response, 500)
    assert "secret" not in response.text
    assert "RuntimeError" not in response.text
    assert problem["detail"] == "An unexpected error occurred"
    assert len(response.headers["x-request-id"]) == 32
    [record] = [r for r in caplog.records if r.name.startswith("service") and r.exc_info]
    assert record.exc_info is not None
    assert "secret internal detail" in str(record.exc_info[1])


async def test_an_unexpected_database_error_is_a_500_problem(
    client: httpx.AsyncClient, db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    await db.execute("ALTER TABLE users RENAME TO users_away")
    try:
        response = await client.get("/users/ann@example.com")
    finally:
        await db.execute("ALTER TABLE users_away RENAME TO users")
    assert_problem(response, 500)
    assert "users" not in response.json()["detail"]
    assert any(record.exc_info for record in caplog.records if record.name == "service")


@pytest.fixture
async def impatient_client(
    settings: Settings, db: asyncpg.Pool
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(replace(settings, db_command_timeout=0.5)) as client:
        yield client


async def test_a_database_slower_than_the_command_timeout_is_a_503_with_retry_after(
    impatient_client: httpx.AsyncClient, database_url: str
) -> None:
    blocker = await connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            response = await impatient_client.get("/users/ann@example.com")
            elapsed = time.monotonic() - started
    finally:
        await blocker.close()
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "1"
    assert elapsed < 1.5
    assert (await impatient_client.get("/users/ann@example.com")).status_code == 404
