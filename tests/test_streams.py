"""Streams of the change feed against a real server: slow, stalled and vanished clients."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Service, connect
from tests.test_overload import rss_kib

# Changes in the feed, and slow streams opened from its oldest: each would
# read the whole feed, about 2 MB, if it were held for it.
CHANGES = 5_000
SLOW_STREAMS = 500
# What the README documents: a slow stream holds at most about 0.2 MB of
# the worker (its write buffer and a page), and what is left after they close.
STREAM_KIB = 200
LEFT_AFTER_KIB = 30 * 1024
LIVEZ_SECONDS = 0.1
# A small receive buffer, so that the kernel takes little of each stream off the worker.
RECEIVE_BUFFER = 4096
STREAM_REQUEST = b"GET /users/changes HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"


async def seed_changes(database_url: str, count: int) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute("TRUNCATE users, memberships, user_changes")
        await conn.execute("UPDATE user_changes_purged SET xid = '0', seq = 0")
        await conn.execute(
            "INSERT INTO users (name, email, attributes)"
            " SELECT 'Seed ' || n, 'seed' || n || '@example.com', '{\"team\": \"platform\"}'"
            " FROM generate_series(1, $1::int) AS n",
            count,
        )
    finally:
        await conn.close()


@pytest.fixture
def seeded(database_url: str) -> Iterator[None]:
    asyncio.run(seed_changes(database_url, CHANGES))
    yield
    asyncio.run(seed_changes(database_url, 0))


def slow_stream(port: int) -> socket.socket:
    """A stream from the oldest change, on a socket that never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.connect(("127.0.0.1", port))
    sock.sendall(STREAM_REQUEST)
    return sock


def read_to_end(sock: socket.socket) -> None:
    while sock.recv(65536):
        pass


def livez_seconds(client: httpx.Client) -> float:
    """How long /livez takes, on a connection kept open: the server's time, not a connect's."""
    began = time.perf_counter()
    assert client.get("/livez").status_code == 200
    return time.perf_counter() - began


def streams_open(service: Service) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    found = re.search(r"^feed_streams_open (\S+)$", text, re.MULTILINE)
    return 0.0 if found is None else float(found[1])


def test_slow_streams_hold_bounded_memory_and_the_worker_stays_responsive(
    seeded: None, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url, "FEED_STALL_SECONDS": "300"})
    services.append(service)
    service.wait_ready()
    with slow_stream(service.port):  # warm up the path, so that RSS starts from its steady size
        time.sleep(1)
    before = rss_kib(service.process.pid)
    sockets: list[socket.socket] = []
    probes: list[float] = []
    try:
        for _ in range(SLOW_STREAMS):
            sockets.append(slow_stream(service.port))
        deadline = time.monotonic() + 20
        while streams_open(service) < SLOW_STREAMS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert streams_open(service) == SLOW_STREAMS
        time.sleep(2)  # each has filled what its socket takes
        with httpx.Client(base_url=service.url, timeout=5) as client:
            livez_seconds(client)  # the connection
            for _ in range(20):
                probes.append(livez_seconds(client))
                time.sleep(0.05)
        during = rss_kib(service.process.pid)
    finally:
        for sock in sockets:
            sock.close()
    deadline = time.monotonic() + 10
    while streams_open(service) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # past the trim of what they freed
    after = rss_kib(service.process.pid)
    print(
        f"\nRSS {before / 1024:.0f} MB, with {SLOW_STREAMS} slow streams {during / 1024:.0f} MB "
        f"({(during - before) / SLOW_STREAMS:.0f} KiB a stream), after {after / 1024:.0f} MB; "
        f"/livez at most {max(probes) * 1000:.0f} ms"
    )
    assert streams_open(service) == 0
    assert during - before < SLOW_STREAMS * STREAM_KIB
    assert max(probes) < LIVEZ_SECONDS
    assert after - before < LEFT_AFTER_KIB


def test_a_stream_whose_client_reads_nothing_is_cut_off_and_logged(
    seeded: None, tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url, "FEED_STALL_SECONDS": "1"})
    services.append(service)
    service.wait_ready()
    with slow_stream(service.port) as sock:
        deadline = time.monotonic() + 10
        while streams_open(service) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert streams_open(service) == 1
        # Its buffers fill within a moment, then a second passes with no read.
        while streams_open(service) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert streams_open(service) == 0
        # The connection was cut: what was buffered is dropped, and reading
        # ends in a reset or an end of stream, with no complete response.
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):
            read_to_end(sock)
    assert re.search(
        r"a stream of /users/changes ended after \d+\.\d s, \d+ events sent: "
        r"its client read nothing for 1 s",
        service.output(),
    ), service.output()


def test_a_stream_whose_client_goes_ends_at_once_and_is_counted_as_499(
    tmp_path: Path, database_url: str, services: list[Service]
) -> None:
    env = {"DATABASE_URL": database_url, "SLOW_REQUEST_MS": "100", "FEED_MAX_CONSUMERS": "1"}
    service = Service(tmp_path, env)
    services.append(service)
    service.wait_ready()
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        sock.sendall(STREAM_REQUEST.replace(b"changes", b"changes?after=now"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while streams_open(service) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert streams_open(service) == 1
        held = httpx.get(f"{service.url}/users/changes?after=now", timeout=5).json()["next"]
        refused = httpx.get(f"{service.url}/users/changes?after={held}&wait=1", timeout=5)
        assert refused.status_code == 503  # the stream holds the worker's one place
        time.sleep(0.5)  # longer than SLOW_REQUEST_MS: streaming is not answering slowly
    closed = time.monotonic()
    while streams_open(service) > 0 and time.monotonic() - closed < 5:
        time.sleep(0.05)
    assert time.monotonic() - closed < 1
    # Its place is free again.
    assert httpx.get(f"{service.url}/users/changes?after={held}&wait=1", timeout=5).is_success
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    assert 'route="/users/changes",status="499"} 1.0' in text
    assert re.search(
        r"INFO +service: a stream of /users/changes ended after \d+\.\d s, 0 events sent: "
        r"its client went",
        service.output(),
    ), service.output()
    assert "WARNING  service.requests" not in service.output()
