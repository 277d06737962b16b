"""Request IDs, log lines and the last-resort 500, as seen from outside."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from msgspec.structs import replace

from service.logs import JsonFormatter, RequestIdFilter, TextFormatter, request_id
from service.settings import Settings
from tests.conftest import client_of


def request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "service.requests"]


async def test_a_valid_request_id_is_kept_and_echoed(client: httpx.AsyncClient) -> None:
    given = "Abc123+/=-" * 3
    response = await client.get("/users", headers={"X-Request-ID": given})
    assert response.headers["x-request-id"] == given


@pytest.mark.parametrize(
    "given", ["short", "x" * 201, "has spaces in it, twenty+", "semi;colons;are;not;ok;", ""]
)
async def test_an_unusable_request_id_is_replaced(client: httpx.AsyncClient, given: str) -> None:
    response = await client.get("/users", headers={"X-Request-ID": given})
    made = response.headers["x-request-id"]
    assert made != given
    assert len(made) == 32


async def test_every_response_gets_a_request_id_even_errors(client: httpx.AsyncClient) -> None:
    for response in [await client.get("/users/nobody@x.io"), await client.get("/nowhere")]:
        assert len(response.headers["x-request-id"]) == 32


async def test_an_error_is_logged_with_method_route_status_duration_and_request_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    given = "trace-0123456789abcdef"
    await client.get("/users/nobody@x.io", headers={"X-Request-ID": given})
    [line] = request_lines(caplog)
    assert line.levelno == logging.INFO
    assert line.method == "GET"  # type: ignore[attr-defined]
    assert line.route == "/users/{user}"  # type: ignore[attr-defined]
    assert line.status == 404  # type: ignore[attr-defined]
    assert line.duration_ms >= 0  # type: ignore[attr-defined]
    assert line.request_id == given  # type: ignore[attr-defined]


async def test_a_success_is_not_logged_by_default(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await client.get("/users")
    assert request_lines(caplog) == []


async def test_probes_are_never_logged_at_info(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await client.get("/livez")
    await client.get("/readyz")
    assert request_lines(caplog) == []


@pytest.fixture
async def chatty_client(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """ACCESS_LOG=1 and every request counted as slow."""
    async with client_of(replace(settings, access_log=True, slow_request_ms=0)) as client:
        yield client


async def test_slow_requests_are_warnings_and_the_access_log_lists_every_request(
    chatty_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await chatty_client.get("/users")
    await chatty_client.get("/livez")
    lines = request_lines(caplog)
    assert [line.levelno for line in lines] == [logging.WARNING, logging.DEBUG]
    assert lines[0].route == "/users"  # type: ignore[attr-defined]


@pytest.fixture
async def access_client(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(replace(settings, access_log=True)) as client:
        yield client


async def test_access_log_writes_a_line_for_every_request(
    access_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await access_client.get("/users")
    await access_client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    assert [line.status for line in request_lines(caplog)] == [200, 201]  # type: ignore[attr-defined]


def make_record() -> logging.LogRecord:
    record = logging.LogRecord(
        "service.requests", logging.ERROR, __file__, 1, "GET %s", ("/x",), None
    )
    record.method, record.route, record.status, record.duration_ms = "GET", "/x", 500, 1.5
    return record


def test_json_lines_carry_the_request_fields() -> None:
    token = request_id.set("req-0123456789abcdefghij")
    try:
        record = make_record()
        RequestIdFilter().filter(record)
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id.reset(token)
    assert line["message"] == "GET /x"
    assert line["level"] == "ERROR"
    assert line["request_id"] == "req-0123456789abcdefghij"
    assert (line["method"], line["route"], line["status"], line["duration_ms"]) == (
        "GET",
        "/x",
        500,
        1.5,
    )
    assert line["time"].endswith("+00:00")


def test_text_lines_carry_the_same_fields() -> None:
    record = make_record()
    RequestIdFilter().filter(record)
    text = TextFormatter().format(record)
    assert text.startswith("ERROR    service.requests: GET /x")
    assert "status=500" in text
    assert "duration_ms=1.5" in text
