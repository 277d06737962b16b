"""The OpenAPI document: valid, complete, made from the Structs, and true to the responses."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from bench.issuer import AUDIENCE, Issuer
from service import openapi
from service.app import create_app, routes
from service.openapi import SCIM_PREFIX
from service.routes import Route
from service.schemas import AttributeValue, Email, SearchText
from service.scopes import OPEN, SCOPES
from service.settings import Client, Settings
from tests.conftest import client_of
from tests.test_jwt import keys_held

Document = dict[str, Any]
PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
TOKENS = ("a-token-of-16-characters-or-more",)
GZIP = {"Content-Encoding": "gzip"}
JSON_HEADERS = {"content-type": "application/json"}


async def fetch_document(client: httpx.AsyncClient) -> Document:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document: Document = response.json()
    return document


def operations(document: Document) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def assert_conforms(document: Document, path: str, response: httpx.Response, status: int) -> None:
    """Status, required headers, media type and body are as the document declares them."""
    assert response.status_code == status, response.text
    operation = document["paths"][path][response.request.method.lower()]
    declared = operation["responses"][str(response.status_code)]
    for name, header in declared.get("headers", {}).items():
        assert not header["required"] or name in response.headers, name
    if "content" not in declared:
        assert response.content == b""
        return
    media_type = response.headers["content-type"].partition(";")[0]
    schema = declared["content"][media_type]["schema"]
    # "#/components/schemas/..." resolves against the components carried along.
    OAS31Validator({**schema, "components": document["components"]}).validate(response.json())


async def test_document_is_valid_openapi_3_1(client: httpx.AsyncClient) -> None:
    document = await fetch_document(client)
    assert document["openapi"].startswith("3.1.")
    validate(document)


async def test_every_route_and_method_is_documented_and_nothing_else(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    document = await fetch_document(client)
    routed = {
        (re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method.lower())
        for route in app.routes
        if isinstance(route, Route) and not route.path.startswith(SCIM_PREFIX)
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {(path, method) for path, method, _ in operations(document)}
    assert documented == routed
    assert ("/users/{user}", "patch") in documented
    # SCIM's own discovery describes /scim/v2, which this document leaves out.
    assert not any(path.startswith(SCIM_PREFIX) for path, _ in documented)
    assert any(isinstance(r, Route) and r.path.startswith(SCIM_PREFIX) for r in app.routes)


async def test_operation_ids_are_unique(client: httpx.AsyncClient) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(await fetch_document(client))]
    assert len(ids) == len(set(ids))


async def test_trailing_slash_forms_are_served_but_not_documented_twice(
    client: httpx.AsyncClient,
) -> None:
    document = await fetch_document(client)
    assert not [path for path in document["paths"] if path.endswith("/")]
    assert "`/users/`" in document["paths"]["/users"]["get"]["description"]
    assert "`/users/bulk/`" in document["paths"]["/users/bulk"]["post"]["description"]


async def test_every_operation_has_a_tag_a_description_and_the_server(
    client: httpx.AsyncClient,
) -> None:
    document = await fetch_document(client)
    assert document["servers"] == [{"url": "/", "description": "This service."}]
    tags = {tag["name"] for tag in document["tags"]}
    for path, _, operation in operations(document):
        # The feed of everything (/changes) is where a consumer of groups looks.
        of_groups = path.startswith("/groups") or path.endswith("/groups") or path == "/changes"
        tag = "groups" if of_groups else None
        tag = tag or ("users" if path.startswith("/users") else "operations")
        assert operation["tags"] == [tag]
        assert set(operation["tags"]) <= tags
        assert operation["description"]


async def test_created_at_is_a_date_time(client: httpx.AsyncClient) -> None:
    user = (await fetch_document(client))["components"]["schemas"]["User"]
    assert user["properties"]["created_at"] == {"type": "string", "format": "date-time"}


async def test_request_id_is_documented_on_every_request_and_response(
    client: httpx.AsyncClient,
) -> None:
    for _, _, operation in operations(await fetch_document(client)):
        [header] = [p for p in operation["parameters"] if p["name"] == "X-Request-ID"]
        assert (header["in"], header["required"]) == ("header", False)
        for response in operation["responses"].values():
            assert response["headers"]["X-Request-ID"]["required"] is True


async def test_component_schemas_come_from_the_structs(client: httpx.AsyncClient) -> None:
    schemas = (await fetch_document(client))["components"]["schemas"]
    assert {"NewUser", "UserPatch", "User", "Inserted", "Problem"} <= schemas.keys()
    email = schemas["NewUser"]["properties"]["email"]
    assert email == msgspec.json.schema(Email)
    assert email["maxLength"] == 254
    assert "\\s" not in email["pattern"]  # read otherwise by ECMA-262 than by Python
    assert email["pattern"].startswith(r"^[^@ \u00a0")
    assert schemas["NewUser"]["additionalProperties"] is False
    assert schemas["NewUser"]["required"] == ["name", "email"]


async def test_bulk_body_is_an_array_of_at_most_10000_new_users(
    client: httpx.AsyncClient,
) -> None:
    operation = (await fetch_document(client))["paths"]["/users/bulk"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/NewUser"},
        "maxItems": 10_000,
        "description": "All of them are created, or none.",
    }
    assert {"201", "400", "409", "413", "415", "422", "503"} <= operation["responses"].keys()
    assert "10,000" in operation["responses"]["422"]["description"]


async def test_list_parameters_state_their_ranges(client: httpx.AsyncClient) -> None:
    operation = (await fetch_document(client))["paths"]["/users"]["get"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert parameters["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 10,
    }
    # No default: a generated client would send it on every call, after= included.
    assert parameters["offset"]["schema"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 2**63 - 1,
    }
    assert parameters["after"]["schema"] == msgspec.json.schema(Email)
    assert parameters["q"]["schema"] == msgspec.json.schema(SearchText)
    assert parameters["q"]["schema"]["minLength"] == 3
    assert parameters["q"]["schema"]["maxLength"] == 100
    for bound in ("created_after", "created_before"):
        assert parameters[bound]["schema"] == {"type": "string", "format": "date-time"}
    assert parameters["Prefer"]["in"] == "header"
    assert {name for name, parameter in parameters.items() if parameter["in"] == "query"} == {
        "limit",
        "offset",
        "after",
        "q",
        "created_after",
        "created_before",
        "status",
        "group",
        "attribute",
    }
    assert parameters["group"]["schema"] == {"type": "string", "format": "uuid"}
    assert parameters["status"]["schema"]["enum"] == ["active", "disabled"]
    assert "default" not in parameters["status"]["schema"]  # without it, users of either
    # One object, spread as attribute.<name>=<value> pairs (style form, exploded).
    spread = parameters["attribute"]
    assert (spread["style"], spread["explode"]) == ("form", True)
    assert spread["schema"]["propertyNames"]["pattern"] == r"^attribute\.[a-z][a-z0-9_.-]{0,63}$"
    assert spread["schema"]["additionalProperties"] == msgspec.json.schema(AttributeValue)


async def test_list_documents_its_count_headers_and_422(client: httpx.AsyncClient) -> None:
    responses = (await fetch_document(client))["paths"]["/users"]["get"]["responses"]
    headers = responses["200"]["headers"]
    assert headers["X-Total-Count"]["schema"] == {"type": "integer", "minimum": 0}
    assert not headers["X-Total-Count"]["required"]
    assert not headers["Preference-Applied"]["required"]
    assert "unknown" in responses["422"]["description"]


async def test_every_failure_is_a_problem_json_body(client: httpx.AsyncClient) -> None:
    for _, _, operation in operations(await fetch_document(client)):
        for status, response in operation["responses"].items():
            if status == "default" or int(status) >= 400:
                assert response["content"] == PROBLEM_CONTENT, (operation["operationId"], status)


async def test_without_api_tokens_every_operation_is_open(client: httpx.AsyncClient) -> None:
    document = await fetch_document(client)
    assert "securitySchemes" not in document["components"]
    for _, _, operation in operations(document):
        assert operation["security"] == []
        assert "401" not in operation["responses"]


@pytest.mark.parametrize("configured", ["api_tokens", "api_clients"])
async def test_with_clients_each_users_operation_needs_a_bearer_token_with_its_routes_scope(
    settings: Settings, configured: str
) -> None:
    reporting = Client(name="reporting", scopes=frozenset({"users:read"}), token_sha256="ab" * 32)
    clients = {"api_tokens": TOKENS, "api_clients": (reporting,)}[configured]
    async with client_of(msgspec.structs.replace(settings, **{configured: clients})) as client:
        document = await fetch_document(client)
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert all(scope in scheme["description"] for scope in SCOPES)
    assert "security" not in document
    scopes_of = {
        (route.path_format, method.lower()): route.scopes
        for route in routes
        if isinstance(route, Route)
        for method in route.methods or ()
    }
    for path, method, operation in operations(document):
        scopes = scopes_of[path, method]
        if path.startswith(("/users", "/groups", "/changes")):
            assert scopes
            assert operation["security"] == [{"bearerAuth": list(scopes)}]
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
            assert "WWW-Authenticate" in operation["responses"]["403"]["headers"]
            assert all(scope in operation["responses"]["403"]["description"] for scope in scopes)
        else:
            assert scopes == ()
            assert operation["security"] == []
            assert "401" not in operation["responses"]
            assert "403" not in operation["responses"]


@pytest.mark.parametrize("discovered", [True, False], ids=["discovery", "JWT_JWKS_URL"])
async def test_with_an_identity_provider_the_token_url_of_its_discovery_document_is_offered(
    settings: Settings, db: asyncpg.Pool, discovered: bool
) -> None:
    issuer = Issuer().start()
    jwks_url = None if discovered else f"{issuer.url}/keys"
    configured = msgspec.structs.replace(
        settings, jwt_issuer=issuer.url, jwt_audience=AUDIENCE, jwt_jwks_url=jwks_url
    )
    try:
        async with client_of(configured) as client:
            await keys_held(client)
            document = await fetch_document(client)
    finally:
        issuer.stop()
    validate(document)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    for path, _, operation in operations(document):
        scopes = operation["security"][0]["bearerAuth"] if operation["security"] else None
        if not discovered:
            assert "oauth2" not in schemes
            assert operation["security"] in ([], [{"bearerAuth": scopes}])
        elif path.startswith(("/users", "/changes")):
            assert operation["security"] == [{"bearerAuth": scopes}, {"oauth2": scopes}]
    if discovered:
        flow = schemes["oauth2"]["flows"]["clientCredentials"]
        assert flow == {"tokenUrl": f"{issuer.url}/token", "scopes": dict(SCOPES)}


async def test_without_require_if_match_if_match_is_optional_on_writes_and_no_428(
    client: httpx.AsyncClient,
) -> None:
    item = (await fetch_document(client))["paths"]["/users/{user}"]
    for method in ("patch", "delete"):
        [if_match] = [p for p in item[method]["parameters"] if p["name"] == "If-Match"]
        assert (if_match["in"], if_match["required"]) == ("header", False)
        assert "428" not in item[method]["responses"]
        assert "412" in item[method]["responses"]
    assert not [p for p in item["get"]["parameters"] if p["name"] == "If-Match"]


async def test_with_require_if_match_if_match_is_required_on_writes_with_a_428(
    settings: Settings, db: asyncpg.Pool
) -> None:
    async with client_of(msgspec.structs.replace(settings, require_if_match=True)) as client:
        document = await fetch_document(client)
        validate(document)
        item = document["paths"]["/users/{user}"]
        for method in ("patch", "delete"):
            [if_match] = [p for p in item[method]["parameters"] if p["name"] == "If-Match"]
            assert (if_match["in"], if_match["required"]) == ("header", True)
            assert {"412", "428"} <= item[method]["responses"].keys()
            assert item[method]["responses"]["428"]["content"] == PROBLEM_CONTENT
        assert not [p for p in item["get"]["parameters"] if p["name"] == "If-Match"]
        await client.post("/users", json={"name": "Ann", "email": "ann@example.com"})
        path = "/users/{user}"
        assert_conforms(document, path, await client.delete("/users/ann@example.com"), 428)
        patch = await client.patch("/users/ann@example.com", json={"name": "Bo"})
        assert_conforms(document, path, patch, 428)


async def test_database_operations_declare_503_with_retry_after(
    client: httpx.AsyncClient,
) -> None:
    document = await fetch_document(client)
    for path, _, operation in operations(document):
        if path.startswith("/users") or path == "/readyz":
            assert "Retry-After" in operation["responses"]["503"]["headers"]
    assert "503" not in document["paths"]["/livez"]["get"]["responses"]


async def test_document_is_built_once_per_app(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = []
    build = openapi.build_document

    def counted(routes: Any, **settings: Any) -> Document:
        builds.append(routes)
        return build(routes, **settings)

    monkeypatch.setattr(openapi, "build_document", counted)
    first = await client.get("/openapi.json")
    second = await client.get("/openapi.json")
    assert first.content == second.content
    assert len(builds) == 1


async def test_a_route_without_operation_metadata_is_refused() -> None:
    async def undocumented(request: Request) -> Response:
        return Response()

    with pytest.raises(LookupError, match="/undocumented"):
        openapi.build_document(
            [Route("/undocumented", undocumented, methods=["GET"], scope=OPEN)],
            tokens=False,
            require_if_match=False,
        )


STALE = {"If-Match": '"7-0b9d8a525c1e4d8e9a0a6f1f1d2b3c4d"'}


async def test_success_responses_conform_to_the_document(client: httpx.AsyncClient) -> None:
    document = await fetch_document(client)
    new = {"name": "Ann", "email": "ann@example.com"}
    many = [{"name": "n", "email": f"user{i}@example.com"} for i in range(3)]
    answers = [
        ("/users", await client.post("/users", json=new), 201),
        ("/users", await client.post("/users/", json={**new, "email": "bo@example.com"}), 201),
        ("/users/{user}", await client.get("/users/ANN@example.com"), 200),
        ("/users/bulk", await client.post("/users/bulk", json=many), 201),
        ("/users/bulk", await client.post("/users/bulk", json=[]), 201),
        ("/users", await client.get("/users", params={"limit": 2}), 200),
        ("/users", await client.get("/users", params={"after": "bo@example.com"}), 200),
        ("/users/{user}", await client.patch("/users/ann@example.com", json={"name": "An"}), 200),
        ("/users/{user}", await client.delete("/users/ann@example.com"), 204),
        ("/livez", await client.get("/livez"), 200),
        ("/readyz", await client.get("/readyz"), 200),
        ("/openapi.json", await client.get("/openapi.json"), 200),
    ]
    created = await client.post("/users", json=new)
    unchanged = {"If-None-Match": created.headers["etag"]}
    answers.append(
        ("/users/{user}", await client.get("/users/ann@example.com", headers=unchanged), 304)
    )
    for path, response, status in answers:
        assert_conforms(document, path, response, status)
    assert "link" in answers[5][1].headers


async def test_problem_responses_conform_to_the_document(client: httpx.AsyncClient) -> None:
    document = await fetch_document(client)
    new = {"name": "Ann", "email": "ann@example.com"}
    assert (await client.post("/users", json=new)).status_code == 201
    too_large = b" " * 70_000
    answers = [
        ("/users", await client.post("/users", json=new), 409),
        ("/users", await client.post("/users", json={"name": "Ann"}), 422),
        ("/users", await client.post("/users", content=b"{", headers=JSON_HEADERS), 400),
        ("/users", await client.post("/users", data={"name": "Ann"}), 415),
        ("/users", await client.post("/users", content=too_large, headers=JSON_HEADERS), 413),
        ("/users/bulk", await client.post("/users/bulk", json=[new, new]), 409),
        ("/users/bulk", await client.post("/users/bulk", json=[{"name": ""}]), 422),
        ("/users", await client.get("/users", params={"limit": 0}), 422),
        ("/users/{user}", await client.get("/users/bo@example.com"), 404),
        ("/users/{user}", await client.patch("/users/ann@example.com", json={}), 422),
        ("/users/{user}", await client.delete("/users/bo@example.com"), 404),
        ("/users/{user}", await client.delete("/users/ann@example.com", headers=STALE), 412),
        ("/users/bulk", await client.post("/users/bulk", json=[new], headers=GZIP), 415),
    ]
    for path, response, status in answers:
        assert_conforms(document, path, response, status)
    assert answers[5][1].json()["conflicts"] == ["ann@example.com"]


async def test_a_missing_token_and_an_unready_database_conform_to_the_document(
    settings: Settings,
) -> None:
    app = create_app(msgspec.structs.replace(settings, api_tokens=TOKENS))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            # The document itself needs no token.
            document = await fetch_document(client)
            assert_conforms(document, "/users", await client.get("/users"), 401)
            pool: asyncpg.Pool = app.state.pool
            held = [await pool.acquire() for _ in range(pool.get_max_size())]
            try:
                assert_conforms(document, "/readyz", await client.get("/readyz"), 503)
            finally:
                for conn in held:
                    await pool.release(conn)


async def test_the_conformance_check_refuses_a_body_that_breaks_the_schema(
    client: httpx.AsyncClient,
) -> None:
    # Were references left unresolved, the check would raise rather than judge.
    document = await fetch_document(client)
    schema = {"$ref": "#/components/schemas/User", "components": document["components"]}
    user = {
        "id": "0b9d8a52-5c1e-4d8e-9a0a-6f1f1d2b3c4d",
        "name": "Ann",
        "email": "a@b",
        "status": "active",
        "attributes": {},
        "created_at": "now",
        "updated_at": "now",
    }
    assert OAS31Validator(schema).is_valid(user)
    assert not OAS31Validator(schema).is_valid({"name": "Ann"})


async def test_refusals_for_a_bad_token_and_a_missing_scope_conform_to_the_document(
    settings: Settings, db: asyncpg.Pool
) -> None:
    token = "reporting-token-0123456789"  # noqa: S105 - a test's own token
    digest = hashlib.sha256(token.encode()).hexdigest()
    reporting = Client(name="reporting", scopes=frozenset({"users:read"}), token_sha256=digest)
    async with client_of(msgspec.structs.replace(settings, api_clients=(reporting,))) as client:
        document = await fetch_document(client)
        wrong = {"Authorization": "Bearer not-the-token-0123456789"}
        assert_conforms(document, "/users", await client.get("/users", headers=wrong), 401)
        auth = {"Authorization": f"Bearer {token}"}
        answer = await client.delete("/users/ann@x.io", headers=auth)
        assert_conforms(document, "/users/{user}", answer, 403)
