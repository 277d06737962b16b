"""Both tables prepared for a run: schemas applied, emptied, filled by COPY, analyzed."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE_SCHEMA = Path(__file__).resolve().parent / "baseline" / "schema.sql"

TRUNCATE_USERS = "TRUNCATE users RESTART IDENTITY"
ANALYZE_USERS = "VACUUM ANALYZE users"
ANALYZE_BASELINE_USERS = "VACUUM ANALYZE baseline_users"
SELECT_SERVER_VERSION = "SHOW server_version"
SEED_COLUMNS = ("name", "email", "created_at")


def seeded_email(index: int) -> str:
    """The email of seeded user number index, as the Lua scripts spell it."""
    return f"user{index:06d}@example.com"


def migrate_service(url: str) -> None:
    """Apply the service's schema the way it is deployed: python -m service migrate."""
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
    )


async def seed(url: str, *, users: int, service: bool, baseline: bool) -> str:
    """Fill the chosen tables with the same users; returns the server's version."""
    now = datetime.now(UTC)
    rows = [(f"User {index}", seeded_email(index), now) for index in range(users)]
    conn = await asyncpg.connect(url)
    try:
        if service:
            await conn.execute(TRUNCATE_USERS)
            await conn.copy_records_to_table("users", records=rows, columns=SEED_COLUMNS)
            # Fresh statistics, so both tables get the plans they would have in production.
            await conn.execute(ANALYZE_USERS)
        if baseline:
            await conn.execute(BASELINE_SCHEMA.read_text())
            await conn.copy_records_to_table("baseline_users", records=rows, columns=SEED_COLUMNS)
            await conn.execute(ANALYZE_BASELINE_USERS)
        version: str = await conn.fetchval(SELECT_SERVER_VERSION)
    finally:
        await conn.close()
    return version
