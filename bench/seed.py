"""The run's databases: one per comparator on the same server, each created fresh and seeded."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO_ROOT = Path(__file__).resolve().parent.parent
TUTORIAL_SCHEMA = Path(__file__).resolve().parent / "tutorial" / "schema.sql"

# Each comparator gets its own database, so that the tutorial's table and the
# service's can both be called users and their SQL stays as written.
DATABASES = {
    "service": "bench_service",
    "tutorial": "bench_tutorial",
    "peer": "bench_peer",
}
# These take the service's schema.sql; the tutorial takes its own.
SERVICE_SCHEMA = ("service", "peer")
SEEDED = ("service", "tutorial", "peer")

DROP_DATABASE = 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
CREATE_DATABASE = 'CREATE DATABASE "{name}"'
# CASCADE: with the service's schema, the memberships that refer to users go
# too; the tutorial's has none.
TRUNCATE_USERS = "TRUNCATE users RESTART IDENTITY CASCADE"
ANALYZE_USERS = "VACUUM ANALYZE users"
SELECT_SERVER_VERSION = "SHOW server_version"
# The seeding's COPY is one statement, so one transaction: its changes are the oldest.
SELECT_FEED_START = """
SELECT xid::text, seq FROM user_changes ORDER BY xid, seq LIMIT 1
"""
SERVICE_COLUMNS = ("name", "email", "created_at")
TUTORIAL_COLUMNS = ("name", "email")


def seeded_email(index: int) -> str:
    """The email of seeded user number index, as the Lua scripts spell it."""
    return f"user{index:06d}@example.com"


def database_url(server_url: str, database: str) -> str:
    """server_url with its database name replaced by database."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + database))


def migrate_service(url: str) -> None:
    """Apply the service's schema the way it is deployed: python -m service migrate."""
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
        stdout=subprocess.DEVNULL,
    )


async def feed_start(url: str) -> dict[str, str]:
    """The seeding's transaction and its first change's seq, for the feed scenario's cursors."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(SELECT_FEED_START)
    finally:
        await conn.close()
    assert row is not None, "the seeded users made no changes"
    return {"feed_xid": row["xid"], "feed_first_seq": str(row["seq"])}


async def server_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        version: str = await conn.fetchval(SELECT_SERVER_VERSION)
    finally:
        await conn.close()
    return version


async def recreate_databases(server_url: str, names: Iterable[str]) -> None:
    """Drop (ending any session left by an earlier run) and create each database."""
    conn = await asyncpg.connect(server_url)
    try:
        for name in names:
            await conn.execute(DROP_DATABASE.format(name=name))
            await conn.execute(CREATE_DATABASE.format(name=name))
    finally:
        await conn.close()


async def copy_users(
    url: str, rows: Sequence[tuple[Any, ...]], columns: Sequence[str], *, schema: str = ""
) -> None:
    """Empty users (after applying schema, if given), COPY rows in and analyze."""
    conn = await asyncpg.connect(url)
    try:
        if schema:
            await conn.execute(schema)
        await conn.execute(TRUNCATE_USERS)
        await conn.copy_records_to_table("users", records=rows, columns=columns)
        # Fresh statistics, so every table gets the plans it would have in production.
        await conn.execute(ANALYZE_USERS)
    finally:
        await conn.close()


def seed_rows(users: int) -> list[tuple[str, str, datetime]]:
    now = datetime.now(UTC)
    return [(f"User {index}", seeded_email(index), now) for index in range(users)]


async def seed_service(url: str, users: int) -> None:
    """Fill a database that has the service's schema with the seeded users."""
    await copy_users(url, seed_rows(users), SERVICE_COLUMNS)


async def seed_tutorial(url: str, users: int) -> None:
    """Create the tutorial's table and fill it with the same users, without created_at."""
    rows = [(name, email) for name, email, _ in seed_rows(users)]
    await copy_users(url, rows, TUTORIAL_COLUMNS, schema=TUTORIAL_SCHEMA.read_text())


def prepare(server_url: str, keys: Iterable[str], users: int) -> dict[str, str]:
    """Create a fresh database per key (of DATABASES), with its schema and users; their URLs."""
    wanted = set(keys)
    urls = {key: database_url(server_url, name) for key, name in DATABASES.items() if key in wanted}
    asyncio.run(recreate_databases(server_url, [DATABASES[key] for key in urls]))
    for key in urls:
        if key in SERVICE_SCHEMA:
            migrate_service(urls[key])
        if key == "tutorial":
            asyncio.run(seed_tutorial(urls[key], users))
        elif key in SEEDED:
            asyncio.run(seed_service(urls[key], users))
    return urls
