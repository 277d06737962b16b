"""Access tokens from an identity provider: JWTs checked against a JWKS served over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from msgspec.structs import replace

from bench.issuer import AUDIENCE, Issuer, new_key
from service import keys
from service.scopes import SCOPES
from service.settings import Settings
from tests.conftest import Service, assert_problem, client_of, free_port
from tests.test_auth import GUARDED, GUARDED_EACH, REALM, SCIM_ERROR, TOKENS, bearer
from tests.test_metrics import scrape, value

INVALID_TOKEN = f'{REALM}, error="invalid_token", error_description="'


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    issuer = Issuer().start()
    yield issuer
    issuer.stop()


def with_issuer(settings: Settings, issuer: Issuer, **more: Any) -> Settings:
    """The settings, accepting the issuer's tokens, with keys found by discovery."""
    return replace(settings, jwt_issuer=issuer.url, jwt_audience=AUDIENCE, **more)


async def keys_held(client: httpx.AsyncClient) -> dict[str, Any]:
    """/readyz once the service holds the issuer's keys."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ready: dict[str, Any] = (await client.get("/readyz")).json()
        if ready["signing_keys"]["state"] == "held":
            return ready
        await asyncio.sleep(0.05)
    raise AssertionError(f"no keys held: {ready}")


@pytest.fixture
async def jwt_client(
    settings: Settings, db: asyncpg.Pool, issuer: Issuer
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(with_issuer(settings, issuer, api_tokens=TOKENS)) as client:
        await keys_held(client)
        yield client


def refused_for(response: httpx.Response, words: str) -> None:
    """A 401 invalid_token problem whose description holds `words`."""
    problem = assert_problem(response, 401)
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(INVALID_TOKEN), challenge
    assert words in problem["detail"], problem["detail"]
    assert problem["detail"] in challenge


@pytest.mark.parametrize(("method", "path", "scopes"), GUARDED)
async def test_a_jwt_holding_the_scope_passes(
    jwt_client: httpx.AsyncClient, issuer: Issuer, method: str, path: str, scopes: tuple[str, ...]
) -> None:
    token = issuer.token(scope=" ".join(scopes))
    response = await jwt_client.request(method, path, headers=bearer(token), json={})
    assert response.status_code not in (401, 403, 503), response.text


@pytest.mark.parametrize(("method", "path", "scope", "scopes"), GUARDED_EACH)
async def test_a_jwt_without_the_scope_is_refused_with_403_naming_it(
    jwt_client: httpx.AsyncClient,
    issuer: Issuer,
    method: str,
    path: str,
    scope: str,
    scopes: tuple[str, ...],
) -> None:
    others = " ".join(sorted(set(SCOPES) - {scope}))
    token = issuer.token(scope=others, client_id="nightly-job")
    response = await jwt_client.request(method, path, headers=bearer(token), json={})
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        f'{REALM}, error="insufficient_scope", scope="{" ".join(scopes)}"'
    )
    body = response.json()
    assert f"scope {scope}" in body["detail"]
    assert "nightly-job" in body["detail"]
    if path.startswith("/scim/"):
        assert body["schemas"] == [SCIM_ERROR]
        assert body["status"] == "403"
    else:
        assert_problem(response, 403)


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": "users:read users:delete"},
        {"scope": None, "scp": "users:delete"},
        {"scope": None, "scp": ["users:read", "users:delete"]},
        {"scope": None, "roles": ["users:delete"]},
        {"scope": "openid profile users:delete offline_access"},
    ],
    ids=["scope", "scp string", "scp array", "roles", "unknown scopes ignored"],
)
async def test_scopes_come_from_scope_scp_or_roles(
    jwt_client: httpx.AsyncClient, issuer: Issuer, claims: dict[str, Any]
) -> None:
    token = issuer.token(**claims)
    response = await jwt_client.delete("/users/ann@x.io", headers=bearer(token))
    assert response.status_code == 404, response.text  # past the scope check: no such user
    nothing = issuer.token(scope="openid users:everything")
    assert (await jwt_client.delete("/users/ann@x.io", headers=bearer(nothing))).status_code == 403


@pytest.mark.parametrize(
    ("claims", "name"),
    [
        ({"client_id": "billing", "azp": "a", "appid": "b", "sub": "c"}, "billing"),
        ({"client_id": None, "azp": "billing", "appid": "b", "sub": "c"}, "billing"),
        ({"client_id": None, "appid": "billing", "sub": "c"}, "billing"),
        ({"client_id": None, "sub": "billing@clients"}, "billing@clients"),
    ],
    ids=["client_id", "azp", "appid", "sub"],
)
async def test_the_client_is_named_by_client_id_azp_appid_then_sub(
    jwt_client: httpx.AsyncClient, issuer: Issuer, claims: dict[str, Any], name: str
) -> None:
    token = issuer.token(scope="users:read", **claims)
    response = await jwt_client.delete("/users/ann@x.io", headers=bearer(token))
    assert f"the client {name} does not hold" in response.json()["detail"]


async def test_a_token_naming_no_client_is_refused(
    jwt_client: httpx.AsyncClient, issuer: Issuer
) -> None:
    token = issuer.token(client_id=None, sub=None)
    refused_for(await jwt_client.get("/users", headers=bearer(token)), "names no client")


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "JWT", None])
async def test_typ_may_be_at_jwt_jwt_or_absent(
    jwt_client: httpx.AsyncClient, issuer: Issuer, typ: str | None
) -> None:
    response = await jwt_client.get("/users", headers=bearer(issuer.token(typ=typ)))
    assert response.status_code == 200, response.text


async def test_another_typ_is_refused(jwt_client: httpx.AsyncClient, issuer: Issuer) -> None:
    token = issuer.token(typ="id_token+jwt")
    refused_for(await jwt_client.get("/users", headers=bearer(token)), "typ")


@pytest.mark.parametrize("algorithm", ["ES256", "PS256", "EdDSA"])
async def test_ec_pss_and_eddsa_signatures_are_accepted(
    settings: Settings, db: asyncpg.Pool, algorithm: str
) -> None:
    issuer = Issuer(algorithm).start()
    try:
        async with client_of(with_issuer(settings, issuer)) as client:
            await keys_held(client)
            response = await client.get("/users", headers=bearer(issuer.token()))
            assert response.status_code == 200, response.text
    finally:
        issuer.stop()


def tampered(token: str) -> str:
    """The token with its claims changed after signing: every scope, for a reader."""
    header, claims, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    decoded["scope"] = " ".join(SCOPES)
    encoded = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


REFUSALS: dict[str, tuple[Callable[[Issuer], str], str]] = {
    "expired": (lambda issuer: issuer.token(exp=int(time.time()) - 61), "has expired"),
    "not yet valid": (lambda issuer: issuer.token(nbf=int(time.time()) + 120), "not valid yet"),
    "issued in the future": (
        lambda issuer: issuer.token(iat=int(time.time()) + 120),
        "not valid yet",
    ),
    "no exp": (lambda issuer: issuer.token(exp=None), "lacks the exp claim"),
    "wrong issuer": (lambda issuer: issuer.token(iss="https://idp.example.com"), "another issuer"),
    "wrong audience": (lambda issuer: issuer.token(aud="another-api"), "another audience"),
    "alg none": (
        lambda issuer: issuer.unsigned_token({"alg": "none", "typ": "JWT", "kid": "key-1"}, {}),
        "alg none is not accepted",
    ),
    "HS256 with the public key": (lambda issuer: issuer.hs256_token(), "alg HS256 is not accepted"),
    "tampered": (lambda issuer: tampered(issuer.token()), "signature does not verify"),
    "foreign key, known kid": (
        lambda issuer: issuer.token(key=new_key("RS256")),
        "signature does not verify",
    ),
    "unknown kid": (
        lambda issuer: issuer.token(kid="key-9", key=new_key("RS256")),
        "key the issuer does not publish",
    ),
    "alg other than the key's": (
        lambda issuer: issuer.token(algorithm="ES256", key=new_key("ES256")),
        "does not take ES256",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
async def test_a_bad_token_is_401_invalid_token_saying_why(
    jwt_client: httpx.AsyncClient, issuer: Issuer, case: str
) -> None:
    make, words = REFUSALS[case]
    token = make(issuer)
    refused_for(await jwt_client.get("/users", headers=bearer(token)), words)
    scim = await jwt_client.get("/scim/v2/Users", headers=bearer(tampered(issuer.token())))
    assert scim.status_code == 401
    assert scim.json()["schemas"] == [SCIM_ERROR]


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_a_minute_of_clock_skew_is_allowed(
    jwt_client: httpx.AsyncClient, issuer: Issuer, claim: str
) -> None:
    skewed: dict[str, Any] = {claim: int(time.time()) + (-50 if claim == "exp" else 50)}
    response = await jwt_client.get("/users", headers=bearer(issuer.token(**skewed)))
    assert response.status_code == 200, response.text


async def test_static_tokens_and_jwts_are_both_accepted(
    jwt_client: httpx.AsyncClient, issuer: Issuer
) -> None:
    assert (await jwt_client.get("/users", headers=bearer(TOKENS[0]))).status_code == 200
    assert (await jwt_client.get("/users", headers=bearer(issuer.token()))).status_code == 200
    refused_for(await jwt_client.get("/users", headers=bearer("a.b.c")), "not one this service")
    refused_for(
        await jwt_client.get("/users", headers=bearer("not-a-jwt-0123456789")),
        "not one this service",
    )


async def test_requests_are_counted_under_the_jwt_clients_name(
    jwt_client: httpx.AsyncClient, issuer: Issuer
) -> None:
    labels = {"method": "GET", "route": "/users/{user}", "status": "404", "client": "nightly-job"}
    before = value(await scrape(jwt_client), "http_requests_total", **labels)
    token = issuer.token(client_id="nightly-job")
    for _ in range(2):
        await jwt_client.get("/users/nobody@x.io", headers=bearer(token))
    assert value(await scrape(jwt_client), "http_requests_total", **labels) == before + 2


async def test_readyz_reports_the_keys_held(jwt_client: httpx.AsyncClient) -> None:
    ready = await keys_held(jwt_client)
    assert ready["status"] == "ok"
    assert ready["signing_keys"]["keys"] == 1
    assert ready["signing_keys"]["failure"] is None


async def test_keys_come_from_jwt_jwks_url_without_discovery(
    settings: Settings, db: asyncpg.Pool, issuer: Issuer
) -> None:
    # An issuer that is not a URL at all: only JWT_JWKS_URL says where the keys are.
    configured = replace(
        settings,
        jwt_issuer="urn:example:idp",
        jwt_audience=AUDIENCE,
        jwt_jwks_url=f"{issuer.url}/keys",
    )
    async with client_of(configured) as client:
        await keys_held(client)
        token = issuer.token(iss="urn:example:idp")
        assert (await client.get("/users", headers=bearer(token))).status_code == 200


async def test_a_discovery_document_naming_another_issuer_is_not_trusted(
    settings: Settings, db: asyncpg.Pool, issuer: Issuer
) -> None:
    configured = replace(settings, jwt_issuer=issuer.url + "/other", jwt_audience=AUDIENCE)
    async with client_of(configured) as client:
        await asyncio.sleep(0.3)
        token = issuer.token(iss=issuer.url + "/other")
        response = await client.get("/users", headers=bearer(token))
        assert_problem(response, 503)
        ready = (await client.get("/readyz")).json()
    assert ready["signing_keys"]["state"] == "missing"
    assert "names the issuer" in ready["signing_keys"]["failure"]


@pytest.fixture
def quick_refetch(monkeypatch: pytest.MonkeyPatch) -> float:
    """An unknown kid may fetch the keys again after 1 s rather than 30, so that a test
    sees both sides of the limit."""
    monkeypatch.setattr(keys, "REFETCH_SECONDS", 1.0)
    return 1.0


async def test_a_rotated_key_is_picked_up_through_its_unknown_kid_once_per_interval(
    quick_refetch: float, jwt_client: httpx.AsyncClient, issuer: Issuer
) -> None:
    await asyncio.sleep(quick_refetch)
    issuer.keys["key-2"] = new_key("RS256")
    fetches = issuer.fetches
    rotated = issuer.token(kid="key-2")
    assert (await jwt_client.get("/users", headers=bearer(rotated))).status_code == 200
    assert issuer.fetches == fetches + 1
    # Made-up kids right after: no fetch, however many.
    for number in range(5):
        made_up = issuer.token(kid=f"made-up-{number}", key=new_key("RS256"))
        refused_for(await jwt_client.get("/users", headers=bearer(made_up)), "does not publish")
    assert issuer.fetches == fetches + 1
    # A key added meanwhile waits for the interval to pass.
    issuer.keys["key-3"] = new_key("RS256")
    third = issuer.token(kid="key-3")
    refused_for(await jwt_client.get("/users", headers=bearer(third)), "does not publish")
    await asyncio.sleep(quick_refetch)
    assert (await jwt_client.get("/users", headers=bearer(third))).status_code == 200
    assert issuer.fetches == fetches + 2


async def test_a_withdrawn_key_no_longer_serves_its_tokens(
    quick_refetch: float, jwt_client: httpx.AsyncClient, issuer: Issuer
) -> None:
    old = issuer.token()
    assert (await jwt_client.get("/users", headers=bearer(old))).status_code == 200
    issuer.keys = {"key-2": new_key("RS256")}
    await asyncio.sleep(quick_refetch)
    assert (
        await jwt_client.get("/users", headers=bearer(issuer.token(kid="key-2")))
    ).status_code == 200
    refused_for(await jwt_client.get("/users", headers=bearer(old)), "does not publish")


async def test_the_held_keys_serve_while_the_jwks_endpoint_is_down(
    quick_refetch: float,
    jwt_client: httpx.AsyncClient,
    issuer: Issuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.keys")
    issuer.down = True
    for _ in range(2):  # two failed fetches, one line
        await asyncio.sleep(quick_refetch)
        unknown = issuer.token(kid="key-9", key=new_key("RS256"))
        refused_for(await jwt_client.get("/users", headers=bearer(unknown)), "does not publish")
    fresh = issuer.token()
    assert (await jwt_client.get("/users", headers=bearer(fresh))).status_code == 200
    ready = (await jwt_client.get("/readyz")).json()
    assert ready["signing_keys"]["state"] == "held"
    assert "answered 503" in ready["signing_keys"]["failure"]
    issuer.down = False
    await asyncio.sleep(quick_refetch)
    unknown = issuer.token(kid="key-9", key=new_key("RS256"))
    refused_for(await jwt_client.get("/users", headers=bearer(unknown)), "does not publish")
    lines = [record.getMessage() for record in caplog.records if record.name == "service.keys"]
    assert len([line for line in lines if "not fetched" in line]) == 1, lines
    assert "keeping the 1 held" in lines[0]
    assert len([line for line in lines if line.startswith("signing keys fetched")]) == 1, lines
    assert (await jwt_client.get("/readyz")).json()["signing_keys"]["failure"] is None


def test_an_issuer_unreachable_at_start_gets_503_until_its_keys_arrive(
    tmp_path: Path, services: list[Service], database_url: str
) -> None:
    port = free_port()  # nothing listens there yet
    issuer_url = f"http://127.0.0.1:{port}"
    service = Service(
        tmp_path,
        {
            "DATABASE_URL": database_url,
            "API_TOKENS": TOKENS[0],
            "JWT_ISSUER": issuer_url,
            "JWT_AUDIENCE": AUDIENCE,
        },
    )
    services.append(service)
    service.wait_ready()
    stranger = Issuer()  # signs as the issuer would; its port is not the issuer's
    stranger.stop()
    with httpx.Client(base_url=service.url, timeout=10) as http:
        waiting = http.get("/users", headers=bearer(stranger.token(iss=issuer_url)))
        assert_problem(waiting, 503)
        assert waiting.headers["retry-after"] == "1"
        scim = http.get("/scim/v2/Users", headers=bearer(stranger.token(scope="scim")))
        assert (scim.status_code, scim.json()["schemas"]) == (503, [SCIM_ERROR])
        assert http.get("/users", headers=bearer(TOKENS[0])).status_code == 200
        # What is no JWT at all is refused as ever, keys or not.
        refused_for(http.get("/users", headers=bearer("not.a.token")), "not one this service")
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["signing_keys"]["state"] == "missing"
        assert "could not be reached" in ready.json()["signing_keys"]["failure"]
        issuer = Issuer(port=port).start()
        token = issuer.token()
        try:
            deadline = time.monotonic() + 40
            while http.get("/readyz").json()["signing_keys"]["state"] != "held":
                assert time.monotonic() < deadline, service.output()
                time.sleep(0.2)
            assert http.get("/users", headers=bearer(token)).status_code == 200
        finally:
            issuer.stop()
    lines = service.output().splitlines()
    assert len([line for line in lines if "signing keys not fetched" in line]) == 1, lines
    assert len([line for line in lines if "signing keys fetched" in line]) == 1, lines
