"""The database: the pool and its bounded waits."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from starlette.requests import Request

from service.settings import Settings

logger = logging.getLogger("service")
T = TypeVar("T")

POOL_CLOSE_SECONDS = 5.0
# Waits between attempts to reach the database at start: doubling from the
# first, capped, and summing to DB_START_TIMEOUT.
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 5.0

# Failures of the connection rather than of the statement: a database that is
# down, starting, stopping or full may answer later, so these are worth a
# retry (a 503, or another attempt at start). A wrong password or database
# name is not among them.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    # asyncpg's protocol can fall out of step when the server ends a session
    # between two messages (MagicStack/asyncpg#1069); the connection is gone.
    # Its subclass TargetServerAttributeNotMatched: no host of a multi-host
    # DATABASE_URL accepts writes yet, as while a standby is being promoted.
    asyncpg.InternalClientError,
    # A server that refuses writes: a standby, or a demoted primary still
    # reached at the old address. Another server takes the writes shortly.
    asyncpg.ReadOnlySQLTransactionError,
)


class CannotStart(Exception):
    """The service cannot start on this database; the message says why, in one line."""


class DatabaseUnreachable(CannotStart):
    """The database did not answer within DB_START_TIMEOUT at start."""


class DatabaseRefused(CannotStart):
    """The database answered, and refused the service: a setting to fix, not a wait."""


class SchemaMissing(CannotStart):
    """The database has no users table: `python -m service migrate` was never run on it."""


# Whether the table the queries name resolves, by the same search_path: one
# catalog lookup, cheap enough for the readiness probe too.
HAS_USERS_TABLE = "SELECT to_regclass('users') IS NOT NULL"
MIGRATE_HINT = "has no users table: run `python -m service migrate`"


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """The pool, once the database answers: retried for about DB_START_TIMEOUT seconds.

    A platform may start the service before its database, or restart the
    database under it; a wait with a clear line beats a crash loop. A database
    without the schema is refused: every request would fail on it.
    """
    url = settings.database_url or ""
    return await reach(lambda: migrated_pool(settings), url, settings.db_start_timeout)


async def migrated_pool(settings: Settings) -> asyncpg.Pool:
    """A new pool, on a database that has the schema."""
    pool = await create_pool(settings)
    try:
        migrated = await pool.fetchval(HAS_USERS_TABLE)
    except BaseException:
        pool.terminate()
        raise
    if not migrated:
        await close_pool(pool)
        address = database_address(settings.database_url or "")
        raise SchemaMissing(f"database at {address} {MIGRATE_HINT}")
    return pool


async def reach(connect: Callable[[], Awaitable[T]], url: str, start_timeout: float) -> T:
    """`connect()`, tried again while the database at `url` is unreachable, for
    about `start_timeout` seconds, with a warning before each new attempt.

    Raises DatabaseRefused at once when the database refuses the service, and
    DatabaseUnreachable when the time is up.
    """
    address = database_address(url)
    delays = retry_delays(start_timeout)
    attempts = len(delays) + 1
    attempt = 0
    while True:
        attempt += 1
        try:
            return await connect()
        except Exception as exc:
            cause = refusal(exc, url)
            if cause is not None:
                raise DatabaseRefused(
                    f"database at {address} refused the service: {cause} (check DATABASE_URL)"
                ) from exc
            if not isinstance(exc, UNAVAILABLE):
                raise
            if attempt == attempts:
                raise DatabaseUnreachable(
                    f"database not reachable at {address} ({describe(exc)}); "
                    f"giving up after {attempts} attempts in {start_timeout:g} s"
                ) from exc
            logger.warning(
                "database not reachable at %s (%s); retrying in %.1f s (attempt %d of %d)",
                address, describe(exc), delays[attempt - 1], attempt, attempts,
            )  # fmt: skip
        await asyncio.sleep(delays[attempt - 1])


def refusal(exc: Exception, url: str) -> str | None:
    """Why the database refused the service for good, or None if it may answer later.

    Waiting does not change a refused TLS upgrade, an untrusted certificate, a
    wrong password, a missing role or a missing database: those fail at once.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate failed verification ({exc})"
    # asyncpg's error for a server with TLS off, where sslmode requires it; a
    # plain ConnectionError otherwise means the connection broke, which may not last.
    if type(exc) is ConnectionError and "rejected SSL upgrade" in str(exc):
        modes = parse_qs(urlsplit(url).query).get("sslmode", ["require"])
        return f"it does not accept TLS, which sslmode={modes[0]} asks for"
    if isinstance(exc, UNAVAILABLE):
        return None
    # The server's own words: 'password authentication failed for user "app"',
    # 'role "app" does not exist', 'database "app" does not exist', ...
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return str(exc)
    return None


async def create_pool(
    settings: Settings, url: str | None = None, *, min_size: int | None = None
) -> asyncpg.Pool:
    """A pool on DATABASE_URL, or on `url` (a replica), sized by the settings."""
    pool = await asyncpg.create_pool(
        url or settings.database_url,
        min_size=settings.db_pool_min if min_size is None else min_size,
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


def retry_delays(total: float) -> list[float]:
    """Waits that double from FIRST_RETRY_SECONDS up to MAX_RETRY_SECONDS and sum to `total`."""
    delays: list[float] = []
    delay, remaining = FIRST_RETRY_SECONDS, total
    while remaining > 0:
        delays.append(min(delay, remaining))
        remaining -= delays[-1]
        delay = min(delay * 2, MAX_RETRY_SECONDS)
    return delays


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def database_address(url: str) -> str:
    """The host:port of a database URL, for log lines and metrics: never its user
    or password. Several hosts, as libpq allows, are listed: "h1:5432,h2:5433"."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    hosts = parts.netloc.rpartition("@")[2] or query.get("host", ["localhost"])[0]
    ports = query["port"][0].split(",") if "port" in query else []
    addresses = []
    for index, host in enumerate(hosts.split(",")):
        if ports:
            addresses.append(f"{host}:{ports[min(index, len(ports) - 1)]}")
        else:
            addresses.append(host if re.search(r":\d+$", host) else f"{host}:5432")
    return ",".join(addresses)


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
        # Not wait_for, which on Python 3.11 loses a cancel that lands as the close ends.
        async with asyncio.timeout(grace):
            await pool.close()
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
        except asyncpg.InternalClientError:
            # A connection whose protocol lost its place must not go back to
            # the pool: releasing skips the reset that would notice.
            conn.terminate()
            raise
        except asyncpg.ReadOnlySQLTransactionError:
            # Connected to a server that no longer takes writes (a demoted
            # primary): this connection, and the pool's others, which are
            # likely on the same server, are replaced by new ones, which
            # DATABASE_URL's hosts and target_session_attrs lead to the primary.
            conn.terminate()
            await self.pool.expire_connections()
            raise
        finally:
            await self.pool.release(conn)

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: object) -> object:
        async with self.connection() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: object) -> str:
        async with self.connection() as conn:
            return await conn.execute(query, *args)


def pool_of(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def db_of(request: Request) -> Database:
    db: Database = request.app.state.db
    return db
