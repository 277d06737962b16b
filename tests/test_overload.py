"""Overload of a real service process: it sheds with 503s and recovers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec

from tests.conftest import Service, alive, assert_problem, connect

POOL_MAX = 2
# Short, so that the queue behind two busy connections outlasts it at once.
POOL_TIMEOUT = 0.2
CLIENTS = 4 * POOL_MAX  # each keeps one heavy request in flight
LOAD_SECONDS = 6.0
PROBE_SECONDS = 0.5
# Light requests a second, after the load, as a share of before: other work on
# the machine (PostgreSQL's autovacuum after the bulk inserts, other tests)
# makes the figure noisy, so the bar is below 1. Seen on this shared machine,
# before and after the same code: 0.67 to 1.06; a service still stuck in its
# overload would be far below half.
RECOVERED = 0.5
SEEDED = 100_000
BULK = 10_000
# Above the worker's RSS once warmed up. In flight at once: 8 requests, each
# with at most a 0.6 MB body and its 10,000 decoded users, or a page of 1,000.
RSS_GROWTH_LIMIT_KIB = 100 * 1024


def test_overload_is_shed_with_503s_in_bounded_memory_and_full_speed_returns(
    tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    asyncio.run(seed(database_url))
    service = Service(
        tmp_path,
        {
            "DATABASE_URL": database_url,
            "DB_POOL_MIN": "1",
            "DB_POOL_MAX": str(POOL_MAX),
            "DB_POOL_TIMEOUT": str(POOL_TIMEOUT),
        },
    )
    services.append(service)
    service.wait_ready()

    try:
        run = asyncio.run(overload(service))
    finally:
        asyncio.run(seed(database_url, users=0))  # the bulk inserts' rows go, too

    statuses = [status for status, _ in run.answers]
    shed = [seconds for status, seconds in run.answers if status == 503]
    served = [seconds for status, seconds in run.answers if 200 <= status < 300]
    print(
        f"\nheavy requests: {len(statuses)}, served: {len(served)}, shed with 503: {len(shed)}, "
        f"slowest 503: {max(shed, default=0):.3f} s, slowest served: {max(served):.3f} s; "
        f"RSS warmed up {run.rss_before_kib / 1024:.1f} MiB, peak under load "
        f"{run.rss_peak_kib / 1024:.1f} MiB, after {run.rss_after_kib / 1024:.1f} MiB; "
        f"probe {run.probe_before:.0f}/s before, after: "
        + ", ".join(f"{rate:.0f}/s" for rate in run.probe_after)
    )
    assert alive(service.process.pid), service.output()
    assert set(statuses) <= {200, 201, 503}, (Counter(statuses), run.unexpected)
    assert run.problems_ok
    # Both: the service kept serving, and it refused what it could not serve soon.
    assert len(served) >= CLIENTS
    assert shed
    # A refused request waited for a connection no longer than DB_POOL_TIMEOUT.
    assert max(shed) <= POOL_TIMEOUT + 1
    assert run.rss_peak_kib - run.rss_before_kib <= RSS_GROWTH_LIMIT_KIB
    # Back to full speed, within 3 s at most, once the load stops.
    assert max(run.probe_after) >= RECOVERED * run.probe_before


async def seed(database_url: str, users: int = SEEDED) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute("TRUNCATE users, memberships")
        await conn.execute(
            "INSERT INTO users (name, email)"
            " SELECT 'Seed', 'seed' || n || '@example.com' FROM generate_series(1, $1::int) AS n",
            users,
        )
    finally:
        await conn.close()


def rss_kib(pid: int) -> int:
    """The resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class OverloadRun:
    answers: list[tuple[int, float]] = field(default_factory=list)
    unexpected: set[str] = field(default_factory=set)  # bodies of any other status
    problems_ok: bool = True
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    rss_after_kib: int = 0
    probe_before: float = 0.0
    probe_after: list[float] = field(default_factory=list)


async def overload(service: Service) -> OverloadRun:
    run = OverloadRun()
    pid = service.process.pid
    limits = httpx.Limits(max_connections=CLIENTS + 1)
    async with httpx.AsyncClient(base_url=service.url, timeout=30, limits=limits) as client:

        async def heavy(number: int, n: int) -> httpx.Response:
            """A page from deep in the table, or a bulk insert of 10,000 users."""
            if n % 2:
                return await client.get(f"/users?limit=1000&offset={SEEDED - 1000}")
            body = [
                {"name": "Bulk", "email": f"c{number}-{n}-{i}@example.com"} for i in range(BULK)
            ]
            return await client.post(
                "/users/bulk",
                content=msgspec.json.encode(body),
                headers={"content-type": "application/json"},
            )

        async def probe() -> float:
            """Light requests, one at a time: how many a second."""
            started = time.monotonic()
            count = 0
            while time.monotonic() - started < PROBE_SECONDS:
                response = await client.get("/users/seed1@example.com")
                assert response.status_code == 200
                count += 1
            return count / (time.monotonic() - started)

        for n in range(4):  # warm up every path, so that RSS starts from its steady size
            response = await heavy(-1, n)
            assert response.status_code in (200, 201), response.text
        run.probe_before = max([await probe() for _ in range(2)])
        run.rss_before_kib = rss_kib(pid)
        run.rss_peak_kib = run.rss_before_kib
        deadline = time.monotonic() + LOAD_SECONDS

        async def load(number: int) -> None:
            for n in range(10_000):  # bounded; ends at the deadline
                if time.monotonic() >= deadline:
                    return
                started = time.monotonic()
                response = await heavy(number, n)
                run.answers.append((response.status_code, time.monotonic() - started))
                if response.status_code not in (200, 201, 503):
                    run.unexpected.add(f"{response.status_code} {response.text[:300]}")
                if response.status_code == 503:  # shed for want of a connection
                    problem = assert_problem(response, 503)
                    run.problems_ok &= response.headers.get("retry-after") == "1"
                    run.problems_ok &= "connection is busy" in problem["detail"]

        async def watch_memory() -> None:
            while time.monotonic() < deadline:
                run.rss_peak_kib = max(run.rss_peak_kib, rss_kib(pid))
                await asyncio.sleep(0.05)

        await asyncio.gather(watch_memory(), *(load(number) for number in range(CLIENTS)))
        run.rss_after_kib = rss_kib(pid)
        for _ in range(6):  # up to 3 s for the probe to get back to its pace
            run.probe_after.append(await probe())
            if run.probe_after[-1] >= RECOVERED * run.probe_before:
                break
    return run
