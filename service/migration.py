"""The migration: schema.sql applied to a database, one run at a time."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import asyncpg
from asyncpg.transaction import Transaction

from service.database import reach

logger = logging.getLogger("service")
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
# Any fixed number, the same in every process: it names the migration lock.
MIGRATION_LOCK_KEY = 7_262_100_001
LOCK_POLL_SECONDS = 0.2
# In schema.sql, the line after which each statement builds an index concurrently.
CONCURRENT_MARKER = re.compile(r"^-- concurrently:", re.MULTILINE)
INDEX_NAME = re.compile(r"CREATE (?:UNIQUE )?INDEX CONCURRENTLY IF NOT EXISTS (\w+)")

# A DO block, sent whole by the simple protocol: a transaction that ran a
# statement through the extended protocol keeps its snapshot while it stays
# open (its portal holds it), and a concurrent index build waits for that.
TRY_LOCK = f"""
DO $$ BEGIN
    IF NOT pg_try_advisory_xact_lock({MIGRATION_LOCK_KEY}) THEN
        RAISE EXCEPTION 'another migration holds the lock' USING ERRCODE = 'lock_not_available';
    END IF;
END $$
"""
# NULL when there is no such index; false when a build of it was interrupted.
INDEX_IS_VALID = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)"
DROP_INDEX = "DROP INDEX CONCURRENTLY IF EXISTS {name}"


class Schema:
    """schema.sql in its two parts: DDL for one transaction, then statements run one by one."""

    def __init__(self, text: str) -> None:
        marker = CONCURRENT_MARKER.search(text)
        self.transactional = text if marker is None else text[: marker.start()]
        rest = "" if marker is None else text[marker.start() :]
        # Each statement, and the index it builds concurrently if any. Comments
        # go first, so that a ";" in one splits nothing.
        code = "\n".join(line for line in rest.splitlines() if not line.lstrip().startswith("--"))
        self.alone: list[tuple[str, str | None]] = []
        for chunk in code.split(";"):
            statement = chunk.strip()
            if statement:
                found = INDEX_NAME.match(statement)
                self.alone.append((statement, found[1] if found else None))

    @property
    def indexes(self) -> list[str]:
        """The indexes built concurrently, by name."""
        return [index for _, index in self.alone if index is not None]


async def migrate(database_url: str, start_timeout: float = 0) -> None:
    """Apply schema.sql; concurrent runs wait for each other on an advisory lock.

    The lock is held by a transaction of a connection of its own, so that it
    holds through a pooler such as pgbouncer in transaction mode, and across
    the index builds, which run outside any transaction on a second
    connection. An unreachable database, or one that does not take writes
    yet, is waited for, as at start-up, for about `start_timeout` seconds.
    """
    schema = Schema(SCHEMA_PATH.read_text(encoding="utf-8"))

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(database_url, statement_cache_size=0)

    async def apply() -> None:
        holder = await connect()
        try:
            lock = await hold_lock(holder)
            try:
                conn = await connect()
                try:
                    async with conn.transaction():
                        await conn.execute(schema.transactional)
                    for statement, index in schema.alone:
                        if index is None:
                            await run_alone(conn, statement)
                        else:
                            await build_index(conn, index, statement)
                finally:
                    await conn.close()
            finally:
                await lock.rollback()  # it changed nothing; ending it releases the lock
        finally:
            await holder.close()

    # The whole of it is retried: a server that refuses writes (a standby not
    # yet promoted) is waited for like one that is down. Every step is
    # idempotent, so a run cut short is simply run again.
    await reach(apply, database_url, start_timeout)


async def hold_lock(conn: asyncpg.Connection) -> Transaction:
    """The migration lock, held by the transaction returned, once no other run holds it.

    Tried rather than waited for, each try in a transaction of its own: a
    transaction waiting for the lock holds a snapshot, which the other run's
    concurrent index build would wait to see end, while that run waits for
    its build: neither would ever finish.
    """
    while True:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(TRY_LOCK)
        except asyncpg.LockNotAvailableError:
            await transaction.rollback()
            await asyncio.sleep(LOCK_POLL_SECONDS)
        else:
            return transaction


async def build_index(conn: asyncpg.Connection, name: str, statement: str) -> None:
    """Build an index without blocking writes, unless a valid one exists.

    Runs hold the migration lock, so an INVALID index of this name is not
    another run's build in progress but the leftover of one interrupted:
    it is dropped and built again.
    """
    valid = await conn.fetchval(INDEX_IS_VALID, name)
    if valid is False:
        await conn.execute(DROP_INDEX.format(name=name))
    if not valid:
        await conn.execute(statement)


async def run_alone(conn: asyncpg.Connection, statement: str) -> None:
    """Run a statement; a VALIDATE CONSTRAINT that rows already there break is a warning.

    The constraint stays NOT VALID, enforced on every row written, and the
    next run tries again: rows an earlier release accepted are the owners'
    to correct, and refusing to migrate would hold back every later release.
    """
    try:
        await conn.execute(statement)
    except asyncpg.CheckViolationError as exc:
        logger.warning("%s; it stays NOT VALID, enforced on new and changed rows", exc)
