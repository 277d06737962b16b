"""Hostile HTTP against a real server: slow, lying, oversized and pipelined requests."""

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
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from tests.conftest import Service, connect, responses

# The server runs with short deadlines for a request's head and body, so that
# a slow sender is cut off within seconds.
HEAD_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
# Every case is over (answered, or the connection closed) within this many seconds.
CASE_SECONDS = 10.0
# How much the worker may grow while a case runs.
GROWTH_MB = 50
MB = 1024 * 1024

JSON = b"Content-Type: application/json"
CLOSE = b"Connection: close"
USER = b'{"name": "Ann", "email": "ann@example.com"}'


class Server:
    """`python -m service` on the test database, and its one worker process."""

    def __init__(self, service: Service) -> None:
        self.port = service.port
        self.url = service.url
        started = re.search(r"Started server process \[(\d+)\]", service.output())
        assert started, service.output()
        self.worker = int(started[1])

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.worker}/status").read_text()
        kilobytes = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert kilobytes, status
        return int(kilobytes[1]) / 1024

    def assert_serving(self) -> None:
        """Others are served: a probe, and a request that reaches the database."""
        assert httpx.get(f"{self.url}/livez", timeout=5).status_code == 200
        assert httpx.get(f"{self.url}/users?limit=1", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Server]:
    env = {
        "DATABASE_URL": database_url,
        "HEAD_TIMEOUT": str(HEAD_TIMEOUT),
        "BODY_TIMEOUT": str(BODY_TIMEOUT),
    }
    service = Service(tmp_path_factory.mktemp("hostile"), env)
    try:
        service.wait_ready()
        yield Server(service)
    finally:
        os.killpg(service.process.pid, signal.SIGTERM)
        try:
            service.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait()


@pytest.fixture
def empty_table(database_url: str) -> None:
    async def truncate() -> None:
        conn = await connect(database_url)
        try:
            await conn.execute("TRUNCATE users, memberships RESTART IDENTITY")
        finally:
            await conn.close()

    asyncio.run(truncate())


class Connection:
    """A raw connection to the server: what came back, whether it was closed, the peak RSS."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=CASE_SECONDS)
        self.started = time.monotonic()
        self.received = b""
        self.closed = False  # by the server
        self.rss_at_start_mb = self.peak_rss_mb = server.rss_mb()

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def send(self, data: bytes) -> None:
        """Send all of `data`, unless the server closes the connection first."""
        for start in range(0, len(data), MB):
            if self.closed:
                return
            try:
                self.sock.sendall(data[start : start + MB])
            except (BrokenPipeError, ConnectionResetError):
                self.closed = True
            self.peak_rss_mb = max(self.peak_rss_mb, self.server.rss_mb())

    def read_some(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        self.received += data
        self.closed = self.closed or not data

    def answered(self, wait: float) -> bool:
        """Whether an answer or a close has come, waiting up to `wait` seconds for one."""
        if not (self.received or self.closed):
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                self.read_some()
        return bool(self.received) or self.closed

    def read_until_closed(self) -> None:
        deadline = self.started + CASE_SECONDS
        while not self.closed:
            left = deadline - time.monotonic()
            assert left > 0, f"open after {CASE_SECONDS} s; received {self.received[:200]!r}"
            if select.select([self.sock], [], [], left)[0]:
                self.read_some()

    def statuses(self) -> list[int]:
        return [status for status, _, _ in responses(self.received)]

    def assert_4xx_or_closed(self) -> None:
        """Each answer on the connection is a 4xx, or there is none and it was closed."""
        assert self.statuses() or self.closed, self.received[:200]
        assert all(400 <= status < 500 for status in self.statuses()), self.received[:200]

    def assert_harmless(self) -> None:
        """Over within the time, the worker did not grow much, and others are served."""
        assert self.seconds() < CASE_SECONDS
        assert self.peak_rss_mb - self.rss_at_start_mb < GROWTH_MB
        self.server.assert_serving()


@pytest.fixture
def conn(server: Server) -> Iterator[Connection]:
    opened = Connection(server)
    yield opened
    opened.sock.close()


def request(method: str, target: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method.encode(), target), b"Host: 127.0.0.1", *headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_a_body_sent_a_byte_at_a_time_is_cut_off_after_the_body_timeout(
    conn: Connection, server: Server
) -> None:
    conn.send(request("POST", b"/users", JSON, b"Content-Length: 1000") + b"{")
    server.assert_serving()  # while this one trickles
    # Five bytes a second would take 200 s to send the whole body.
    while not conn.answered(wait=0.2) and conn.seconds() < BODY_TIMEOUT + 5:
        conn.send(b" ")
    assert conn.answered(wait=0), f"held open for {conn.seconds():.0f} s by a trickling body"
    conn.read_until_closed()
    assert conn.statuses() == [408]
    conn.assert_harmless()


def test_a_body_short_of_its_content_length_is_cut_off_after_the_body_timeout(
    conn: Connection,
) -> None:
    conn.send(request("POST", b"/users", JSON, b"Content-Length: 1000") + USER)
    assert conn.answered(wait=BODY_TIMEOUT + 5), "held open by a body that never ends"
    conn.read_until_closed()
    assert conn.statuses() == [408]
    conn.assert_harmless()


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off_after_the_head_timeout(
    conn: Connection,
) -> None:
    head = request("GET", b"/livez", *(b"X-Slow-%d: loris" % i for i in range(100)))
    for byte in head[: int((HEAD_TIMEOUT + 5) / 0.1)]:
        if conn.answered(wait=0.1):
            break
        conn.send(bytes([byte]))
    assert conn.answered(wait=0), f"held open for {conn.seconds():.0f} s by a trickling head"
    conn.read_until_closed()
    conn.assert_4xx_or_closed()
    conn.assert_harmless()


def posts_to_users(server: Server) -> dict[str, float]:
    """POST /users counts in /metrics, by status."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    pattern = r'http_requests_total\{client="",method="POST",route="/users",status="(\d+)"\} (\S+)'
    return {status: float(count) for status, count in re.findall(pattern, text)}


def test_a_client_that_hangs_up_mid_body_is_not_a_server_error(server: Server) -> None:
    before = sum(posts_to_users(server).values())
    before_unanswered = posts_to_users(server).get("499", 0)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=CASE_SECONDS) as sock:
            sock.sendall(request("POST", b"/users", JSON, b"Content-Length: 1000") + b'{"na')
    deadline = time.monotonic() + CASE_SECONDS
    while sum(posts_to_users(server).values()) < before + 3:
        assert time.monotonic() < deadline, "the hung-up requests were never counted"
        time.sleep(0.1)
    assert not [status for status in posts_to_users(server) if status.startswith("5")]
    # They got no answer, and are counted as such, not as a 400 nobody saw.
    assert posts_to_users(server).get("499", 0) == before_unanswered + 3
    server.assert_serving()


def test_a_body_longer_than_its_content_length_ends_in_4xx_or_a_close(conn: Connection) -> None:
    conn.send(request("POST", b"/users", JSON, b"Content-Length: 5") + USER)
    conn.read_until_closed()  # the rest of the body is no request
    conn.assert_4xx_or_closed()
    conn.assert_harmless()


# Built when a case runs, not at import: together they are over 40 MB.
OVERSIZED: dict[str, Callable[[], bytes]] = {
    "10,000 headers": lambda: request(
        "GET", b"/livez", *(b"X-Header-%05d: value" % i for i in range(10_000)), CLOSE
    ),
    "a 1 MB header": lambda: request("GET", b"/livez", b"X-Big: " + b"a" * MB, CLOSE),
    "32 MB of headers": lambda: request(
        "GET", b"/livez", *[b"X-Pad: " + b"a" * 1000] * 32_000, CLOSE
    ),
    "a 1 MB path": lambda: request("GET", b"/users/" + b"a" * MB, CLOSE),
    "a 1 MB email in a path": lambda: request("GET", b"/users/" + b"a" * MB + b"@x.io", CLOSE),
    "a 1 MB query string": lambda: request("GET", b"/users?after=" + b"a" * MB, CLOSE),
    "a 1 MB number in a query": lambda: request("GET", b"/users?limit=" + b"9" * MB, CLOSE),
    "a 1 MB query of nothing": lambda: request("GET", b"/users?" + b"&" * MB, CLOSE),
    # Under uvicorn's limit of 64 KiB for a URL, so the service itself answers.
    "a 60 KB email in a path": lambda: request("GET", b"/users/" + b"a" * 60_000 + b"@x.io", CLOSE),
    "a 60 KB query string": lambda: request("GET", b"/users?after=" + b"a" * 60_000, CLOSE),
    "a 60 KB number in a query": lambda: request("GET", b"/users?offset=" + b"9" * 60_000, CLOSE),
}


@pytest.mark.parametrize("make", OVERSIZED.values(), ids=OVERSIZED.keys())
def test_an_oversized_request_head_is_refused(conn: Connection, make: Callable[[], bytes]) -> None:
    conn.send(make())
    conn.read_until_closed()
    conn.assert_4xx_or_closed()
    conn.assert_harmless()


@pytest.mark.parametrize(
    "make",
    [
        lambda: request("GET", b"/livez", b"X-Big: " + b"a" * 100_000, CLOSE),
        lambda: request("GET", b"/livez", *[b"X-Pad-%d: %s" % (n, b"a" * 990) for n in range(70)]),
        # Two pipelined requests in one write, the second with the large head.
        lambda: request("GET", b"/livez") + request("GET", b"/livez", b"X-Big: " + b"a" * 70_000),
    ],
    ids=["one 100 KB header", "70 KB of headers", "pipelined"],
)
def test_a_head_over_64_kib_is_refused_even_in_a_single_write(
    conn: Connection, make: Callable[[], bytes]
) -> None:
    conn.sock.sendall(make())
    conn.read_until_closed()
    *served, (status, headers, body) = responses(conn.received)
    assert_refusal_problem(status, headers, body, 431)
    assert all(status == 200 for status, _, _ in served)
    conn.assert_harmless()


def assert_refusal_problem(
    status: int, headers: dict[str, str], body: bytes, expected: int
) -> None:
    """A problem as the app's own, with a request ID, on a connection the server closes."""
    assert status == expected, body
    assert headers["content-type"] == "application/problem+json"
    assert len(headers["x-request-id"]) == 32
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["type"] == "about:blank"
    assert problem["status"] == expected
    assert problem["title"] == HTTPStatus(expected).phrase
    assert problem["detail"]


# Requests uvicorn's parser refuses before the app sees them.
NOT_HTTP = {
    "a DEL in a header": request("GET", b"/livez", b"X-Odd: a\x7fb"),
    "raw UTF-8 in the path": request("GET", "/users/é@x.io".encode()),
    "a Content-Length that is not a number": request("POST", b"/users", b"Content-Length: abc"),
    "a negative Content-Length": request("POST", b"/users", b"Content-Length: -1"),
    "Content-Length with Transfer-Encoding": request(
        "POST", b"/users", b"Content-Length: 5", b"Transfer-Encoding: chunked"
    )
    + b"0\r\n\r\n",
    "a folded header": request("GET", b"/livez", b"X-Odd: a", b" b"),
    "HTTP/1.2": request("GET", b"/livez").replace(b"HTTP/1.1", b"HTTP/1.2", 1),
    "an unknown method": request("BREW", b"/livez"),
}


@pytest.mark.parametrize("sent", NOT_HTTP.values(), ids=NOT_HTTP.keys())
def test_a_request_the_http_parser_refuses_gets_a_400_problem(
    conn: Connection, sent: bytes
) -> None:
    conn.send(sent)
    conn.read_until_closed()
    [(status, headers, body)] = responses(conn.received)
    assert_refusal_problem(status, headers, body, 400)
    conn.assert_harmless()


def refusals(server: Server) -> float:
    """Requests the parser refused, in /metrics: they have no method or route."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    pattern = r'http_requests_total\{client="",method="-",route="unmatched",status="400"\} (\S+)'
    return sum(float(count) for count in re.findall(pattern, text))


def test_a_request_the_http_parser_refuses_is_counted(server: Server) -> None:
    before = refusals(server)
    conn = Connection(server)
    try:
        conn.send(NOT_HTTP["an unknown method"])
        conn.read_until_closed()
    finally:
        conn.sock.close()
    assert refusals(server) == before + 1


@pytest.mark.parametrize(
    "path",
    [
        b"/users/%2F",
        b"/users/%2F%2F",
        b"/users/%2E%2E",
        b"/users/%2e%2e",
        b"/users/..%2F..",
        b"/users/..%2F..%2F..%2Fetc%2Fpasswd",
        b"/users/%2E%2E%2Fopenapi.json",
        b"/users/%2E%2E%2F%2E%2E%2Flivez",
        b"/users/../openapi.json",
        b"/users/%252E%252E%252F",
        b"/users/ann%40example.com%2F..%2F..",
    ],
)
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_encoded_slashes_and_dots_in_the_email_name_no_user(
    conn: Connection, method: str, path: bytes
) -> None:
    body = b'{"name": "Bo"}' if method == "PATCH" else b""
    conn.send(request(method, path, JSON, CLOSE, body=body))
    conn.read_until_closed()
    [(status, headers, _)] = responses(conn.received)
    assert status == 404
    assert headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path", [b"/users/..%2F..@example.com", b"/users/%2E%2E%2F%2e%2e@Example.com"]
)
def test_an_email_with_slashes_and_dots_is_decoded_once_and_never_resolved(
    server: Server, empty_table: None, path: bytes
) -> None:
    created = httpx.post(
        f"{server.url}/users", json={"name": "Dots", "email": "../..@example.com"}, timeout=5
    )
    assert created.status_code == 201
    for method, expected in [("GET", 200), ("DELETE", 204), ("GET", 404)]:
        conn = Connection(server)
        try:
            conn.send(request(method, path, CLOSE))
            conn.read_until_closed()
        finally:
            conn.sock.close()
        assert conn.statuses() == [expected]


def test_pipelined_requests_are_answered_in_order(conn: Connection, empty_table: None) -> None:
    sent = [
        ("POST", b"/users", USER, 201),
        ("GET", b"/users/ann@example.com", b"", 200),
        ("PATCH", b"/users/ANN@example.com", b'{"name": "Annie"}', 200),
        ("GET", b"/users?limit=5", b"", 200),
        ("POST", b"/users", b"{", 400),
        ("GET", b"/livez", b"", 200),
        ("DELETE", b"/users/ann@example.com", b"", 204),
        ("GET", b"/users/ann@example.com", b"", 404),
    ]
    ids = [b"pipelined-request-%04d" % number for number in range(len(sent))]
    conn.send(
        b"".join(
            request(method, path, JSON, b"X-Request-ID: " + id_, body=body)
            for (method, path, body, _), id_ in zip(sent, ids, strict=True)
        )
        + request("GET", b"/livez", CLOSE)
    )
    conn.read_until_closed()
    answers = responses(conn.received)
    assert [status for status, _, _ in answers] == [*(status for *_, status in sent), 200]
    assert [headers["x-request-id"].encode() for _, headers, _ in answers[:-1]] == ids
    assert b'"name":"Annie"' in answers[2][2]
    conn.assert_harmless()


def answer_once(server: Server, method: str, path: bytes, body: bytes = b"") -> int:
    """The status of one request on a connection of its own."""
    conn = Connection(server)
    try:
        conn.send(request(method, path, JSON, CLOSE, body=body))
        conn.read_until_closed()
    finally:
        conn.sock.close()
    [status] = conn.statuses()
    return status


# What a path segment may end in that makes it no email and no id.
TRAILERS = [b"%0A", b"%0D", b"%0D%0A", b"%00", b"%20", b"%09", b"/%0A", b"%0A/"]


@pytest.mark.parametrize("trailer", TRAILERS)
def test_a_user_path_with_anything_after_the_email_or_id_names_no_user(
    server: Server, empty_table: None, trailer: bytes
) -> None:
    created = httpx.post(
        f"{server.url}/users", json={"name": "Vic", "email": "victim@example.com"}, timeout=5
    )
    assert created.status_code == 201
    id_ = created.json()["id"].encode()
    for name in [b"victim@example.com", id_, id_.upper()]:
        for method, body in [("GET", b""), ("PATCH", b'{"name": "Eve"}'), ("DELETE", b"")]:
            assert answer_once(server, method, b"/users/" + name + trailer, body) == 404
    assert answer_once(server, "GET", b"/users/" + id_ + b"junk") == 404
    assert httpx.get(f"{server.url}/users/victim@example.com", timeout=5).json()["name"] == "Vic"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", b"/users%0A"),
        ("POST", b"/users/bulk%0A"),
        ("GET", b"/users%0A"),
        ("GET", b"/livez%0A"),
        ("GET", b"/readyz%0A"),
        ("GET", b"/metrics%0A"),
        ("GET", b"/openapi.json%0A"),
    ],
)
def test_a_path_with_a_final_newline_is_no_route(
    server: Server, empty_table: None, method: str, path: bytes
) -> None:
    body = {b"/users%0A": USER, b"/users/bulk%0A": b"[" + USER + b"]"}.get(path, b"")
    assert answer_once(server, method, path, body) == 404
    assert httpx.get(f"{server.url}/users", timeout=5).json() == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", b"/users"), ("POST", b"/users/bulk"), ("PATCH", b"/users/ann@example.com")],
)
def test_an_http_1_0_body_without_content_length_is_411(
    conn: Connection, empty_table: None, method: str, path: bytes
) -> None:
    conn.send(
        b"%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%s\r\n\r\n%s" % (method.encode(), path, JSON, USER)
    )
    conn.sock.shutdown(socket.SHUT_WR)  # HTTP/1.0: the end of the body is the end of the stream
    conn.read_until_closed()
    [(status, headers, body)] = responses(conn.received)
    assert status == 411
    assert headers["content-type"] == "application/problem+json"
    assert b"Content-Length" in body
    assert httpx.get(f"{conn.server.url}/users", timeout=5).json() == []


def test_an_http_1_0_body_with_content_length_is_read(conn: Connection, empty_table: None) -> None:
    conn.send(request("POST", b"/users", JSON, body=USER).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    conn.read_until_closed()
    assert conn.statuses() == [201]


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(
    conn: Connection,
) -> None:
    assert not conn.answered(wait=HEAD_TIMEOUT / 2)  # open a while: a client may be slow to send
    assert conn.answered(wait=HEAD_TIMEOUT + 3), f"held open for {conn.seconds():.0f} s silent"
    assert (conn.received, conn.closed) == (b"", True)
    assert conn.seconds() < HEAD_TIMEOUT + 3


def test_a_connection_idle_between_requests_is_kept_past_the_head_timeout(
    conn: Connection,
) -> None:
    conn.send(request("GET", b"/livez"))
    assert conn.answered(wait=5)
    assert conn.statuses() == [200]
    time.sleep(HEAD_TIMEOUT + 1)
    conn.send(request("GET", b"/livez", CLOSE))
    conn.read_until_closed()
    assert conn.statuses() == [200, 200]


@pytest.mark.parametrize(
    "upgrade",
    [[b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA"],
     [b"Upgrade: websocket", b"Sec-WebSocket-Version: 13",
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]],
    ids=["h2c", "websocket"],
)  # fmt: skip
def test_an_upgrade_is_ignored_and_the_connection_closed_after_the_answer(
    conn: Connection, upgrade: list[bytes]
) -> None:
    conn.send(request("GET", b"/users/nobody@x.io", b"Connection: Upgrade", *upgrade))
    conn.read_until_closed()
    [(status, headers, _)] = responses(conn.received)
    assert status == 404
    assert headers["content-type"] == "application/problem+json"
    assert "x-request-id" in headers
    assert conn.seconds() < HEAD_TIMEOUT
