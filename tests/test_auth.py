"""Callers: static clients and API_TOKENS, each route's scope, and the refusals (RFC 6750)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from msgspec.structs import replace

from service.app import routes
from service.routes import Route
from service.scopes import OPEN, SCOPES, ScopeName
from service.settings import Client, Settings
from tests.conftest import ROOT, Service, assert_problem, client_of

TOKENS = ("first-token-0123456789", "second-token-0123456789")
SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
REALM = 'Bearer realm="users"'
# A path that each route template serves.
EXAMPLES = {
    "{user:user}": "ann@x.io",
    "{id}": "9b1f2c4e-0d1a-4c2b-8e3f-5a6b7c8d9e0f",
    "{group:group}": "0c6b1d2e-3f4a-4b5c-8d6e-7f8091a2b3c4",
    "{rest:path}": "x",
}


def token_of(scope: str) -> str:
    return f"token-holding-{scope}-only"


def client(name: str, token: str, scopes: set[ScopeName]) -> Client:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return Client(name=name, scopes=frozenset(scopes), token_sha256=digest)


def holder(scopes: tuple[ScopeName, ...]) -> str:
    """The name of the client holding these scopes and no other."""
    return "+".join(scopes)


# One client holding each scope alone, one holding every scope but it, and one
# holding just the scopes of each route that needs several.
CLIENTS = (
    tuple(client(scope, token_of(scope), {scope}) for scope in SCOPES)
    + tuple(
        client(f"all-but-{scope}", f"all-but-{scope}", set(SCOPES) - {scope}) for scope in SCOPES
    )
    + tuple(
        client(holder(scopes), token_of(holder(scopes)), set(scopes))
        for scopes in {route.scopes for route in routes if isinstance(route, Route)}
        if len(scopes) > 1
    )
)


def path_of(route: Route) -> str:
    path = route.path
    for template, example in EXAMPLES.items():
        path = path.replace(template, example)
    return path


# Every method of every route that needs a scope, derived from the route table,
# with the scopes it needs; GUARDED_EACH, once for each of them.
GUARDED = [
    pytest.param(method, path_of(route), route.scopes, id=f"{method} {route.path}")
    for route in routes
    if isinstance(route, Route) and route.scopes
    for method in sorted(set(route.methods or ()) - {"HEAD"})
]
GUARDED_EACH = [
    pytest.param(method, path_of(route), scope, route.scopes, id=f"{method} {route.path} {scope}")
    for route in routes
    if isinstance(route, Route)
    for scope in route.scopes
    for method in sorted(set(route.methods or ()) - {"HEAD"})
]


@pytest.fixture
async def guarded(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(replace(settings, api_clients=CLIENTS, api_tokens=TOKENS)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_route_names_its_scope_or_says_it_is_open() -> None:
    for route in routes:
        assert isinstance(route, Route), f"{route!r} is not a service.routes.Route"
        assert all(scope in SCOPES for scope in route.scopes), route.path
        if route.path.startswith("/scim/v2"):
            assert route.scope == "scim", route.path
    open_paths = {
        route.path for route in routes if isinstance(route, Route) and route.scope is OPEN
    }
    assert open_paths == {"/livez", "/readyz", "/metrics", "/openapi.json"}


def test_every_scope_grants_some_route() -> None:
    granted = {scope for route in routes if isinstance(route, Route) for scope in route.scopes}
    assert granted == set(SCOPES)


def test_a_route_with_an_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="users:write"):
        Route("/users", routes[0].endpoint, methods=["GET"], scope="users:write")  # type: ignore[arg-type]


@pytest.mark.parametrize(("method", "path", "scopes"), GUARDED)
async def test_a_client_holding_the_scope_passes(
    guarded: httpx.AsyncClient, method: str, path: str, scopes: tuple[ScopeName, ...]
) -> None:
    token = token_of(holder(scopes))
    response = await guarded.request(method, path, headers=bearer(token), json={})
    assert response.status_code not in (401, 403), response.text


@pytest.mark.parametrize(("method", "path", "scope", "scopes"), GUARDED_EACH)
async def test_a_client_without_the_scope_is_refused_with_403_naming_it(
    guarded: httpx.AsyncClient, method: str, path: str, scope: str, scopes: tuple[str, ...]
) -> None:
    response = await guarded.request(method, path, headers=bearer(f"all-but-{scope}"), json={})
    assert response.status_code == 403
    # RFC 6750 §3: the scopes the request needs, space-separated.
    assert response.headers["www-authenticate"] == (
        f'{REALM}, error="insufficient_scope", scope="{" ".join(scopes)}"'
    )
    body = response.json()
    detail = body["detail"]
    assert f"scope {scope}" in detail
    assert f"all-but-{scope}" in detail
    if path.startswith("/scim/"):
        assert body["schemas"] == [SCIM_ERROR]
        assert body["status"] == "403"
    else:
        assert_problem(response, 403)


@pytest.mark.parametrize(("method", "path", "scopes"), GUARDED)
@pytest.mark.parametrize("token", TOKENS)
async def test_each_of_api_tokens_holds_every_scope(
    guarded: httpx.AsyncClient, method: str, path: str, scopes: tuple[str, ...], token: str
) -> None:
    response = await guarded.request(method, path, headers=bearer(token), json={})
    assert response.status_code not in (401, 403), response.text


@pytest.mark.parametrize(("method", "path", "scopes"), GUARDED)
async def test_a_request_without_credentials_is_401_with_the_realm(
    guarded: httpx.AsyncClient, method: str, path: str, scopes: tuple[str, ...]
) -> None:
    response = await guarded.request(method, path, json={})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == REALM
    if path.startswith("/scim/"):
        body = response.json()
        assert body["schemas"] == [SCIM_ERROR]
        assert body["status"] == "401"
        assert response.headers["content-type"].startswith("application/scim+json")
    else:
        assert "Bearer" in assert_problem(response, 401)["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKENS[0]}x"},
        {"Authorization": f"Bearer {TOKENS[0][:-1]}"},
        {"Authorization": f"Bearer {'ab' * 32}"},
    ],
)
@pytest.mark.parametrize("path", ["/users", "/scim/v2/Users"])
async def test_a_bad_token_is_401_invalid_token_with_a_description(
    guarded: httpx.AsyncClient, headers: dict[str, str], path: str
) -> None:
    response = await guarded.get(path, headers=headers)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'{REALM}, error="invalid_token", error_description="')
    assert response.json()["detail"] in challenge


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Basic {TOKENS[0]}"}, {"Authorization": TOKENS[0]}]
)
async def test_credentials_of_another_scheme_are_401_asking_for_a_bearer_token(
    guarded: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await guarded.get("/users", headers=headers)
    assert response.headers["www-authenticate"] == REALM
    assert "Bearer" in assert_problem(response, 401)["detail"]


@pytest.mark.parametrize("headers", [{}, bearer(TOKENS[0])])
async def test_a_token_in_the_query_string_is_refused_and_says_why(
    guarded: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await guarded.get("/users", params={"access_token": TOKENS[0]}, headers=headers)
    problem = assert_problem(response, 401)
    assert "query string" in problem["detail"]
    assert response.headers["www-authenticate"].startswith(f'{REALM}, error="invalid_request"')


async def test_the_scheme_is_case_insensitive(guarded: httpx.AsyncClient) -> None:
    response = await guarded.get("/users", headers={"Authorization": f"bearer {TOKENS[1]}"})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/openapi.json"])
async def test_open_routes_need_no_token(guarded: httpx.AsyncClient, path: str) -> None:
    assert (await guarded.get(path)).status_code == 200


async def test_a_path_that_does_not_exist_is_404_whoever_asks(guarded: httpx.AsyncClient) -> None:
    assert_problem(await guarded.get("/users/not-a-user"), 404)
    assert_problem(await guarded.put("/users"), 405)


async def test_without_clients_or_tokens_every_route_is_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/users")).status_code == 200
    assert (await client.get("/scim/v2/Users")).status_code == 200


async def test_the_log_line_of_a_request_names_its_client(
    settings: Settings, db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    configured = replace(settings, api_clients=CLIENTS, access_log=True)
    caplog.set_level(logging.INFO)
    async with client_of(configured) as client:
        await client.get("/users", headers=bearer(token_of("users:read")))
        await client.delete("/users/ann@x.io", headers=bearer(token_of("users:read")))
        await client.get("/users")
    lines = [record for record in caplog.records if record.name == "service.requests"]
    assert [(line.status, getattr(line, "client", None)) for line in lines] == [  # type: ignore[attr-defined]
        (200, "users:read"),
        (403, "users:read"),
        (401, None),
    ]


async def test_idempotency_keys_are_each_clients_own(guarded: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "same-key"}
    body = {"name": "Ann", "email": "ann@x.io"}
    first = await guarded.post("/users", json=body, headers={**key, **bearer(TOKENS[0])})
    other = {**key, **bearer(token_of("users:create"))}
    second = await guarded.post("/users", json=body, headers=other)
    assert first.status_code == 201
    assert second.status_code == 409  # a new write, not the first client's stored answer
    assert "idempotent-replayed" not in second.headers


def make_token(name: str, *scopes: str) -> tuple[str, str]:
    """The token and the API_CLIENTS entry that `python -m service token` prints."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "token", name, "--scope", *scopes],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    token, entry = result.stdout.splitlines()
    return token, entry


def test_a_started_service_accepts_the_token_commands_clients(
    tmp_path: Path, services: list[Service], database_url: str
) -> None:
    reporting, reporting_entry = make_token("reporting", "users:read")
    okta, okta_entry = make_token("okta", "scim")
    clients = f"[{reporting_entry}, {okta_entry}]"
    service = Service(
        tmp_path, {"DATABASE_URL": database_url, "API_CLIENTS": clients, "ACCESS_LOG": "1"}
    )
    services.append(service)
    service.wait_ready()
    with httpx.Client(base_url=service.url, timeout=10) as http:
        assert http.get("/users", headers=bearer(reporting)).status_code == 200
        refused = http.post(
            "/users", json={"name": "A", "email": "a@x.io"}, headers=bearer(reporting)
        )
        assert refused.status_code == 403
        assert refused.headers["www-authenticate"] == (
            f'{REALM}, error="insufficient_scope", scope="users:create"'
        )
        assert http.get("/scim/v2/Users", headers=bearer(okta)).status_code == 200
        scim_only = http.get("/users", headers=bearer(okta))
        assert scim_only.status_code == 403
        assert http.get("/users").status_code == 401
        assert http.get("/livez").status_code == 200
    lines = service.output().splitlines()
    assert any("GET /users 200" in line and "client=reporting" in line for line in lines)
    assert any("POST /users 403" in line and "client=reporting" in line for line in lines)
    assert any("GET /scim/v2/Users 200" in line and "client=okta" in line for line in lines)
    assert not any(reporting in line or okta in line for line in lines)


def test_a_started_service_refuses_a_token_it_was_not_given(
    tmp_path: Path, services: list[Service], database_url: str
) -> None:
    _, entry = make_token("reporting", "users:read")
    other, _ = make_token("reporting", "users:read")
    service = Service(tmp_path, {"DATABASE_URL": database_url, "API_CLIENTS": f"[{entry}]"})
    services.append(service)
    service.wait_ready()
    response = httpx.get(f"{service.url}/users", headers=bearer(other), timeout=10)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert json.loads(response.text)["status"] == 401
