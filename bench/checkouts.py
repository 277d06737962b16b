"""Other commits of the service beside this checkout: their worktrees, and each one's own
service, migrated and served from its own code."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench import servers
from bench.seed import REPO_ROOT

# python -m service, with its listening address held to 127.0.0.1: with DATABASE_URL
# set it serves on 0.0.0.0, for a platform's router. run_uvicorn(settings, host) is
# how every commit since the service first served through python -m service starts.
SERVE_ON_LOOPBACK = """\
import sys
import service.__main__ as main
run_uvicorn = main.run_uvicorn
main.run_uvicorn = lambda settings, host: run_uvicorn(settings, "127.0.0.1")
sys.exit(main.main([]))
"""
# Left out of what a checkout's service inherits: each sets up its own.
NOT_INHERITED = ("API_TOKENS", "API_CLIENTS", "PROMETHEUS_MULTIPROC_DIR", "PYTHONPATH")


def short_commit(rev: str) -> str:
    command = ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", rev]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def checkouts(revs: Sequence[str]) -> Iterator[dict[str, Path]]:
    """This checkout, and a detached worktree of each rev, removed afterwards; by name."""
    found = {f"this checkout ({short_commit('HEAD')})": REPO_ROOT}
    with ExitStack() as stack:
        for rev in revs:
            path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / rev
            git = ["git", "-C", str(REPO_ROOT), "worktree"]
            subprocess.run([*git, "add", "--detach", str(path), rev], check=True)
            stack.callback(subprocess.run, [*git, "remove", "--force", str(path)], check=False)
            commit = short_commit(rev)
            found[rev if commit.startswith(rev) else f"{rev} ({commit})"] = path
        yield found


def environment(path: Path, url: str) -> dict[str, str]:
    """What the checkout at `path` runs with: its own code first, `url`, one worker, no auth."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key not in NOT_INHERITED and not key.startswith("JWT_")
    }
    return {
        **inherited,
        "PYTHONPATH": str(path),
        "DATABASE_URL": url,
        "WEB_CONCURRENCY": "1",
        "LOG_LEVEL": "WARNING",
    }


def migrate(path: Path, url: str) -> None:
    """Apply the schema of the checkout at `path` as deployed: python -m service migrate."""
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        cwd=path,
        env=environment(path, url),
        check=True,
        stdout=subprocess.DEVNULL,
    )


def start(name: str, path: Path, url: str, log_dir: Path) -> servers.Server:
    """The service of the checkout at `path`, one worker on 127.0.0.1, once it answers."""
    port = servers.free_port()
    log = log_dir / f"{name.replace(' ', '-').replace('/', '-')}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE_ON_LOOPBACK],
            cwd=path,
            env={**environment(path, url), "PORT": str(port)},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    server = servers.Server(name=name, port=port, process=process, log=log)
    try:
        servers.wait_ready(server)
    except BaseException:
        servers.stop(server)
        raise
    return server
