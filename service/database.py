"""The database: the pool, its fair gate, and the schema migration."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy
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
        timeout=settings.db_command_timeout,  # to connect, too
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


class PoolBusy(Exception):
    """Every connection stayed in use for longer than DB_POOL_TIMEOUT."""


class Database:
    """The pool, one statement at a time, with a bounded wait for a connection.

    asyncpg's Pool.fetch and friends wait for a free connection without end;
    here a caller waits at most DB_POOL_TIMEOUT, then gets PoolBusy (a 503),
    so that overload sheds requests instead of queueing them without bound.
    """

    def __init__(self, pool: asyncpg.Pool, wait: float) -> None:
        self.pool = pool
        self.wait = wait

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PoolConnectionProxy]:
        try:
            conn = await self.pool.acquire(timeout=self.wait)
        except TimeoutError:
            raise PoolBusy from None
        try:
            yield conn
        finally:
            await self.pool.release(conn)

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(query, *args)

    async def execute(self, query: str, *args: object) -> str:
        async with self.connection() as conn:
            return await conn.execute(query, *args)


def pool_of(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def db_of(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


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
