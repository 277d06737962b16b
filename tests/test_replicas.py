"""Reads from streaming replicas within a bounded lag, on replication the tests build."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.database import DatabaseUnreachable, database_address
from service.migration import migrate
from service.settings import Settings
from tests.conftest import (
    EMPTY_TABLES,
    Cluster,
    Node,
    assert_problem,
    client_of,
    connect,
    service_backends,
)
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.replication

# DB_READ_MAX_LAG where a test waits for the lag to pass it; the monitor then
# measures every 0.15 s.
SHORT_LAG = 0.3
# Where a test must not see a replica leave: replay paused for a whole test stays within it.
LONG_LAG = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="users-replicas-") as folder:
        cluster = Cluster(Path(folder), standbys=2, primary_settings={})
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
async def replicated(cluster: Cluster) -> AsyncIterator[Cluster]:
    """The cluster with every server running, an empty table, and every standby caught up."""
    for standby in cluster.standbys:
        if not standby.running():
            await asyncio.to_thread(standby.start)
    await cluster.primary.execute(EMPTY_TABLES)
    await caught_up(cluster)
    yield cluster
    for standby in cluster.standbys:
        if standby.running():
            await standby.execute("SELECT pg_wal_replay_resume()")


def settings_of(cluster: Cluster, max_lag: float) -> Settings:
    return Settings(
        database_url=cluster.primary.url(),
        database_read_urls=tuple(standby.url() for standby in cluster.standbys),
        db_read_max_lag=max_lag,
    )


async def caught_up(cluster: Cluster) -> None:
    """Until every standby has replayed what the primary has written."""
    primary = await connect(cluster.primary.url())
    try:
        written = await primary.fetchval("SELECT pg_current_wal_lsn()")
    finally:
        await primary.close()
    for standby in cluster.standbys:
        conn = await connect(standby.url())
        try:
            for _ in range(200):  # 10 s
                if await conn.fetchval("SELECT pg_last_wal_replay_lsn()") >= written:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"standby on {standby.port} did not catch up")
        finally:
            await conn.close()


def reads(metrics: str, node: Node | None) -> float:
    """Read queries run on `node`, or on the primary for None, by the service's metrics."""
    target = "primary" if node is None else database_address(node.url())
    return value(metrics, "db_reads_total", target=target)


async def replica_states(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    return [replica["state"] for replica in response.json()["replicas"]]


async def create(client: httpx.AsyncClient, email: str, name: str = "Ann") -> dict[str, Any]:
    response = await client.post("/users", json={"name": name, "email": email})
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


async def test_reads_are_spread_over_the_replicas_and_writes_stay_on_the_primary(
    replicated: Cluster,
) -> None:
    async with client_of(settings_of(replicated, LONG_LAG)) as client:
        before = await scrape(client)
        ann = await create(client, "ann@x.io")
        await caught_up(replicated)
        for _ in range(10):
            assert (await client.get("/users/ann@x.io")).status_code == 200
            assert (await client.get(f"/users/{ann['id']}")).status_code == 200
            assert [user["email"] for user in (await client.get("/users")).json()] == ["ann@x.io"]
            # A search and a count each run in a read-only snapshot on a replica.
            found = await client.get("/users?q=ann", headers={"Prefer": "count=exact"})
            assert [user["email"] for user in found.json()] == ["ann@x.io"]
            assert found.headers["x-total-count"] == "1"
        after = await scrape(client)
        ready = await client.get("/readyz")
        connections = [
            len(await service_backends(standby.url())) for standby in replicated.standbys
        ]

    for standby in replicated.standbys:
        assert reads(after, standby) - reads(before, standby) >= 20
    assert reads(after, None) == reads(before, None)
    assert connections[0] >= 1
    assert connections[1] >= 1
    assert ready.json()["status"] == "ok"
    addresses = [database_address(standby.url()) for standby in replicated.standbys]
    assert [(r["address"], r["state"]) for r in ready.json()["replicas"]] == [
        (address, "in use") for address in addresses
    ]
    assert all(0 <= r["lag_seconds"] < LONG_LAG for r in ready.json()["replicas"])
    assert value(after, "db_replicas_in_use") == 2


async def test_a_read_right_after_a_create_finds_the_user_on_a_replica_that_is_behind(
    replicated: Cluster,
) -> None:
    async with client_of(settings_of(replicated, LONG_LAG)) as client:
        for standby in replicated.standbys:
            await standby.execute("SELECT pg_wal_replay_pause()")
        ann = await create(client, "Ann@X.io")
        by_email = await client.get("/users/ann@x.io")
        by_id = await client.get(f"/users/{ann['id']}")
        # A list is not confirmed on the primary: the replica, which has not
        # replayed the create, answers it, within the bound.
        listed = await client.get("/users")
        missing = await client.get("/users/nobody@x.io")

    assert by_email.status_code == 200
    assert by_email.json() == ann
    assert by_id.status_code == 200
    assert by_id.json() == ann
    assert listed.status_code == 200
    assert listed.json() == []
    assert_problem(missing, 404)


async def test_a_lookup_of_many_confirms_on_the_primary_what_a_replica_is_missing(
    replicated: Cluster,
) -> None:
    async with client_of(settings_of(replicated, LONG_LAG)) as client:
        bo = await create(client, "bo@x.io")
        await caught_up(replicated)
        for standby in replicated.standbys:
            await standby.execute("SELECT pg_wal_replay_pause()")
        ann = await create(client, "Ann@X.io")
        before = await scrape(client)
        handles = ["nobody@x.io", ann["id"], "bo@x.io", "ann@x.io", "nope", bo["id"]]
        looked_up = await client.post("/users/lookup", json=handles)
        after = await scrape(client)

    assert looked_up.status_code == 200
    assert looked_up.json() == {"found": [ann, bo], "missing": ["nobody@x.io", "nope"]}
    # Read on a replica, which had bo; ann and nobody asked of the primary.
    replica_reads = sum(reads(after, s) - reads(before, s) for s in replicated.standbys)
    assert replica_reads == 1
    assert reads(after, None) - reads(before, None) == 1


async def test_paused_replay_moves_reads_to_the_primary_within_the_bound_and_back(
    replicated: Cluster,
) -> None:
    async with client_of(settings_of(replicated, SHORT_LAG)) as client:
        assert await replica_states(client) == ["in use", "in use"]
        for standby in replicated.standbys:
            await standby.execute("SELECT pg_wal_replay_pause()")
        await create(client, "ann@x.io")
        written = time.monotonic()
        # Reads may see the replicas' older data for the bound and a measuring
        # interval (0.15 s), no longer: then they go to the primary, which has Ann.
        for _ in range(100):  # 5 s
            if (await client.get("/users")).json():
                break
            await asyncio.sleep(0.05)
        seen_after = time.monotonic() - written
        lagging = await replica_states(client)
        before = await scrape(client)
        for _ in range(5):
            assert len((await client.get("/users")).json()) == 1
        during = await scrape(client)

        for standby in replicated.standbys:
            await standby.execute("SELECT pg_wal_replay_resume()")
        resumed = time.monotonic()
        for _ in range(100):  # 5 s
            if await replica_states(client) == ["in use", "in use"]:
                break
            await asyncio.sleep(0.05)
        back_after = time.monotonic() - resumed
        for _ in range(5):
            assert len((await client.get("/users")).json()) == 1
        after = await scrape(client)

    print(f"\nthe create seen {seen_after:.3f} s after it, replicas back {back_after:.3f} s")
    # The bound, a measuring interval, and a generous second for a busy machine.
    assert seen_after < SHORT_LAG + 0.15 + 1.0
    assert lagging == ["lagging", "lagging"]
    assert reads(during, None) - reads(before, None) == 5
    assert back_after < 5
    for standby in replicated.standbys:
        assert reads(during, standby) == reads(before, standby)
    assert sum(reads(after, s) - reads(during, s) for s in replicated.standbys) == 5
    assert reads(after, None) == reads(during, None)


async def test_replicas_that_stop_cause_no_5xx_and_the_service_stays_ready(
    replicated: Cluster,
) -> None:
    first, second = replicated.standbys
    async with client_of(settings_of(replicated, SHORT_LAG)) as client:
        ann = await create(client, "ann@x.io")
        await caught_up(replicated)
        done = asyncio.Event()

        async def reader() -> list[int]:
            statuses: list[int] = []
            for _ in range(100_000):  # bounded; ends at `done`
                if done.is_set():
                    break
                for path in ("/users/ann@x.io", f"/users/{ann['id']}", "/users"):
                    statuses.append((await client.get(path)).status_code)
            return statuses

        readers = [asyncio.create_task(reader()) for _ in range(4)]
        await asyncio.sleep(0.5)
        # As a crash would: sessions are cut mid-query.
        await asyncio.to_thread(first.stop, "immediate")
        await asyncio.sleep(1)
        one_down = await client.get("/readyz")
        before = await scrape(client)
        await asyncio.sleep(0.5)
        between = await scrape(client)
        await asyncio.to_thread(second.stop, "immediate")
        await asyncio.sleep(1)
        both_down = await client.get("/readyz")
        done.set()
        statuses = [status for each in await asyncio.gather(*readers) for status in each]
        after = await scrape(client)

    print(f"\n{len(statuses)} reads while the replicas stopped")
    assert len(statuses) > 100
    assert set(statuses) == {200}
    assert one_down.status_code == 200
    assert [r["state"] for r in one_down.json()["replicas"]] == ["down", "in use"]
    assert one_down.json()["replicas"][0]["lag_seconds"] is None
    assert reads(between, second) > reads(before, second)
    assert reads(between, first) == reads(before, first)
    assert both_down.status_code == 200
    assert [r["state"] for r in both_down.json()["replicas"]] == ["down", "down"]
    assert value(after, "db_replicas_in_use") == 0
    assert reads(after, None) > reads(between, None)


async def test_a_write_on_a_server_that_refuses_writes_is_a_503_and_its_connection_is_dropped(
    replicated: Cluster,
) -> None:
    # A standby, as a demoted primary still reached at the old address would be.
    standby = replicated.standbys[0]
    settings = Settings(database_url=standby.url(), db_pool_min=1, db_pool_max=1)
    async with client_of(settings) as client:
        answers = []
        for n in range(3):
            before = await service_backends(standby.url())
            answers.append(await client.post("/users", json={"name": "A", "email": f"{n}@x.io"}))
            answers.append(
                await client.post(
                    "/users",
                    json={"name": "A", "email": f"{n}@x.io"},
                    headers={"Idempotency-Key": f"key-{n}"},
                )
            )
            # The connections that met the refusal are gone, not back in the pool.
            for _ in range(40):  # 2 s
                if not before & await service_backends(standby.url()):
                    break
                await asyncio.sleep(0.05)
            assert not before & await service_backends(standby.url())
        ready = await client.get("/readyz")
    for answer in answers:
        assert_problem(answer, 503)
        assert answer.headers["retry-after"] == "1"
    assert ready.status_code == 200


async def test_migrate_waits_for_a_server_that_refuses_writes_then_says_why(
    replicated: Cluster,
) -> None:
    with pytest.raises(DatabaseUnreachable) as error:
        await migrate(replicated.standbys[0].url(), 1.5)
    assert "ReadOnlySQLTransactionError" in str(error.value)
    assert "giving up after 3 attempts in 1.5 s" in str(error.value)
