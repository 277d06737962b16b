"""The COPY limit: what inserting 10,000 users costs in PostgreSQL itself, measured from here."""

from __future__ import annotations

import time

import asyncpg
import uvloop

from bench.bulk import BulkSummary, bulk_users, summarize

# Enough repetitions for a median even in a one-second smoke round.
MIN_REPETITIONS = 3
COLUMNS = ("name", "email")


async def copy_repeatedly(url: str, *, duration: int, nonce: str) -> BulkSummary:
    """COPY BULK_ROWS fresh prepared tuples into the service's own users table, again and again.

    The same table the service's bulk loads go into, at the same size, with the same
    indexes, constraints and triggers; only the COPY is timed.
    """
    latencies: list[float] = []
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + duration
        while len(latencies) < MIN_REPETITIONS or time.monotonic() < deadline:
            records = bulk_users(f"copy-{nonce}", len(latencies))
            started = time.perf_counter()
            await conn.copy_records_to_table("users", records=records, columns=COLUMNS)
            latencies.append(time.perf_counter() - started)
    finally:
        await conn.close()
    return summarize(latencies, non_2xx=0)


def run_copy(url: str, *, duration: int, nonce: str) -> BulkSummary:
    # uvloop, the loop uvicorn gives the service.
    return uvloop.run(copy_repeatedly(url, duration=duration, nonce=nonce))
