"""Graceful shutdown of the web process: with workers, under writes, and hurried."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import ROOT, Service, alive, connect, free_port, responses


def test_sigterm_during_a_burst_of_writes_loses_no_acknowledged_write(
    tmp_path: Path, database_url: str
) -> None:
    asyncio.run(empty_table(database_url))
    port = free_port()
    log = tmp_path / "web.log"
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines())
    process = subprocess.Popen(
        ["sh", "-c", procfile["web"].strip()],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "PORT": str(port), "WEB_CONCURRENCY": "2"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        acknowledged, server_errors, stopped_in = asyncio.run(
            write_through_a_sigterm(f"http://127.0.0.1:{port}", process)
        )
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    workers = [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", output)]

    assert process.returncode == 0, output
    assert stopped_in < 30, output
    assert len(workers) == 2, output
    assert not any(alive(pid) for pid in workers)
    assert server_errors == []
    assert len(acknowledged) > 50  # the burst really ran
    stored = asyncio.run(stored_emails(database_url))
    assert acknowledged <= stored


async def empty_table(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute("TRUNCATE users, memberships")
    finally:
        await conn.close()


async def stored_emails(database_url: str) -> set[str]:
    conn = await connect(database_url)
    try:
        return {row["email"] for row in await conn.fetch("SELECT email FROM users")}
    finally:
        await conn.close()


async def write_through_a_sigterm(
    url: str, process: subprocess.Popen[bytes]
) -> tuple[set[str], list[int], float]:
    """Writers run until the server is gone; SIGTERM lands a second into the burst."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the server did not start"
            try:
                await client.get("/livez")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.2)

        acknowledged: set[str] = set()
        server_errors: list[int] = []

        async def writer(number: int) -> None:
            for n in range(100_000):  # bounded; ends when the server stops answering
                email = f"w{number}-{n}@example.com"
                try:
                    response = await client.post("/users", json={"name": "n", "email": email})
                except httpx.TransportError:
                    return
                if response.status_code == 201:
                    acknowledged.add(email)
                elif response.status_code >= 500:
                    server_errors.append(response.status_code)

        writers = [asyncio.create_task(writer(number)) for number in range(16)]
        await asyncio.sleep(1)
        os.killpg(process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.gather(*writers)
        await asyncio.to_thread(process.wait, 40)
        return acknowledged, server_errors, time.monotonic() - signalled


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_ctrl_c_hurries_the_stop_but_still_closes_the_pool(
    tmp_path: Path, services: list[Service], database_url: str, workers: int
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url, "WEB_CONCURRENCY": str(workers)})
    services.append(service)
    service.wait_ready()
    response, seconds = asyncio.run(ctrl_c_twice_during_a_request(service, database_url))
    output = service.output()

    assert service.process.returncode == 0, output
    assert seconds < 10, output  # not the 20 s a request gets after one Ctrl-C
    assert "Traceback" not in output
    # Each worker shut its app down, closing its pool: the one with the request
    # in flight too, without waiting for it, so that the request got a 503.
    assert output.count("Application shutdown complete.") == workers, output
    assert response.status_code == 503, output


async def ctrl_c_twice_during_a_request(
    service: Service, database_url: str
) -> tuple[httpx.Response, float]:
    """Ctrl-C, and Ctrl-C again, while a request waits on a lock this test holds."""
    holder = await connect(database_url)
    try:
        async with holder.transaction(), httpx.AsyncClient(base_url=service.url) as client:
            await holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            request = asyncio.create_task(client.get("/users?limit=1", timeout=30))
            await until(lambda: waits_on_the_lock(holder))
            os.killpg(service.process.pid, signal.SIGINT)  # as a terminal sends Ctrl-C
            await until(lambda: said(service, "Waiting for connections to close"))
            os.killpg(service.process.pid, signal.SIGINT)
            hurried = time.monotonic()
            response = await request
            await asyncio.to_thread(service.process.wait, 30)
            return response, time.monotonic() - hurried
    finally:
        await holder.close()


async def waits_on_the_lock(holder: asyncpg.Connection) -> bool:
    # Not by application_name, which a pooler such as pgbouncer may not pass on.
    waiting: int = await holder.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return waiting > 0


async def said(service: Service, text: str) -> bool:
    return text in service.output()


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(300):  # 15 s
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


# A POST whose body never ends: it is in flight until the server gives up on it.
UNENDING_POST = (
    b"POST /users HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b'Content-Length: 1000\r\n\r\n{"na'
)


def received_until_closed(sock: socket.socket, seconds: float) -> bytes:
    """All the server sends on `sock` until it closes it, within `seconds`."""
    received = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            data = sock.recv(65536)
            if not data:
                return received
            received += data
    raise AssertionError(f"open after {seconds} s; received {received[:200]!r}")


def test_a_request_still_in_flight_when_a_graceful_stop_runs_out_of_time_gets_a_503_problem(
    tmp_path: Path, services: list[Service], database_url: str
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url, "GRACEFUL_TIMEOUT": "1"})
    services.append(service)
    service.wait_ready()
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(UNENDING_POST)
        time.sleep(0.5)  # the request has reached the endpoint, which waits for the body
        stopped = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        received = received_until_closed(sock, 15)
    assert service.process.wait(30) == 0
    output = service.output()

    assert time.monotonic() - stopped < 10, output
    [(status, headers, body)] = responses(received)
    assert status == 503, received
    assert headers["content-type"] == "application/problem+json"
    assert headers["retry-after"] == "1"
    assert len(headers["x-request-id"]) == 32
    assert json.loads(body)["status"] == 503
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if "POST /users 503" in line]) == 1, output


def test_a_request_a_hurried_stop_leaves_unanswered_is_logged_as_499_not_400(
    tmp_path: Path, services: list[Service], database_url: str
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url})
    services.append(service)
    service.wait_ready()
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(UNENDING_POST)
        time.sleep(0.5)
        os.killpg(service.process.pid, signal.SIGINT)  # Ctrl-C
        asyncio.run(until(lambda: said(service, "Waiting for connections to close")))
        os.killpg(service.process.pid, signal.SIGINT)  # and again
        received = received_until_closed(sock, 15)
    assert service.process.wait(30) == 0
    output = service.output()

    assert received == b""  # no answer at all
    assert "POST /users 499" in output, output
    assert "POST /users 400" not in output, output
