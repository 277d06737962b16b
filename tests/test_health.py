"""Liveness and readiness probes."""

from __future__ import annotations

import asyncpg
import httpx
from msgspec.structs import replace

from service.migration import migrate
from service.settings import Settings
from tests.conftest import assert_problem, client_of, connect


async def test_livez_answers_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/livez")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_answers_200_when_the_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_503_when_no_connection_answers_within_a_second(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    # Hold every connection of the pool, so the probe cannot get one.
    held = [await db.acquire() for _ in range(db.get_max_size())]
    try:
        response = await client.get("/readyz")
    finally:
        for conn in held:
            await db.release(conn)
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "1"


async def test_livez_answers_even_when_the_database_does_not(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    held = [await db.acquire() for _ in range(db.get_max_size())]
    try:
        assert (await client.get("/livez")).status_code == 200
    finally:
        for conn in held:
            await db.release(conn)


async def test_readyz_is_503_saying_to_migrate_when_the_users_table_is_gone(
    settings: Settings, fresh_database_url: str
) -> None:
    await migrate(fresh_database_url)
    async with client_of(replace(settings, database_url=fresh_database_url)) as client:
        assert (await client.get("/readyz")).status_code == 200
        conn = await connect(fresh_database_url)
        try:
            await conn.execute("DROP TABLE users CASCADE")  # memberships refer to it
        finally:
            await conn.close()
        response = await client.get("/readyz")
    problem = assert_problem(response, 503)
    assert problem["detail"] == "The database has no users table: run `python -m service migrate`"
