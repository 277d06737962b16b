"""Uvicorn processes for the service and each comparator, all with the Procfile's flags."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import msgspec
import psutil

from bench.issuer import AUDIENCE, Issuer
from bench.seed import REPO_ROOT
from service.__main__ import uvicorn_args
from service.settings import Settings


class App(msgspec.Struct, frozen=True, kw_only=True):
    factory: str
    # The key (in seed.DATABASES) of the database it serves; None for none.
    database: str | None
    env: tuple[tuple[str, str], ...] = ()
    # Server settings of its connections, as DATABASE_URL query parameters (asyncpg's way).
    server_settings: str = ""
    # Its WEB_CONCURRENCY, whatever the run's --workers.
    workers: int | None = None
    # Whether it takes the access tokens of ISSUER, which then serves its keys.
    jwt: bool = False


# A fresh bearer token per run, for the service with API_TOKENS set.
AUTH_TOKEN = secrets.token_hex(16)
# A stand-in identity provider served from this process, and an access token of
# its for the service with JWT_ISSUER set: a day to live, every scope.
ISSUER = Issuer()
JWT_TOKEN = ISSUER.token(exp=int(time.time()) + 86400, scope="users:read users:create")
APPS = {
    "service": App(factory="service.app:create_app", database="service"),
    "service-auth": App(
        factory="service.app:create_app", database="service", env=(("API_TOKENS", AUTH_TOKEN),)
    ),
    "service-jwt": App(
        factory="service.app:create_app",
        database="service",
        env=(("JWT_ISSUER", ISSUER.url), ("JWT_AUDIENCE", AUDIENCE)),
        jwt=True,
    ),
    # The service's writes without the change feed: its triggers do not fire on
    # connections in the replica role, so the writes cost what they did before it.
    "service-nofeed": App(
        factory="service.app:create_app",
        database="service",
        server_settings="session_replication_role=replica",
    ),
    # The service with two workers, beside the database on the same two cores.
    "service-2": App(factory="service.app:create_app", database="service", workers=2),
    "tutorial": App(factory="bench.tutorial.app:create_app", database="tutorial"),
    "peer": App(factory="bench.peer:create_app", database="peer"),
    # The floor reads the service's own table.
    "floor": App(factory="bench.floor:create_app", database="service"),
    "ceiling": App(factory="bench.ceiling:create_app", database=None),
}
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 25.0


class Server(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(server: Server, lines: int = 30) -> str:
    return "\n".join(server.log.read_text(errors="replace").splitlines()[-lines:])


def start(name: str, *, database_url: str | None, workers: int, log_dir: Path) -> Server:
    app = APPS[name]
    workers = app.workers or workers
    port = free_port()
    log = log_dir / f"{name}.log"
    # Only the app's own env turns auth on, whatever the caller's environment says.
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key not in ("API_TOKENS", "API_CLIENTS") and not key.startswith("JWT_")
    }
    if app.jwt:
        ISSUER.start()
    env = {**inherited, **dict(app.env), "WEB_CONCURRENCY": str(workers)}
    if database_url is not None:
        separator = "&" if "?" in database_url else "?"
        settings = f"{separator}{app.server_settings}" if app.server_settings else ""
        env["DATABASE_URL"] = database_url + settings
    # The flags python -m service (the Procfile's web process) gives uvicorn.
    graceful_timeout = Settings().graceful_timeout
    args = uvicorn_args(
        app.factory, host="127.0.0.1", port=port, workers=workers, graceful_timeout=graceful_timeout
    )
    command = [sys.executable, "-m", "uvicorn", *args]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    return Server(name=name, port=port, process=process, log=log)


def wait_ready(server: Server, timeout: float = READY_TIMEOUT) -> None:
    """Poll until the server answers any HTTP request; fail if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited during startup:\n{log_tail(server)}")
        try:
            httpx.get(server.url + "/", timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s:\n{log_tail(server)}")


def wait_for_keys(server: Server, timeout: float = READY_TIMEOUT) -> None:
    """Poll /readyz until the server holds the issuer's keys, which it fetches after start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = httpx.get(server.url + "/readyz", timeout=1.0)
        if ready.status_code == 200 and ready.json()["signing_keys"]["state"] == "held":
            return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} holds no signing keys after {timeout:.0f} s")


def stop(server: Server, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM for a graceful shutdown, then SIGKILL if it does not come."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def worker_rss(server: Server) -> int:
    """Resident bytes of the largest worker: the process itself, or its children with --workers."""
    process = psutil.Process(server.process.pid)
    workers = process.children() or [process]
    return max(worker.memory_info().rss for worker in workers)


@contextmanager
def running(
    names: Sequence[str], *, database_urls: Mapping[str, str], workers: int, log_dir: Path
) -> Iterator[dict[str, Server]]:
    """Start every named server and wait for each; all are stopped on exit, whatever happens.

    database_urls maps the keys of seed.DATABASES to URLs.
    """
    with ExitStack() as stack:
        servers: dict[str, Server] = {}
        for name in names:
            database = APPS[name].database
            database_url = None if database is None else database_urls[database]
            server = start(name, database_url=database_url, workers=workers, log_dir=log_dir)
            stack.callback(stop, server)
            servers[name] = server
        for server in servers.values():
            wait_ready(server)
            if APPS[server.name].jwt:
                wait_for_keys(server)
        yield servers


def exit_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM would otherwise end Python without running the finally blocks that stop the
    # servers and PostgreSQL; SystemExit runs them.
    raise SystemExit(128 + signum)
