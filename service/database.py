"""The asyncpg pool and the schema: opening, closing, migrating."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg
from starlette.requests import Request

from service.settings import Settings

logger = logging.getLogger("service")

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
# Any fixed number, the same in every process: it names the migration lock.
MIGRATION_LOCK_KEY = 7_262_100_001
POOL_CLOSE_SECONDS = 5.0


async def open_pool(settings: Settings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        command_timeout=settings.db_command_timeout,
        # 0 for a pooler in transaction mode, where a prepared statement may
        # not be on the server connection the next query lands on.
        statement_cache_size=settings.db_statement_cache_size,
        server_settings={"application_name": "users-service"},
        reset=keep_session,
    )
    assert pool is not None
    return pool


async def keep_session(conn: asyncpg.Connection) -> None:
    """Skip the reset query a released connection would run by default.

    The service never changes session state (no SET, LISTEN, cursors or
    advisory locks on pooled connections), so asyncpg's RESET ALL, UNLISTEN
    and friends would only cost a round trip per request. asyncpg still rolls
    back any open transaction before this is called.
    """


async def close_pool(pool: asyncpg.Pool, grace: float = POOL_CLOSE_SECONDS) -> None:
    """Close gracefully within `grace` seconds, then cut whatever is still open."""
    try:
        await asyncio.wait_for(pool.close(), grace)
    except TimeoutError:
        logger.warning("pool did not close within %g s; terminating it", grace)
        pool.terminate()


def pool_of(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def migrate(database_url: str) -> None:
    """Apply schema.sql; concurrent runs wait for each other on an advisory lock.

    The lock is transaction-scoped, so it also holds through a pooler such as
    pgbouncer in transaction mode.
    """
    schema = SCHEMA_PATH.read_text(encoding="utf-8")
    conn = await asyncpg.connect(database_url, statement_cache_size=0)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(schema)
    finally:
        await conn.close()
