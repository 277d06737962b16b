"""python -m bench.consumers: what careless consumers of the change feed cost a worker.

Against one worker of `python -m service` on DATABASE_URL (a scratch database,
migrated: the run adds users to it, and deletes them at the end):

- slow streams: sockets that ask for the stream from the oldest change, on a
  feed holding --changes changes, and never read;
- idle streams: streams from `after=now`, waiting for a change;
- abandoned long polls: `wait=60`, each closed as soon as it is sent.

For each: the worker's RSS before, with them open and after they close, and
/livez's latency meanwhile (on a kept-alive connection); for the long polls,
how long http_requests_in_flight takes to fall back, and the 499s counted.
The figures go into bench/FEED.md, under their own heading, which
`python -m bench.feed` keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from bench.idle import rss_kib, start
from bench.options import at_least
from bench.report import markdown_table
from bench.servers import free_port

BENCH_DIR = Path(__file__).resolve().parent
# bench/FEED.md's section of this run: from the marker to the end of the file.
MARKER = "<!-- python -m bench.consumers -->"
RECEIVE_BUFFER = 4096  # a slow client's: the kernel takes little off the worker
STREAM = b"GET /users/changes%s HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
POLL = b"GET /users/changes?after=%s&wait=60 HTTP/1.1\r\nHost: bench\r\n\r\n"
PROBES = 40


def metric(client: httpx.Client, pattern: str) -> float:
    found = re.search(pattern, client.get("/metrics").text, re.MULTILINE)
    return 0.0 if found is None else float(found[1])


def streams_open(client: httpx.Client) -> float:
    return metric(client, r"^feed_streams_open (\S+)$")


def livez_ms(client: httpx.Client) -> list[float]:
    """PROBES probes of /livez, 50 ms apart, in milliseconds."""
    times = []
    for _ in range(PROBES):
        began = time.perf_counter()
        assert client.get("/livez").status_code == 200
        times.append((time.perf_counter() - began) * 1000)
        time.sleep(0.05)
    return times


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit("the worker did not get there in time")


def streams(
    client: httpx.Client, worker: int, port: int, count: int, query: bytes
) -> tuple[list[str], list[float]]:
    """RSS before, with `count` streams open and after they close (MB), and /livez meanwhile."""
    before = rss_kib(worker)
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.connect(("127.0.0.1", port))
            sock.sendall(STREAM % query)
            sockets.append(sock)
        wait_for(lambda: streams_open(client) >= count, 60)
        time.sleep(2)  # each has filled what its socket takes
        during, probes = rss_kib(worker), livez_ms(client)
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: streams_open(client) == 0, 30)
    time.sleep(2)  # past the trim of what they freed
    after = rss_kib(worker)
    return [f"{kib / 1024:.0f} MB" for kib in (before, during, after)], probes


def abandoned(client: httpx.Client, port: int, count: int) -> tuple[float, float]:
    """Seconds until in-flight requests fall back (within 5), and the 499s counted."""
    after = client.get("/users/changes", params={"after": "now"}).json()["next"]
    in_flight = r"^http_requests_in_flight (\S+)$"
    gone = r'^http_requests_total\{.*route="/users/changes",status="499"\} (\S+)$'
    gone_before = metric(client, gone)  # the streams closed by their clients
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(POLL % after.encode())
            sockets.append(sock)
        wait_for(lambda: metric(client, in_flight) >= count, 60)
    finally:
        for sock in sockets:
            sock.close()
    closed = time.monotonic()
    wait_for(lambda: metric(client, in_flight) <= 5, 60)
    seconds = time.monotonic() - closed
    return seconds, metric(client, gone) - gone_before


async def add_changes(database_url: str, count: int, nonce: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO users (name, email, attributes) SELECT 'Bench ' || n, "
            "'bench' || n || '-' || $2 || '@consumers.example', '{\"team\": \"platform\"}' "
            "FROM generate_series(1, $1::int) AS n",
            count,
            nonce,
        )
    finally:
        await conn.close()


async def remove_users(database_url: str, nonce: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM users WHERE email LIKE $1", f"%-{nonce}@consumers.example")
    finally:
        await conn.close()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.consumers", description=__doc__)
    parser.add_argument("--changes", type=at_least(1), default=11_000)
    parser.add_argument("--slow", type=at_least(1), default=1000, help="slow streams")
    parser.add_argument("--idle", type=at_least(1), default=1000, help="idle streams")
    parser.add_argument("--abandoned", type=at_least(1), default=3000, help="long polls")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "FEED.md")
    args = parser.parse_args(argv)
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("set DATABASE_URL to a migrated scratch database")
    cap = max(args.slow, args.idle, args.abandoned)
    os.environ["FEED_MAX_CONSUMERS"] = str(cap)
    nonce = f"{int(time.time())}"
    asyncio.run(add_changes(database_url, args.changes, nonce))
    port = free_port()
    source = BENCH_DIR.parent
    try:
        with tempfile.TemporaryDirectory(prefix="bench-consumers-") as folder:
            process, worker = start(source, Path(folder) / "service.log", port, 10.0)
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                    baseline = livez_ms(client)
                    print("slow streams", flush=True)
                    slow = streams(client, worker, port, args.slow, b"")
                    print("idle streams", flush=True)
                    idle = streams(client, worker, port, args.idle, b"?after=now")
                    print("abandoned long polls", flush=True)
                    released, gone = abandoned(client, port, args.abandoned)
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
    finally:
        asyncio.run(remove_users(database_url, nonce))

    def latency(probes: list[float]) -> str:
        return f"median {statistics.median(probes):.1f} ms, max {max(probes):.1f} ms"

    rows = [
        (f"{args.slow:,} slow streams from the oldest of {args.changes:,} changes", *slow[0],
         latency(slow[1])),
        (f"{args.idle:,} idle streams from `after=now`", *idle[0], latency(idle[1])),
    ]  # fmt: skip
    section = [
        MARKER,
        "## Careless consumers",
        "",
        f"`{shlex.join(['python', '-m', 'bench.consumers', *argv])}`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, one worker, `FEED_MAX_CONSUMERS={cap}`.",
        "",
        "Neither kind of stream reads (a 4 KiB receive buffer): a slow one has the whole "
        "feed to send, an idle one nothing but its start. "
        f"`/livez`: {PROBES} probes on a kept-alive connection, 50 ms apart, while they "
        f"are open ({latency(baseline)} before any).",
        "",
        markdown_table(("consumers", "RSS before", "with them", "after", "/livez"), rows),
        "",
        f"{args.abandoned:,} long polls (`wait=60`) closed as soon as sent: in flight back "
        f"within 5 in {released:.2f} s after the last close; {gone:,.0f} counted as 499.",
        "",
    ]
    text = args.out.read_text() if args.out.exists() else ""
    kept = text.split(MARKER)[0].rstrip("\n")
    args.out.write_text((kept + "\n\n" if kept else "") + "\n".join(section))
    print("\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
