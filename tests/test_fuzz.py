"""Generated requests: schemathesis from /openapi.json, and hypothesis on the body decoders."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.types import Message

from bench.issuer import AUDIENCE, Issuer
from service import users
from service.app import create_app, routes
from service.bodies import read_json
from service.problems import MEDIA_TYPE, handler_for
from service.schemas import NewUser, UserPatch
from service.scopes import SCOPES
from service.settings import Settings
from tests.conftest import (
    EMPTY_TABLES,
    ROOT,
    Service,
    assert_problem,
    connect,
    statement_cache_size,
)

# Examples per test (and per operation and phase for schemathesis): a quick
# pass by default, as CI runs it; raise it for a deeper run.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
bounded = settings(max_examples=EXAMPLES, deadline=None)
# The client fixture serves every example of a test, which is the point.
bounded_with_client = settings(
    bounded, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# The document is needed to collect the tests, before any database is up, so
# it is fetched from /openapi.json of an app with the routes alone: the
# endpoint builds it from the route table without the lifespan.
# test_the_fuzzed_document_is_the_one_the_service_serves holds it to the real one.
routes_alone = Starlette(routes=routes)
routes_alone.state.settings = Settings()
schema = schemathesis.openapi.from_asgi("/openapi.json", routes_alone)


async def empty_table(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute(EMPTY_TABLES)
    finally:
        await conn.close()


@pytest.fixture
def fuzzed_app(settings: Settings) -> Starlette:
    """The whole app, whose lifespan schemathesis runs on its own loop and ends after the test.

    Not the `app` fixture: that one's pool belongs to pytest's event loop, and
    schemathesis calls the app from a loop in a thread of its own.
    """
    assert settings.database_url is not None
    asyncio.run(empty_table(settings.database_url))
    return create_app(settings)


async def test_the_fuzzed_document_is_the_one_the_service_serves(
    client: httpx.AsyncClient,
) -> None:
    served: dict[str, Any] = (await client.get("/openapi.json")).json()
    assert served == schema.raw_schema


@schema.parametrize()
@settings(bounded, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_every_response_is_as_documented(
    case: schemathesis.Case[Any], fuzzed_app: Starlette
) -> None:
    if isinstance(case.query, dict) and "wait" in case.query:
        # A long poll would hold the case up to a minute when nothing is new;
        # tests/test_changes.py tests waiting, as schemathesis.toml says.
        case.query["wait"] = 0
    case.call_and_validate(app=fuzzed_app, checks=[not_a_server_error, response_schema_conformance])


# The CLI installed beside this Python, as requirements-dev.txt installs it.
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
TOKEN = "a-token-of-16-characters-or-more"  # noqa: S105 - a test's own token


@pytest.mark.parametrize(
    "setting",
    [None, "API_TOKENS", "API_CLIENTS", "JWT_ISSUER", "REQUIRE_IF_MATCH"],
    ids=["open", "API_TOKENS", "API_CLIENTS", "JWT_ISSUER", "REQUIRE_IF_MATCH"],
)
def test_schemathesis_with_every_check_and_phase_finds_nothing(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    services: list[Service],
    database_url: str,
    setting: str | None,
) -> None:
    """As a caller runs it: the CLI against `python -m service`, stateful phase included,
    with each setting that changes the document."""
    asyncio.run(empty_table(database_url))
    env = {"DATABASE_URL": database_url, "DB_STATEMENT_CACHE_SIZE": str(statement_cache_size())}
    auth: list[str] = []
    if setting == "API_TOKENS":
        env["API_TOKENS"] = TOKEN
        auth = ["--header", f"Authorization: Bearer {TOKEN}"]
    if setting == "API_CLIENTS":
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        client = {"name": "fuzzer", "scopes": list(SCOPES), "token_sha256": digest}
        env["API_CLIENTS"] = json.dumps([client])
        auth = ["--header", f"Authorization: Bearer {TOKEN}"]
    if setting == "JWT_ISSUER":
        # An identity provider served over HTTP, found through its discovery
        # document, whose access token holds every scope.
        issuer = Issuer().start()
        request.addfinalizer(issuer.stop)
        env |= {"JWT_ISSUER": issuer.url, "JWT_AUDIENCE": AUDIENCE}
        token = issuer.token(client_id="fuzzer", scope=" ".join(SCOPES))
        auth = ["--header", f"Authorization: Bearer {token}"]
    if setting == "REQUIRE_IF_MATCH":
        env["REQUIRE_IF_MATCH"] = "1"
    service = Service(tmp_path, env)
    services.append(service)
    service.wait_ready()
    # The credentials are taken, so that the run reaches past the token check.
    headers = dict([auth[1].split(": ", 1)]) if auth else {}
    assert httpx.get(f"{service.url}/users", headers=headers, timeout=10).status_code == 200
    run = subprocess.run(
        [
            *(SCHEMATHESIS, "--config-file", str(ROOT / "tests" / "schemathesis.toml")),
            *("run", f"{service.url}/openapi.json"),
            *("--checks", "all", "--max-examples", str(min(EXAMPLES, 30))),
            *("--generation-database", "none", "--no-color", *auth),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout


# What a valid user is, written out again without regular expressions, so that
# a slip in a pattern of service.schemas shows here.
CONTROL = frozenset(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and 1 <= len(name) <= 200 and not CONTROL & set(name)


def is_valid_email(email: object) -> bool:
    if not isinstance(email, str):
        return False
    local, _, domain = email.partition("@")
    return (
        3 <= len(email) <= 254
        and 1 <= len(local) <= 64
        and domain != ""
        and "@" not in domain
        and "/" not in domain
        and not any(character.isspace() for character in email)
        and not CONTROL & set(email)
    )


# Valid values, and text near the rules: their edge characters, control
# characters, lone surrogates, whitespace of other scripts, lengths around each
# limit, and valid text with one of those slipped in.
plain_text = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=30)
valid_emails = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.from_regex(r"[A-Za-z0-9._+/-]{1,64}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9.-]{1,63}", fullmatch=True),
)
edge_characters = st.sampled_from("a@./ \t\n\r\x00\x1f\x7f\x85\x9f\xa0\u2028\u3000\ufeffé")
near_text = st.one_of(
    st.text(edge_characters | st.characters(categories=["Cs"]) | st.characters(), max_size=20),
    st.builds(
        lambda text, extra, at: text[:at] + extra + text[at:],
        plain_text | valid_emails,
        edge_characters,
        st.integers(0, 30),
    ),
    st.integers(0, 260).map(lambda n: "x" * n),
)
near_emails = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", near_text, near_text),
    st.builds(lambda n, m: "a" * n + "@" + "b" * m, st.integers(0, 70), st.integers(0, 260)),
    near_text,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()  # NaN and infinities become JSON's invalid NaN and Infinity
    | near_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(near_text, inner, max_size=4),
    max_leaves=12,
)
names = st.one_of(plain_text, plain_text, near_text, json_values)
emails = st.one_of(valid_emails, valid_emails, near_emails, json_values)
other_objects = st.dictionaries(
    st.sampled_from(["name", "email", "Name", ""]) | near_text, json_values, max_size=3
)
new_users = st.one_of(
    st.fixed_dictionaries({"name": plain_text, "email": valid_emails}),
    st.fixed_dictionaries({"name": names, "email": emails}, optional={"extra": json_values}),
    other_objects,
)
patches = st.one_of(
    st.fixed_dictionaries({"name": plain_text}),
    st.fixed_dictionaries({"name": names}, optional={"email": emails}),
    st.fixed_dictionaries({"email": emails}),
    other_objects,
)


def to_json(value: object, ascii_only: bool) -> bytes:
    # Lone surrogates are \\ud800 escapes with ascii_only, else invalid UTF-8.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def bodies(shape: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Any bytes, JSON of `shape`, that JSON cut short, or arrays nested deep."""
    encoded = st.builds(to_json, shape, st.booleans())
    return st.one_of(
        st.binary(max_size=300),
        encoded,
        encoded,
        encoded,
        st.builds(lambda body, keep: body[:keep], encoded, st.integers(0, 300)),
        st.integers(1, 50_000).map(lambda depth: b"[" * depth + b"]" * depth),
    )


new_user_bodies = bodies(new_users)
bulk_bodies = bodies(st.lists(new_users, max_size=5) | json_values)
patch_bodies = bodies(patches)

TRAILING_NEWLINE_NAME = b'{"name": "Ann\\n", "email": "ann@example.com"}'
TRAILING_NEWLINE_EMAIL = b'{"name": "Ann", "email": "ann@example.com\\n"}'


def request_of(body: bytes, chunk_size: int) -> Request:
    """A POST of `body` in chunks of `chunk_size`, as uvicorn hands it to the app."""
    chunks = [body[start : start + chunk_size] for start in range(0, len(body), chunk_size)]

    async def receive() -> Message:
        if not chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request(scope, receive)


async def read(
    decoder: msgspec.json.Decoder[Any],
    keys: Callable[[Any], int],
    body: bytes,
    limit: int,
    chunk_size: int,
) -> tuple[int, Any]:
    """read_json's value as 200, or the status the app's handlers give its error."""
    request = request_of(body, chunk_size)
    try:
        return 200, await read_json(request, decoder, keys, limit)
    except Exception as exc:
        handler = handler_for(exc)
        if handler is None:
            raise  # nothing maps it to a problem: the app would answer 500
        response = await handler(request, exc)
        assert response.media_type == MEDIA_TYPE
        return response.status_code, None


def assert_read_is_valid_or_4xx(
    status: int, body: bytes, limit: int, valid: Callable[[Any], bool], value: Any
) -> None:
    assert (status == 413) == (len(body) > limit)
    if status == 200:
        assert valid(value), value
    else:
        assert 400 <= status < 500


limits = st.sampled_from([64 * 1024, 64 * 1024, 100])
chunk_sizes = st.integers(1, 400)


def valid_new_user(user: NewUser) -> bool:
    return is_valid_name(user.name) and is_valid_email(user.email)


@given(body=new_user_bodies, limit=limits, chunk_size=chunk_sizes)
@example(body=TRAILING_NEWLINE_NAME, limit=64 * 1024, chunk_size=1)
@example(body=TRAILING_NEWLINE_EMAIL, limit=64 * 1024, chunk_size=1)
@bounded
async def test_the_new_user_decoder_gives_a_valid_user_or_a_4xx(
    body: bytes, limit: int, chunk_size: int
) -> None:
    status, value = await read(users._decode_new_user, users.new_user_keys, body, limit, chunk_size)
    assert_read_is_valid_or_4xx(status, body, limit, valid_new_user, value)


@given(body=bulk_bodies, limit=limits, chunk_size=chunk_sizes)
@example(body=b"[" + TRAILING_NEWLINE_EMAIL + b"]", limit=64 * 1024, chunk_size=7)
@bounded
async def test_the_bulk_decoder_gives_valid_users_or_a_4xx(
    body: bytes, limit: int, chunk_size: int
) -> None:
    status, value = await read(
        users._decode_new_users, users.new_users_keys, body, limit, chunk_size
    )

    def valid(new_users: list[NewUser]) -> bool:
        return all(map(valid_new_user, new_users))

    assert_read_is_valid_or_4xx(status, body, limit, valid, value)


@given(body=patch_bodies, limit=limits, chunk_size=chunk_sizes)
@example(body=b'{"name": "Ann\\n"}', limit=64 * 1024, chunk_size=3)
@bounded
async def test_the_patch_decoder_gives_a_valid_patch_or_a_4xx(
    body: bytes, limit: int, chunk_size: int
) -> None:
    status, value = await read(users._decode_patch, users.patch_keys, body, limit, chunk_size)

    def valid(patch: UserPatch) -> bool:
        name, email = patch.name, patch.email
        return (name, email) != (msgspec.UNSET, msgspec.UNSET) and (
            (name is msgspec.UNSET or is_valid_name(name))
            and (email is msgspec.UNSET or is_valid_email(email))
        )

    assert_read_is_valid_or_4xx(status, body, limit, valid, value)


content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json",
        "application/ld+json; charset=utf-8",
        "text/plain",
    ]
)


def headers_of(content_type: str | None) -> dict[str, str]:
    return {} if content_type is None else {"content-type": content_type}


def assert_4xx_problem(response: httpx.Response, content_type: str | None) -> None:
    assert 400 <= response.status_code < 500, response.text
    assert_problem(response, response.status_code)
    if content_type == "text/plain":
        assert response.status_code == 415


@given(body=new_user_bodies, content_type=content_types)
@bounded_with_client
async def test_create_answers_any_body_with_a_valid_user_or_a_4xx_problem(
    client: httpx.AsyncClient, body: bytes, content_type: str | None
) -> None:
    response = await client.post("/users", content=body, headers=headers_of(content_type))
    if response.status_code == 201:
        user = response.json()
        assert is_valid_name(user["name"])
        assert is_valid_email(user["email"])
        sent = json.loads(body)
        assert (user["name"], user["email"]) == (sent["name"], sent["email"])
    else:
        assert_4xx_problem(response, content_type)


@given(body=bulk_bodies, content_type=content_types)
@bounded_with_client
async def test_bulk_answers_any_body_with_valid_users_or_a_4xx_problem(
    client: httpx.AsyncClient, body: bytes, content_type: str | None
) -> None:
    response = await client.post("/users/bulk", content=body, headers=headers_of(content_type))
    if response.status_code == 201:
        sent = json.loads(body)
        assert response.json() == {"inserted": len(sent)}
        assert all(is_valid_name(user["name"]) and is_valid_email(user["email"]) for user in sent)
    else:
        assert_4xx_problem(response, content_type)


@given(body=patch_bodies, content_type=content_types)
@bounded_with_client
async def test_patch_answers_any_body_with_a_valid_user_or_a_4xx_problem(
    client: httpx.AsyncClient, body: bytes, content_type: str | None
) -> None:
    await client.post("/users", json={"name": "Ann", "email": "ann@example.com"})
    response = await client.patch(
        "/users/ann@example.com", content=body, headers=headers_of(content_type)
    )
    if response.status_code == 200:
        user = response.json()
        assert is_valid_name(user["name"])
        assert is_valid_email(user["email"])
        patch = json.loads(body)
        assert {field: user[field] for field in patch} == patch
    else:
        assert_4xx_problem(response, content_type)


@pytest.mark.parametrize(
    ("body", "field"),
    [(TRAILING_NEWLINE_NAME, "$.name"), (TRAILING_NEWLINE_EMAIL, "$.email")],
)
async def test_a_trailing_newline_is_refused_as_a_control_character(
    client: httpx.AsyncClient, body: bytes, field: str
) -> None:
    response = await client.post("/users", content=body)
    assert assert_problem(response, 422).get("field") == field


async def test_an_after_with_a_trailing_newline_is_not_an_email(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/users", params={"after": "ann@example.com\n"})
    assert assert_problem(response, 422)["field"] == "after"
