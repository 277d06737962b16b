"""The app's assembly as a caller meets it: CORS, off unless origins are configured."""

from __future__ import annotations

import httpx
import msgspec

from service.settings import Settings
from tests.conftest import client_of

ORIGIN = "https://admin.example.com"
TOKENS = ("a-token-of-16-characters-or-more",)
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "PATCH",
    "Access-Control-Request-Headers": "authorization, content-type",
}


async def test_cors_is_off_unless_origins_are_configured(client: httpx.AsyncClient) -> None:
    answer = await client.get("/users", headers={"Origin": ORIGIN})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
    preflight = await client.options("/users/ann@example.com", headers=PREFLIGHT)
    assert preflight.status_code == 204
    assert "access-control-allow-origin" not in preflight.headers


async def test_a_configured_origin_gets_cors_headers_and_its_preflight_needs_no_token(
    settings: Settings, db: object
) -> None:
    configured = msgspec.structs.replace(settings, cors_origins=(ORIGIN,), api_tokens=TOKENS)
    async with client_of(configured) as client:
        preflight = await client.options("/users/ann@example.com", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "PATCH" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

        auth = {"Authorization": f"Bearer {TOKENS[0]}", "Origin": ORIGIN}
        created = await client.post("/users", json={"name": "A", "email": "a@b.c"}, headers=auth)
        assert created.status_code == 201
        assert created.headers["access-control-allow-origin"] == ORIGIN
        exposed = created.headers["access-control-expose-headers"].lower()
        assert {"location", "x-request-id"} <= set(exposed.replace(" ", "").split(","))

        listed = await client.get("/users", headers={**auth, "Prefer": "count=exact"})
        exposed = listed.headers["access-control-expose-headers"].lower()
        assert {"link", "x-total-count", "preference-applied"} <= set(
            exposed.replace(" ", "").split(",")
        )


async def test_an_origin_not_configured_gets_no_cors_headers(
    settings: Settings, db: object
) -> None:
    configured = msgspec.structs.replace(settings, cors_origins=(ORIGIN,))
    async with client_of(configured) as client:
        other = {**PREFLIGHT, "Origin": "https://elsewhere.example.com"}
        preflight = await client.options("/users/ann@example.com", headers=other)
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
        answer = await client.get("/users", headers={"Origin": other["Origin"]})
        assert "access-control-allow-origin" not in answer.headers
