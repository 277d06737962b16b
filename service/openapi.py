"""The OpenAPI 3.1 document, generated from the route table and the Structs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import msgspec
from starlette import routing
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from service.operations import JSON, Header, Operation, Parameter, Reply
from service.problems import MEDIA_TYPE as PROBLEM_MEDIA_TYPE
from service.routes import Route
from service.schemas import Problem
from service.scopes import SCOPES, ScopeName

# SCIM's endpoints are described by SCIM's own discovery (RFC 7644 §4), not here.
SCIM_PREFIX = "/scim/"
REF_TEMPLATE = "#/components/schemas/{name}"

Seconds = Annotated[int, msgspec.Meta(ge=0)]
RETRY_AFTER = Header(name="Retry-After", type=Seconds, description="Seconds to wait.")
WWW_AUTHENTICATE = Header(
    name="WWW-Authenticate",
    type=str,
    description='The challenge (RFC 6750): `Bearer realm="users"`, then `error="invalid_token"` '
    "and an `error_description` for a token the service does not accept, or "
    '`error="insufficient_scope", scope="…"` naming the scope the client lacks.',
)
PROBLEM_HEADERS = {401: (WWW_AUTHENTICATE,), 403: (WWW_AUTHENTICATE,), 503: (RETRY_AFTER,)}
# On every request and every response. Any value is accepted (one that is not
# an ID is replaced), so the request's schema is any string.
REQUEST_ID_DESCRIPTION = (
    "The request's ID, in every log line of the request: the caller's when it is 20 to 200 "
    "characters of `[A-Za-z0-9+/=-]`, otherwise a new one."
)
REQUEST_ID_PARAMETER = Parameter(
    name="X-Request-ID", location="header", type=str, description=REQUEST_ID_DESCRIPTION
)
REQUEST_ID_HEADER = Header(name="X-Request-ID", type=str, description=REQUEST_ID_DESCRIPTION)

IF_MATCH = Parameter(
    name="If-Match",
    location="header",
    type=str,
    description="ETags, comma-separated, or `*` for any: the write happens only when one is "
    "the current ETag of the user (or group) the path names, else 412. Weak ETags never match.",
)
# The service runs with REQUIRE_IF_MATCH=1.
REQUIRED_IF_MATCH = msgspec.structs.replace(
    IF_MATCH, required=True, description=IF_MATCH.description + " Required: without it, 428."
)
UNAVAILABLE = "The database is down or too slow; retry after Retry-After seconds."
PRECONDITION_FAILED = (
    "If-Match names none of the current ETags of the user (or group); nothing changed."
)
PRECONDITION_REQUIRED = "The service requires If-Match (REQUIRE_IF_MATCH=1); the request has none."
BEARER_AUTH = {
    "type": "http",
    "scheme": "bearer",
    "description": "The token of a client in the service's API_CLIENTS, which may call the "
    "operations whose security lists a scope it holds; one of API_TOKENS, which holds every "
    "scope; or, with JWT_ISSUER set, an access token (a JWT) from that identity provider, "
    "holding the scopes its scope, scp or roles claim names. Sent only in the Authorization "
    "header, never in the query string. The scopes:"
    + "".join(f" `{scope}`: {grants}" for scope, grants in SCOPES.items()),
}


def oauth2_scheme(token_url: str) -> dict[str, Any]:
    """How a client gets an access token from the identity provider, and the scopes to ask."""
    return {
        "type": "oauth2",
        "description": "An access token from the identity provider the service trusts "
        "(JWT_ISSUER), by the client-credentials grant, sent as a bearer token.",
        "flows": {"clientCredentials": {"tokenUrl": token_url, "scopes": dict(SCOPES)}},
    }


TAGS = [
    {"name": "users", "description": "Create, look up, list, update and delete users."},
    {
        "name": "groups",
        "description": "Create, list, update and delete groups; add, remove, list and check "
        "their members.",
    },
    {"name": "operations", "description": "Probes, metrics and this document, for operators."},
]

_encoder = msgspec.json.Encoder()


OPENAPI = Operation(
    operation_id="openapi",
    tag="operations",
    summary="This OpenAPI document",
    description="The contract of this service as it runs: bearer tokens and their scopes "
    "appear only when it was started with API_CLIENTS, API_TOKENS or JWT_ISSUER, the "
    "identity provider's client-credentials flow only once its discovery document named "
    "its token endpoint, and a required If-Match (and its 428) only with REQUIRE_IF_MATCH=1.",
    replies={200: Reply(description="OpenAPI 3.1.", body=dict[str, Any])},
)


async def openapi_json(request: Request) -> Response:
    """This document, built on the first request from the app's own routes and settings."""
    state = request.app.state
    content: bytes | None = getattr(state, "openapi", None)
    # The token endpoint comes with the identity provider's discovery document,
    # which may arrive after the first request: the document follows it.
    access_tokens = getattr(state, "access_tokens", None)
    token_url = None if access_tokens is None else access_tokens.keys.token_url
    if content is None or token_url != getattr(state, "openapi_token_url", None):
        settings = state.settings
        document = build_document(
            request.app.routes,
            tokens=bool(settings.callers()) or access_tokens is not None,
            require_if_match=settings.require_if_match,
            token_url=token_url,
        )
        content = state.openapi = _encoder.encode(document)
        state.openapi_token_url = token_url
    return Response(content, media_type=JSON)


def documented_routes(routes: Iterable[BaseRoute]) -> list[tuple[Route, str, Operation]]:
    """Each route and method (HEAD aside, Starlette adds it to GET) with its operation."""
    found: list[tuple[Route, str, Operation]] = []
    for route in routes:
        if not isinstance(route, routing.Route) or route.path.startswith(SCIM_PREFIX):
            continue
        if not isinstance(route, Route):
            raise LookupError(f"{route.path} names no scope: build it with service.routes.Route")
        operation = route.operation
        if operation is None:
            raise LookupError(f"{route.path} carries no operation: give its Route one")
        found += [
            (route, method, operation) for method in sorted(set(route.methods or ()) - {"HEAD"})
        ]
    return found


def build_document(
    routes: Iterable[BaseRoute],
    *,
    tokens: bool,
    require_if_match: bool,
    token_url: str | None = None,
) -> dict[str, Any]:
    """The document of these routes, true to the settings that change the contract:
    `tokens`, bearer tokens are required; `require_if_match`, so is If-Match on writes;
    `token_url`, the identity provider's token endpoint, for its client-credentials flow."""
    documented = documented_routes(routes)
    types: list[object] = [Problem, IF_MATCH.type]
    for _, _, operation in documented:
        types += [operation.body] if operation.body is not None else []
        types += [parameter.type for parameter in (*operation.parameters, REQUEST_ID_PARAMETER)]
        for reply in operation.replies.values():
            types += [reply.body] if reply.body is not None else []
            types += [body for _, body in reply.alternatives]
            types += [header.type for header in (*reply.headers, REQUEST_ID_HEADER)]
    types += [header.type for headers in PROBLEM_HEADERS.values() for header in headers]
    types = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    schema_of = dict(zip(types, schemas, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    for route, method, operation in documented:
        paths.setdefault(route.path_format, {})[method.lower()] = operation_object(
            operation,
            schema_of,
            scopes=route.scopes if tokens else (),
            require_if_match=require_if_match,
            oauth2=token_url is not None,
        )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "users",
            "version": "1",
            "description": "Creates, looks up, lists, updates and deletes users and groups of "
            "them. Every error "
            "is an RFC 9457 problem (application/problem+json) with an X-Request-ID, a request "
            "the HTTP parser refuses included: a 400, or a 431 for a head over 64 KiB, each "
            "with Connection: close. A request head slower than the service's HEAD_TIMEOUT, "
            "or a connection silent that long, is closed without an answer.",
        },
        # Relative: the service answers wherever the caller reached it.
        "servers": [{"url": "/", "description": "This service."}],
        "tags": TAGS,
        "paths": paths,
        "components": {"schemas": components},
    }
    if tokens:
        document["components"]["securitySchemes"] = {"bearerAuth": BEARER_AUTH}
    if tokens and token_url is not None:
        document["components"]["securitySchemes"]["oauth2"] = oauth2_scheme(token_url)
    return document


def operation_object(
    operation: Operation,
    schema_of: dict[object, Any],
    *,
    scopes: tuple[ScopeName, ...],
    require_if_match: bool,
    oauth2: bool = False,
) -> dict[str, Any]:
    """The operation as the running service serves it: `scopes`, those a caller needs,
    none when the service has no clients or the route is open; `oauth2`, whether the
    identity provider's client-credentials flow is offered beside the bearer token."""
    parameters = list(operation.parameters)
    problems = dict(operation.problems)
    if operation.conditional:
        # The running service's truth, as for tokens below.
        parameters.append(REQUIRED_IF_MATCH if require_if_match else IF_MATCH)
        problems[412] = PRECONDITION_FAILED
        if require_if_match:
            problems[428] = PRECONDITION_REQUIRED
    result: dict[str, Any] = {
        "operationId": operation.operation_id,
        "tags": [operation.tag],
        "summary": operation.summary,
        "description": operation.description,
        "parameters": [
            parameter_object(parameter, schema_of)
            for parameter in (*parameters, REQUEST_ID_PARAMETER)
        ],
    }
    if operation.body is not None:
        result["requestBody"] = {
            "required": True,
            "description": "JSON: application/json, any application/*+json, or no Content-Type.",
            "content": {JSON: {"schema": schema_of[operation.body]}},
        }
    # The running service's truth: open endpoints are marked open, and the
    # others need a token with their route's scope only when clients are set.
    result["security"] = (
        []
        if not scopes
        else [{"bearerAuth": list(scopes)}, {"oauth2": list(scopes)}]
        if oauth2
        else [{"bearerAuth": list(scopes)}]
    )
    if scopes:
        problems[401] = (
            "No bearer token in the Authorization header, one the service does not accept, "
            "or a token in the query string."
        )
        named = " and ".join(f"`{name}`" for name in scopes)
        plural = "s" if len(scopes) > 1 else ""
        problems[403] = f"The client does not hold the scope{plural} {named}."
    if operation.uses_database:
        problems.setdefault(503, UNAVAILABLE)
    responses = {
        str(status): response_object(reply, schema_of)
        for status, reply in operation.replies.items()
    }
    for status in sorted(problems):
        problem = Reply(
            description=problems[status],
            body=Problem,
            media_type=PROBLEM_MEDIA_TYPE,
            headers=PROBLEM_HEADERS.get(status, ()),
        )
        responses[str(status)] = response_object(problem, schema_of)
    # Any status not listed, a 500 above all, is still a problem: saying so
    # tells a client how to read it without promising that it happens.
    responses["default"] = response_object(
        Reply(description="Any other error.", body=Problem, media_type=PROBLEM_MEDIA_TYPE),
        schema_of,
    )
    result["responses"] = responses
    return result


def parameter_object(parameter: Parameter, schema_of: dict[object, Any]) -> dict[str, Any]:
    result = {
        "name": parameter.name,
        "in": parameter.location,
        "required": parameter.required or parameter.location == "path",
        "description": parameter.description,
        "schema": schema_of[parameter.type],
    }
    if parameter.spread:
        result |= {"style": "form", "explode": True}
    return result


def response_object(reply: Reply, schema_of: dict[object, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "description": reply.description,
        "headers": {
            header.name: {
                "description": header.description,
                "required": header.required,
                "schema": schema_of[header.type],
            }
            for header in (*reply.headers, REQUEST_ID_HEADER)
        },
    }
    if reply.body is not None:
        result["content"] = {
            media_type: {"schema": schema_of[body]}
            for media_type, body in ((reply.media_type, reply.body), *reply.alternatives)
        }
    return result
