"""Request bodies: media types, size limits, and malformed or hostile JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from msgspec.structs import replace

from service.bodies import is_json
from service.settings import Settings
from tests.conftest import assert_problem, client_of

USER = b'{"name": "Ann", "email": "ann@example.com"}'
JSON_TYPE = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/problem+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("application/jsonx", False),
        ("", False),
    ],
)
def test_is_json(content_type: str, expected: bool) -> None:
    assert is_json(content_type) is expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"name": "Ann", "email": "ann@example.com"',
        b'{"name": "Ann" "email": "ann@example.com"}',
        b"{'name': 'Ann'}",
        b'{"name": "Ann", "email": "ann@example.com"} trailing',
        b"\xff\xfe{}",
        b'{"name": "\xc3\x28", "email": "ann@example.com"}',
        b'{"name": "\xed\xa0\x80", "email": "ann@example.com"}',
        b'{"name": "\\ud800", "email": "ann@example.com"}',
        b'{"name": "\\udc00x", "email": "ann@example.com"}',
        b'{"name": "NaN", "email": "ann@example.com", }',
    ],
)
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, db: asyncpg.Pool, body: bytes
) -> None:
    response = await client.post(
        "/users", content=body, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 400)
    assert problem["detail"].startswith("Malformed JSON")
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "nul\\u0000", "email": "ann@example.com"}',
        b'{"name": "Ann", "email": "ann\\u0000@example.com"}',
        b'{"name": 1e400, "email": "ann@example.com"}',
        b'{"name": ' + b"9" * 5000 + b', "email": "ann@example.com"}',
        b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b', "email": "a@b.c"}',
        b"[" * 100_000 + b"]" * 100_000,
        b"{" * 30_000,
    ],
)
async def test_hostile_json_is_a_4xx_problem_and_stores_nothing(
    client: httpx.AsyncClient, db: asyncpg.Pool, body: bytes
) -> None:
    for path in ("/users", "/users/bulk"):
        response = await client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code in (400, 413, 422), response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_a_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    name = "x" * (64 * 1024)
    response = await client.post("/users", json={"name": name, "email": "a@example.com"})
    assert_problem(response, 413)


@pytest.fixture
async def small_client(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(replace(settings, max_body_bytes=100, max_bulk_bytes=1000)) as client:
        yield client


async def test_body_limits_are_configurable(
    small_client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    fits = {"name": "x" * 40, "email": "a@example.com"}
    assert (await small_client.post("/users", json=fits)).status_code == 201
    too_big = {"name": "x" * 90, "email": "b@example.com"}
    assert_problem(await small_client.post("/users", json=too_big), 413)
    bulk = [{"name": "n", "email": f"u{i}@example.com"} for i in range(30)]
    assert_problem(await small_client.post("/users/bulk", json=bulk), 413)
    assert (await small_client.post("/users/bulk", json=bulk[:10])).status_code == 201


async def test_413_comes_before_a_streamed_body_is_read_in_full(
    small_client: httpx.AsyncClient,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b" " * 50

    response = await small_client.post(
        "/users", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)
    assert sent < 10


async def test_413_comes_from_content_length_alone(small_client: httpx.AsyncClient) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 1
            yield b" " * 1000

    response = await small_client.post(
        "/users",
        content=chunks(),
        headers={"content-type": "application/json", "content-length": "100000"},
    )
    assert_problem(response, 413)
    assert sent == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/users", b'{"name": "A", "email": "a@x.io", "email": "b@x.io"}', "$.email"),
        ("POST", "/users", b'{"name": "A", "name": "B", "email": "a@x.io"}', "$.name"),
        ("POST", "/users", b'{"name": "A", "email": "a@x.io", "\\u0065mail": "b@x.io"}', "$.email"),
        ("POST", "/users", b'{"name": "A:", "email": "a@x.io", "email": "b@x.io"}', "$.email"),
        (
            "POST",
            "/users/bulk",
            b'[{"name": "A", "email": "a@x.io"}, {"name": "B", "email": "b@x.io"},'
            b' {"name": "C", "email": "c@x.io", "email": "d@x.io"}]',
            "$[2].email",
        ),
        ("PATCH", "/users/ann@example.com", b'{"name": "A", "name": "B"}', "$.name"),
        ("PATCH", "/users/ann@example.com", b'{"email": "a@x.io", "email": "b@x.io"}', "$.email"),
    ],
)
async def test_a_key_repeated_in_a_json_object_is_422_naming_it(
    client: httpx.AsyncClient, db: asyncpg.Pool, method: str, path: str, body: bytes, field: str
) -> None:
    assert (await client.post("/users", content=USER)).status_code == 201
    response = await client.request(method, path, content=body, headers=JSON_TYPE)
    problem = assert_problem(response, 422)
    assert problem["field"] == field
    assert field in problem["detail"]
    stored = await db.fetch("SELECT name, email FROM users")
    assert [tuple(row) for row in stored] == [("Ann", "ann@example.com")]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/users", b'{"name": "Dr: A", "email": "a:b@x.io"}'),
        (
            "POST",
            "/users/bulk",
            b'[{"name": "A:", "email": "a@x.io"}, {"name": "B", "email": "b@x.io"}]',
        ),
        ("PATCH", "/users/ann@example.com", b'{"name": "{\\"name\\": 1, \\"name\\": 2}"}'),
    ],
)
async def test_colons_and_keys_inside_strings_are_no_repeated_key(
    client: httpx.AsyncClient, db: asyncpg.Pool, method: str, path: str, body: bytes
) -> None:
    assert (await client.post("/users", content=USER)).status_code == 201
    response = await client.request(method, path, content=body, headers=JSON_TYPE)
    assert response.status_code in (200, 201), response.text


BODY_PATHS = [
    ("POST", "/users", USER),
    ("POST", "/users/bulk", b"[" + USER + b"]"),
    ("PATCH", "/users/ann@example.com", b'{"name": "Bo"}'),
]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "identity, gzip", "x-unknown"])
@pytest.mark.parametrize(("method", "path", "body"), BODY_PATHS)
async def test_a_content_coding_other_than_identity_is_415_with_accept_encoding(
    client: httpx.AsyncClient, db: asyncpg.Pool, coding: str, method: str, path: str, body: bytes
) -> None:
    headers = {**JSON_TYPE, "Content-Encoding": coding}
    response = await client.request(method, path, content=body, headers=headers)
    problem = assert_problem(response, 415)
    assert response.headers["accept-encoding"] == "identity"
    assert "Content-Encoding" in problem["detail"]
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_a_content_coding_of_identity_is_read_as_the_body(client: httpx.AsyncClient) -> None:
    headers = {**JSON_TYPE, "Content-Encoding": "Identity"}
    assert (await client.post("/users", content=USER, headers=headers)).status_code == 201


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-16",
        "application/json; charset=UTF-16LE",
        'application/json; charset="iso-8859-1"',
        "application/json;charset=latin1",
        "application/json; charset=utf-8; charset=utf-16",
        "application/json; charset=",
    ],
)
@pytest.mark.parametrize(("method", "path", "body"), BODY_PATHS)
async def test_a_charset_other_than_utf_8_is_415(
    client: httpx.AsyncClient,
    db: asyncpg.Pool,
    content_type: str,
    method: str,
    path: str,
    body: bytes,
) -> None:
    headers = {"Content-Type": content_type}
    response = await client.request(method, path, content=body, headers=headers)
    problem = assert_problem(response, 415)
    assert "charset" in problem["detail"]
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "application/json; charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/json ; Charset = utf-8",
        "application/merge-patch+json; charset=utf-8",
    ],
)
async def test_a_charset_of_utf_8_in_any_spelling_is_accepted(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post("/users", content=USER, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
