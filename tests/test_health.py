"""Liveness and readiness probes."""

from __future__ import annotations

import asyncpg
import httpx

from tests.conftest import assert_problem


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
