"""python -m bench.idle: what silent connections cost a worker, and whether it closes them."""

from __future__ import annotations

import argparse
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.options import at_least
from bench.servers import free_port

# How long the connections are watched after HEAD_TIMEOUT, for the closes to come.
GRACE_SECONDS = 3.0


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found, status
    return int(found[1])


def start(
    source: Path, log: Path, port: int, head_timeout: float
) -> tuple[subprocess.Popen[bytes], int]:
    """python -m service from `source` with one worker; the process and the worker's pid."""
    env = {**os.environ, "PYTHONPATH": str(source), "PORT": str(port)}
    env["HEAD_TIMEOUT"] = str(head_timeout)
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=source,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        if "Uvicorn running" in log.read_text():
            started = re.search(r"Started server process \[(\d+)\]", log.read_text())
            assert started, log.read_text()
            return process, int(started[1])
        time.sleep(0.2)
    raise SystemExit(f"the service did not start:\n{log.read_text()}")


def closed_by_server(sockets: list[socket.socket]) -> int:
    closed = 0
    readable, _, _ = select.select(sockets, [], [], 0)
    for sock in readable:
        try:
            closed += sock.recv(1) == b""
        except ConnectionResetError:
            closed += 1
    return closed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    parser.add_argument("--sockets", type=at_least(1), default=1000)
    parser.add_argument("--head-timeout", type=float, default=2.0)
    parser.add_argument(
        "--source", type=Path, default=Path(__file__).resolve().parent.parent,
        help="the checkout whose service is run (default: this one)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not os.environ.get("DATABASE_URL"):
        raise SystemExit("set DATABASE_URL to a migrated database")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as folder:
        process, worker = start(args.source, Path(folder) / "service.log", port, args.head_timeout)
        try:
            before = rss_kib(worker)
            sockets = [
                socket.create_connection(("127.0.0.1", port), timeout=5)
                for _ in range(args.sockets)
            ]
            time.sleep(1)  # accepted, and their protocols made
            held = rss_kib(worker)
            time.sleep(max(0.0, args.head_timeout - 1) + GRACE_SECONDS)
            closed = closed_by_server(sockets)
            after = rss_kib(worker)
            for sock in sockets:
                sock.close()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
    print(f"worker RSS before: {before / 1024:.1f} MiB")
    each = (held - before) / args.sockets
    print(f"with {args.sockets} silent sockets: {held / 1024:.1f} MiB (+{each:.1f} KiB each)")
    print(f"closed by the server within HEAD_TIMEOUT + {GRACE_SECONDS:g} s: {closed}")
    print(f"worker RSS then: {after / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
