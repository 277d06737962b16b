"""The COPY limit: what inserting 10,000 users costs in PostgreSQL itself, measured from here."""

from __future__ import annotations

import time

import asyncpg
import uvloop

from bench.bulk import BulkSummary, bulk_users, summarize

# Enough repetitions for a median even in a one-second smoke round.
MIN_REPETITIONS = 3
TRUNCATE_USERS = "TRUNCATE users"
COLUMNS = ("name", "email")


async def copy_repeatedly(url: str, *, duration: int, nonce: str) -> BulkSummary:
    """COPY the same BULK_ROWS prepared tuples into an emptied users table, again and again.

    The table has the service's schema (its unique index and CHECK constraints) and is
    truncated before each COPY; only the COPY is timed.
    """
    records = bulk_users(nonce, 0)
    latencies: list[float] = []
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + duration
        while len(latencies) < MIN_REPETITIONS or time.monotonic() < deadline:
            await conn.execute(TRUNCATE_USERS)
            started = time.perf_counter()
            await conn.copy_records_to_table("users", records=records, columns=COLUMNS)
            latencies.append(time.perf_counter() - started)
    finally:
        await conn.close()
    return summarize(latencies, non_2xx=0)


def run_copy(url: str, *, duration: int, nonce: str) -> BulkSummary:
    # uvloop, the loop uvicorn gives the service.
    return uvloop.run(copy_repeatedly(url, duration=duration, nonce=nonce))
