"""Bearer tokens on /users when API_TOKENS is set; everything else stays open."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from msgspec.structs import replace

from service.app import routes
from service.routes import Route
from service.scopes import OPEN, SCOPES
from service.settings import Settings
from tests.conftest import assert_problem, client_of

TOKENS = ("first-token-0123456789", "second-token-0123456789")


@pytest.fixture
async def guarded(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(replace(settings, api_tokens=TOKENS)) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {TOKENS[0]}"},
        {"Authorization": TOKENS[0]},
        {"Authorization": f"Bearer {TOKENS[0]}x"},
        {"Authorization": f"Bearer {TOKENS[0][:-1]}"},
    ],
)
async def test_a_missing_or_wrong_token_is_401_with_www_authenticate(
    guarded: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in [("GET", "/users"), ("POST", "/users/bulk"), ("GET", "/users/a@x.io")]:
        response = await guarded.request(method, path, headers=headers, json=[])
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", TOKENS)
async def test_any_configured_token_is_accepted(guarded: httpx.AsyncClient, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    created = await guarded.post("/users", json={"name": "A", "email": "a@x.io"}, headers=headers)
    assert created.status_code == 201
    assert (await guarded.get("/users/a@x.io", headers=headers)).status_code == 200


async def test_the_scheme_is_case_insensitive(guarded: httpx.AsyncClient) -> None:
    response = await guarded.get("/users", headers={"Authorization": f"bearer {TOKENS[1]}"})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics"])
async def test_health_and_metrics_stay_open(guarded: httpx.AsyncClient, path: str) -> None:
    assert (await guarded.get(path)).status_code == 200


async def test_without_tokens_users_is_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/users")).status_code == 200


def test_every_route_names_its_scope_or_says_it_is_open() -> None:
    for route in routes:
        assert isinstance(route, Route), f"{route!r} is not a service.routes.Route"
        assert route.scope is OPEN or route.scope in SCOPES, route.path
        if route.path.startswith("/scim/v2"):
            assert route.scope == "scim", route.path
    open_paths = {
        route.path for route in routes if isinstance(route, Route) and route.scope is OPEN
    }
    assert open_paths == {"/livez", "/readyz", "/metrics", "/openapi.json"}


def test_every_scope_grants_some_route() -> None:
    assert {route.scope for route in routes if isinstance(route, Route)} - {OPEN} == set(SCOPES)


def test_a_route_with_an_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="users:write"):
        Route("/users", routes[0].endpoint, methods=["GET"], scope="users:write")  # type: ignore[arg-type]
