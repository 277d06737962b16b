"""A primary that dies and its synchronous standby promoted, under a real service process
and a consumer of its change feed."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    Answer,
    Cluster,
    Node,
    Service,
    Writers,
    alive,
    assert_problem,
    stored_emails,
)

pytestmark = pytest.mark.replication

COMMAND_TIMEOUT = 2.0  # DB_COMMAND_TIMEOUT of the service under test
WRITERS = 8
# How long the orchestrator takes to see the primary gone and act.
DETECTION_SECONDS = 1.0
WRITES_BACK_SECONDS = 5.0
SYNCHRONOUS = {"synchronous_standby_names": "*", "synchronous_commit": "on"}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A primary and one synchronous standby, built afresh: the test kills the primary."""
    with tempfile.TemporaryDirectory(prefix="users-failover-") as folder:
        cluster = Cluster(Path(folder), standbys=1, primary_settings=SYNCHRONOUS)
        try:
            yield cluster
        finally:
            cluster.stop()


def failover_url(primary: Node, standby: Node) -> str:
    """DATABASE_URL naming both servers, as libpq allows: the one taking writes is used."""
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
    return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write"


async def promote(standby: Node) -> None:
    """The orchestrator's step: the standby stops waiting for a standby of its
    own, which it would otherwise do for every commit, then is promoted."""
    await standby.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
    await standby.execute("SELECT pg_reload_conf()")
    await asyncio.to_thread(standby.pg_ctl, "promote")


@dataclass
class FailoverRun:
    answers: list[Answer]
    changes: list[dict[str, Any]]  # what a consumer of the feed read throughout
    killed_at: float
    promoting_at: float  # when the orchestrator began its step: up to here no server took writes
    promoted_at: float  # when pg_ctl promote returned: the standby takes writes
    recovered_at: float  # the first 201 after that


def test_a_failover_loses_no_acknowledged_write_and_writes_resume_within_5_s(
    tmp_path: Path, cluster: Cluster, services: list[Service]
) -> None:
    primary, standby = cluster.primary, cluster.standbys[0]
    service = Service(
        tmp_path,
        {
            "DATABASE_URL": failover_url(primary, standby),
            "DB_COMMAND_TIMEOUT": str(COMMAND_TIMEOUT),
        },
    )
    services.append(service)
    service.wait_ready()

    run = asyncio.run(write_through_a_failover(service.url, primary, standby))

    answers = run.answers
    acknowledged = {
        a.response.json()["email"] for a in answers if a.response and a.response.status_code == 201
    }
    lost = acknowledged - asyncio.run(stored_emails(standby.url()))
    during = [a for a in answers if run.killed_at <= a.started < run.promoting_at]
    after = [a for a in answers if a.started >= run.recovered_at]
    unavailable = [a for a in answers if a.response and a.response.status_code == 503]
    print(
        f"\nwrites: {len(answers)}, acknowledged: {len(acknowledged)}, 503s: {len(unavailable)}, "
        f"lost: {len(lost)}, 5xx other than 503: "
        f"{sum(a.response is not None and a.response.status_code > 503 for a in answers)}, "
        f"writes back {run.recovered_at - run.promoted_at:.3f} s after the promotion "
        f"({run.recovered_at - run.killed_at:.3f} s after the primary died; the promotion "
        f"took {run.promoted_at - run.promoting_at:.3f} s), "
        f"slowest answer: {max(a.seconds for a in answers):.3f} s"
    )
    output = service.output()
    assert alive(service.process.pid), output
    assert all(a.response is not None for a in answers), output
    assert max(a.seconds for a in answers) <= COMMAND_TIMEOUT + 1
    for answer in answers:
        assert answer.response is not None
        assert answer.response.status_code in (201, 503), answer.response.text
        if answer.response.status_code == 503:
            assert_problem(answer.response, 503)
            assert answer.response.headers["retry-after"] == "1"
    assert len(during) >= WRITERS
    assert all(a.response and a.response.status_code == 503 for a in during)
    assert run.recovered_at - run.promoted_at <= WRITES_BACK_SECONDS
    assert len(after) >= WRITERS
    assert [a.response.status_code for a in after if a.response] == [201] * len(after)
    assert len(acknowledged) > 100
    assert lost == set()
    assert "unexpected error" not in output
    # The consumer's cursor from the old primary went on on the new one: it
    # read each user the table holds created once, and nothing else.
    cursors = [change["cursor"] for change in run.changes]
    assert len(set(cursors)) == len(cursors)
    assert {change["type"] for change in run.changes} == {"created"}
    assert sorted(change["user"]["email"] for change in run.changes) == sorted(
        asyncio.run(stored_emails(standby.url()))
    )


async def write_through_a_failover(url: str, primary: Node, standby: Node) -> FailoverRun:
    """8 writers; the primary killed a second in, the standby promoted a second
    later; writing goes on for 2 s after writes succeed again."""
    async with httpx.AsyncClient(base_url=url, timeout=COMMAND_TIMEOUT + 5) as client:
        response = await client.get("/users/changes", params={"after": "now"})
        stopped = asyncio.Event()
        consumer = asyncio.create_task(consume(client, response.json()["next"], stopped))
        writers = Writers(client, WRITERS)
        await asyncio.sleep(1)
        # As a crash would: no shutdown checkpoint, sessions cut mid-commit.
        await asyncio.to_thread(primary.stop, "immediate")
        killed_at = time.monotonic()
        await asyncio.sleep(DETECTION_SECONDS)
        promoting_at = time.monotonic()
        await promote(standby)
        promoted_at = time.monotonic()
        # The first 201 to a write sent after the promotion; the assertion on it tells.
        recovered_at = await writers.first_created(
            lambda answer: answer.started > promoted_at, WRITES_BACK_SECONDS + 5
        )
        await asyncio.sleep(2)
        answers = await writers.stop()
        stopped.set()
        changes = await asyncio.wait_for(consumer, 20)
        return FailoverRun(answers, changes, killed_at, promoting_at, promoted_at, recovered_at)


async def consume(
    client: httpx.AsyncClient, after: str, stopped: asyncio.Event
) -> list[dict[str, Any]]:
    """A consumer long polling the feed from `after` through the failover,
    retrying its 503s, until a poll begun once the writers `stopped` finds
    nothing new."""
    changes: list[dict[str, Any]] = []
    while True:
        last = stopped.is_set()
        try:
            response = await client.get("/users/changes", params={"after": after, "wait": 1})
        except httpx.TransportError:  # a request that outlived the failover's
            response = None
        if response is None or response.status_code == 503:
            await asyncio.sleep(0.1)
            continue
        assert response.status_code == 200, response.text
        page = response.json()
        changes += page["changes"]
        after = page["next"]
        if last and not page["changes"]:
            return changes
