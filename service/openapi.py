"""The OpenAPI 3.1 document, generated from the route table and the Structs."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, Literal

import msgspec
from starlette import routing
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from service import changes, health, metrics, users
from service.problems import MEDIA_TYPE as PROBLEM_MEDIA_TYPE
from service.queries import ESTIMATE_EXACT_BELOW
from service.routes import Route
from service.schemas import (
    MAX_ATTRIBUTE_NAME_LENGTH,
    MAX_ATTRIBUTES,
    MAX_BULK_USERS,
    MAX_LOOKUP_BYTES,
    MAX_LOOKUP_HANDLES,
    TIMESTAMP_RANGE,
    AttributeValue,
    Changes,
    Email,
    Handles,
    IdempotencyKey,
    Inserted,
    Lookup,
    NewUser,
    NewUsers,
    Patch,
    Problem,
    SearchText,
    Status,
    Timestamp,
    User,
    UserHandle,
)
from service.scopes import OPEN, SCOPES, ScopeName

Endpoint = Callable[[Request], Awaitable[Response]]
JSON = "application/json"
# SCIM's endpoints are described by SCIM's own discovery (RFC 7644 §4), not here.
SCIM_PREFIX = "/scim/"
REF_TEMPLATE = "#/components/schemas/{name}"

# Rules the endpoints check by hand, named so that msgspec writes their
# schemas as it writes those of the Structs.
Limit = Annotated[
    int,
    msgspec.Meta(ge=1, le=users.MAX_LIMIT, extra_json_schema={"default": users.DEFAULT_LIMIT}),
]
ChangesLimit = Annotated[
    int,
    msgspec.Meta(ge=1, le=changes.MAX_LIMIT, extra_json_schema={"default": changes.DEFAULT_LIMIT}),
]
ChangeCursor = Annotated[str, msgspec.Meta(pattern=f"^(?:{changes.CURSOR_PATTERN}|{changes.NOW})$")]
ChangeEvents = Annotated[
    str,
    msgspec.Meta(
        title="ChangeEvents",
        description="Server-sent events. First an `id:` alone, the position the stream starts "
        "from, which an EventSource keeps as its last id without firing an event; then one "
        "per change as it commits: `id:` is its cursor, "
        "`event:` its type, `data:` the change as one line of JSON (a `Change`). A comment "
        f"line, `{changes.HEARTBEAT.decode().strip()}`, comes after "
        f"{changes.HEARTBEAT_SECONDS:.0f} s without one. The stream has no end: the service "
        "ends it when it stops, or when its client reads nothing for FEED_STALL_SECONDS, and "
        "a consumer resumes it with `Last-Event-ID`.",
    ),
]
# No declared default: a generated client would then always send offset=0.
Offset = Annotated[int, msgspec.Meta(ge=0, le=users.MAX_OFFSET)]
Seconds = Annotated[int, msgspec.Meta(ge=0)]


class Header(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: object
    description: str
    required: bool = True


class Parameter(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    location: Literal["path", "query", "header"]
    type: object
    description: str
    required: bool = False  # a path's parameters always are
    # An object whose properties are each a query parameter of their own
    # (style form, exploded): `name` is never sent, only the properties.
    spread: bool = False


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    description: str
    body: object = None  # the type of the body; None for no body
    media_type: str = JSON
    headers: tuple[Header, ...] = ()
    # Other media types the answer may come in, as Accept asks, and their types.
    alternatives: tuple[tuple[str, object], ...] = ()


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    operation_id: str
    tag: Literal["users", "operations"]
    summary: str
    description: str
    parameters: tuple[Parameter, ...] = ()
    body: object = None  # the type of the request body
    replies: dict[int, Reply]
    problems: dict[int, str] = {}
    uses_database: bool = False  # adds 503
    conditional: bool = False  # adds If-Match and 412; with REQUIRE_IF_MATCH, required and 428


LOCATION = Header(name="Location", type=str, description="The path of the new user.")
ETAG = Header(
    name="ETag",
    type=str,
    description="The user's strong entity tag: it changes whenever the user does, and only then.",
)
REPLAYED = Header(
    name="Idempotent-Replayed",
    type=str,
    required=False,
    description="`true` on an answer replayed for a repeated Idempotency-Key.",
)
CONTENT_LOCATION = Header(
    name="Content-Location",
    type=str,
    description="The user's path by its email, which the patch may have changed.",
)
LINK = Header(
    name="Link",
    type=str,
    required=False,
    description='On a full page only: `</users?after=…&limit=N>; rel="next"`, the next page.',
)
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

USER = Parameter(
    name="user",
    location="path",
    type=UserHandle,
    description="The user's email in any letter case, percent-encoded, or its `id`. One "
    "that cannot be either names no user: 404.",
)
IF_NONE_MATCH = Parameter(
    name="If-None-Match",
    location="header",
    type=str,
    description="ETags, comma-separated, or `*`: when one is the user's (weak ones compared "
    "weakly), the answer is 304 without a body.",
)
IF_MATCH = Parameter(
    name="If-Match",
    location="header",
    type=str,
    description="ETags, comma-separated, or `*` for any: the write happens only when one is "
    "the user's current ETag, else 412. Weak ETags never match.",
)
# The service runs with REQUIRE_IF_MATCH=1.
REQUIRED_IF_MATCH = msgspec.structs.replace(
    IF_MATCH, required=True, description=IF_MATCH.description + " Required: without it, 428."
)
IDEMPOTENCY_KEY = Parameter(
    name="Idempotency-Key",
    location="header",
    type=IdempotencyKey,
    description="The answer is stored with the write; "
    "a retry with the same key and body gets it again, byte for byte, with "
    "`Idempotent-Replayed: true`, and nothing is written twice. Keys are per bearer token "
    "and expire after IDEMPOTENCY_TTL seconds (a day by default).",
)
KEY_PROBLEMS = {
    400: "Malformed JSON, invalid UTF-8, or an Idempotency-Key that is not 1 to 255 "
    "printable ASCII characters or is sent on more than one line.",
    422: "The body breaks a rule or repeats a key (`field` is the JSON path of where), or the "
    "Idempotency-Key was used with another body or path.",
}
IN_PROGRESS = " Or a request with the same Idempotency-Key is still in progress: retry later."
UNAVAILABLE = "The database is down or too slow; retry after Retry-After seconds."
PRECONDITION_FAILED = "If-Match names none of the user's current ETags; nothing changed."
PRECONDITION_REQUIRED = "The service requires If-Match (REQUIRE_IF_MATCH=1); the request has none."
QUERY_PARAMETERS = {
    parameter.name: parameter
    for parameter in (
        Parameter(name="limit", location="query", type=Limit, description="Users per page."),
        Parameter(
            name="offset",
            location="query",
            type=Offset,
            description="Users to skip, 0 when absent; with `after`, skipped after that email. "
            "Costs more the deeper it goes, where `after` does not.",
        ),
        Parameter(
            name="after",
            location="query",
            type=Email,
            description="Start after this email, in any letter case (keyset paging, as in `Link`).",
        ),
        Parameter(
            name="q",
            location="query",
            type=SearchText,
            description="Only users whose email or name contains this text, ASCII letters in "
            "any case (as emails compare); `%` and `_` are plain characters.",
        ),
        Parameter(
            name="created_after",
            location="query",
            type=Timestamp,
            description="Only users created after this instant (exclusive): RFC 3339 with an "
            f"offset, `2026-11-01T00:00:00Z`, {TIMESTAMP_RANGE}.",
        ),
        Parameter(
            name="created_before",
            location="query",
            type=Timestamp,
            description="Only users created before this instant (exclusive), as `created_after`.",
        ),
        Parameter(
            name="status",
            location="query",
            type=Status,
            description="Only users with this status; without it, users of either.",
        ),
    )
}
# users.ATTRIBUTE_PREFIX's parameters, as one object spread over the query.
# Its values are Any to msgspec, whose schema of dict[str, str] would
# replace the additionalProperties given here.
AttributeFilters = Annotated[
    dict[str, Any],
    msgspec.Meta(
        title="AttributeFilters",
        description="Only users whose attributes hold every one of these names with exactly "
        "this value: each `attribute.<name>=<value>` is a query parameter of its own.",
        extra_json_schema={
            "propertyNames": {
                "pattern": rf"^{re.escape(users.ATTRIBUTE_PREFIX)}[a-z][a-z0-9_.-]"
                f"{{0,{MAX_ATTRIBUTE_NAME_LENGTH - 1}}}$",
            },
            "additionalProperties": msgspec.json.schema(AttributeValue),
        },
    ),
]
# users.list_users names the parameters it takes; each must have its entry above.
LIST_PARAMETERS = (
    *(QUERY_PARAMETERS[name] for name in users.LIST_PARAMETERS),
    Parameter(
        name="attribute",
        location="query",
        type=AttributeFilters,
        description="`attribute.<name>=<value>`: only users whose attribute `<name>` has "
        "exactly this value. Several names must all match; one name may be given once. "
        f"At most {MAX_ATTRIBUTES}, as a user has. Served by an index at any table size.",
        spread=True,
    ),
    Parameter(
        name="Prefer",
        location="header",
        type=str,
        description="`count=exact` or `count=estimated` (RFC 7240) asks for `X-Total-Count`. "
        "Estimated: PostgreSQL's planner's estimate from the table's statistics, fast at any "
        f"size; counted instead when it estimates fewer than {ESTIMATE_EXACT_BELOW:,}, and "
        "always with an `attribute.<name>` filter, whose values PostgreSQL keeps no statistics "
        "of (`Preference-Applied: count=exact` then says so). Other preferences are ignored.",
    ),
)
TOTAL_COUNT = Header(
    name="X-Total-Count",
    type=Annotated[int, msgspec.Meta(ge=0)],
    required=False,
    description="With `Prefer: count=…`: how many users match the filters, whatever the page.",
)
PREFERENCE_APPLIED = Header(
    name="Preference-Applied",
    type=str,
    required=False,
    description="`count=exact` or `count=estimated`, the count given in `X-Total-Count`.",
)

BODY_PROBLEMS = {
    400: "Malformed JSON, invalid UTF-8, or arrays or objects nested too deeply to read.",
    413: "The body is larger than MAX_BODY_BYTES (64 KiB by default).",
    411: "An HTTP/1.0 request has a body but no Content-Length.",
    415: "The body is not JSON, names a charset other than UTF-8, or has a Content-Encoding "
    "other than identity (the answer then has `Accept-Encoding: identity`).",
    422: "The body breaks a rule or repeats a key; `field` is the JSON path of where (`$.email`).",
}
BEARER_AUTH = {
    "type": "http",
    "scheme": "bearer",
    "description": "The token of a client in the service's API_CLIENTS, which may call the "
    "operations whose security lists a scope it holds, or one of API_TOKENS, which holds every "
    "scope. Sent only in the Authorization header, never in the query string. The scopes: "
    + "; ".join(f"`{scope}`: {grants}" for scope, grants in SCOPES.items()),
}
TAGS = [
    {"name": "users", "description": "Create, look up, list, update and delete users."},
    {"name": "operations", "description": "Probes, metrics and this document, for operators."},
]

_encoder = msgspec.json.Encoder()


async def openapi_json(request: Request) -> Response:
    """This document, built on the first request from the app's own routes and settings."""
    state = request.app.state
    content: bytes | None = getattr(state, "openapi", None)
    if content is None:
        settings = state.settings
        document = build_document(
            request.app.routes,
            tokens=bool(settings.callers()),
            require_if_match=settings.require_if_match,
        )
        content = state.openapi = _encoder.encode(document)
    return Response(content, media_type=JSON)


OPERATIONS: dict[Endpoint, Operation] = {
    health.livez: Operation(
        operation_id="livez",
        tag="operations",
        summary="Liveness probe",
        description="200 while the process serves requests; the database is not consulted.",
        replies={200: Reply(description="Alive.", body=health.Health)},
    ),
    health.readyz: Operation(
        operation_id="readyz",
        tag="operations",
        summary="Readiness probe",
        description=(
            "200 when the primary answers a trivial query within a second and has the users"
            " table. With read replicas, the body reports each replica's state; a replica"
            " never makes the service unready."
        ),
        replies={200: Reply(description="Ready.", body=health.Health)},
        problems={503: "The database did not answer in time."},
    ),
    metrics.metrics: Operation(
        operation_id="metrics",
        tag="operations",
        summary="Prometheus metrics",
        description="Requests, latency, pool and database errors, summed over every worker.",
        replies={
            200: Reply(description="The text exposition format.", body=str, media_type="text/plain")
        },
    ),
    users.list_users: Operation(
        operation_id="listUsers",
        tag="users",
        summary="List users",
        description="A page of users ordered by email regardless of letter case, optionally "
        "only those that match `q`, `created_after`, `created_before`, `status` and "
        "`attribute.<name>` filters, all of them at once. A full page links "
        "the next one in `Link`, with the same filters; following it stays fast at any depth. "
        "Also served at `/users/`.",
        parameters=LIST_PARAMETERS,
        replies={
            200: Reply(
                description="The page.",
                body=list[User],
                headers=(LINK, TOTAL_COUNT, PREFERENCE_APPLIED),
            )
        },
        problems={
            422: "A parameter that is unknown, given twice or breaks its rule; `field` names it."
        },
        uses_database=True,
    ),
    users.create_user: Operation(
        operation_id="createUser",
        tag="users",
        summary="Create a user",
        description="Creates a user whose email no user has in any letter case. Also served "
        "at `/users/`.",
        parameters=(IDEMPOTENCY_KEY,),
        body=NewUser,
        replies={201: Reply(description="Created.", body=User, headers=(LOCATION, ETAG, REPLAYED))},
        problems={
            **BODY_PROBLEMS,
            **KEY_PROBLEMS,
            409: "The email exists in some letter case; `conflicts` holds it as sent."
            + IN_PROGRESS,
            410: "The user that an earlier request with this Idempotency-Key created has "
            "since been deleted: its stored answer keeps nothing of the user.",
        },
        uses_database=True,
    ),
    users.create_users: Operation(
        operation_id="createUsers",
        tag="users",
        summary="Create many users",
        description=f"Creates up to {MAX_BULK_USERS:,} users in one statement: all of them, "
        "or none. Also served at `/users/bulk/`.",
        parameters=(IDEMPOTENCY_KEY,),
        body=NewUsers,
        replies={201: Reply(description="All were created.", body=Inserted, headers=(REPLAYED,))},
        problems={
            **BODY_PROBLEMS,
            **KEY_PROBLEMS,
            409: "Emails exist or repeat; `conflicts` lists every one as sent, in email order. "
            "Nothing was inserted." + IN_PROGRESS,
            413: "The body is larger than MAX_BULK_BYTES (16 MiB by default).",
            422: f"More than {MAX_BULK_USERS:,} users (`field` is `$`), or an item breaks a "
            "rule or repeats a key (`field` is the JSON path of the first, `$[3].email`), or the "
            "Idempotency-Key was used with another body or path.",
        },
        uses_database=True,
    ),
    users.lookup_users: Operation(
        operation_id="lookupUsers",
        tag="users",
        summary="Look up many users",
        description=f"The users that up to {MAX_LOOKUP_HANDLES:,} handles name, each an "
        "email in any letter case or an id: `found` holds each user once, in the order of "
        "its first mention, whether named by email or id, and `missing` the handles that "
        "name no user, as given, in request order (each string once), strings that could be "
        "neither an email nor an id included. One consistent read; with read replicas, a "
        "handle a replica does not know is looked up on the primary before it is reported "
        "missing. A read: it writes nothing, needs no Idempotency-Key (one sent is ignored) "
        "and is safe to retry. Also served at `/users/lookup/`.",
        body=Handles,
        replies={200: Reply(description="The users found, and the handles missing.", body=Lookup)},
        problems={
            **BODY_PROBLEMS,
            413: f"The body is larger than {MAX_LOOKUP_BYTES // 1024 // 1024} MiB.",
            422: f"The body is not an array of strings (`field` is `$`, or the item's path, "
            f"`$[3]`), or holds more than {MAX_LOOKUP_HANDLES:,} (`field` is `$`).",
        },
        uses_database=True,
    ),
    changes.list_changes: Operation(
        operation_id="listChanges",
        tag="users",
        summary="Follow every change to users",
        description="Every committed create, update and delete of a user, in the order a "
        "consumer can follow without gaps or repeats: from a cursor, each change committed "
        "after it exactly once, whatever order concurrent writes commit in. Pass `next` as "
        "`after` to go on. Without `after`, from the oldest change kept; `after=now` answers "
        "no changes, and its `next` is the present position. To copy the users: take `next` "
        "from `after=now`, page through `GET /users`, then follow the feed from there, "
        "applying a change only when its `version` is above the one held. Changes are kept "
        "CHANGES_RETENTION seconds (a week by default). A deleted user's earlier changes "
        "are removed: its `deleted` change keeps only its id. A long transaction on the "
        "database holds the feed back until it ends. With `Accept: text/event-stream`, the "
        "changes come as server-sent events, each as soon as it can be read; `limit` and "
        "`wait` then do not apply. A stream is sent when Accept names `text/event-stream` "
        "with a weight above 0 and no lower than JSON's; its first bytes are an `id:` "
        "alone, the position it starts from. Also served at `/users/changes/`.",
        parameters=(
            Parameter(
                name="after",
                location="query",
                type=ChangeCursor,
                description="A change's `cursor` or a page's `next`, or `now`.",
            ),
            Parameter(
                name="limit",
                location="query",
                type=ChangesLimit,
                description="Changes per page.",
            ),
            Parameter(
                name="wait",
                location="query",
                type=Annotated[int, msgspec.Meta(ge=0, le=changes.MAX_WAIT)],
                description="A long poll: when nothing is new, hold the request up to this "
                "many seconds, answering as soon as a change can be read, or with no "
                "changes when the time runs out. 0, the default, answers at once. A "
                "waiting request holds no database connection; a graceful stop answers "
                "it at once.",
            ),
            Parameter(
                name="Last-Event-ID",
                location="header",
                type=ChangeCursor,
                description="The cursor to go on after, in place of `after`: what an "
                "EventSource sends as it reconnects a stream, the `id:` of the last event "
                "it received.",
            ),
        ),
        replies={
            200: Reply(
                description="The changes after the cursor; with `Accept: text/event-stream`, "
                "a stream of them, as they come, until the service stops.",
                body=Changes,
                alternatives=((changes.EVENT_STREAM, ChangeEvents),),
            )
        },
        problems={
            410: "The feed cannot go on from this cursor: the changes after it were purged, "
            "it was made by another database (another server, another database of this one, "
            "or this one before a restore from a dump), or no transaction has reached it "
            "(from before a failover that lost writes). List the users again, and follow the "
            "feed from `after=now` taken before listing.",
            503: "The database is down or too slow; or, for a long poll or a stream, the "
            "worker already holds FEED_MAX_CONSUMERS of them (`Retry-After: 5`).",
            422: "A parameter that is unknown, given twice or breaks its rule, a cursor this "
            "feed did not make among them; `field` names it.",
        },
        uses_database=True,
    ),
    users.get_user: Operation(
        operation_id="getUser",
        tag="users",
        summary="Look up a user",
        description="The user with an email, in any letter case, or with an id.",
        parameters=(USER, IF_NONE_MATCH),
        replies={
            200: Reply(description="The user.", body=User, headers=(ETAG,)),
            304: Reply(description="If-None-Match names the user's ETag.", headers=(ETAG,)),
        },
        problems={404: "No user has that email or id."},
        uses_database=True,
    ),
    users.update_user: Operation(
        operation_id="updateUser",
        tag="users",
        summary="Change a user",
        description="Changes any of the name, email, status and attributes of the user with "
        "an email, in any letter case, or with an id, in one write. `attributes` is a JSON "
        "Merge Patch (RFC 7396) of them: a name given a string is set, a name given null is "
        "removed, and the others are kept. The id and `created_at` stay.",
        parameters=(USER,),
        body=Patch,
        replies={
            200: Reply(
                description="The changed user; the user as it is, unchanged and with the "
                "same ETag, when the patch changes nothing.",
                body=User,
                headers=(ETAG, CONTENT_LOCATION),
            )
        },
        problems={
            **BODY_PROBLEMS,
            404: "No user has that email or id.",
            409: "Another user has the new email, in some letter case; `conflicts` holds it "
            "as sent. Nothing changed.",
            503: "The database is down or too slow, or other writes to the user kept coming "
            "between this one's read and its change; retry after Retry-After seconds.",
            422: "The body breaks a rule, or has no field; `field` is the JSON path of where "
            "(`$.email`, `$.attributes.tenant`, `$`). Or the attributes, merged, would hold "
            "more than 50 names or 8,192 bytes (`$.attributes`); nothing changed.",
        },
        uses_database=True,
        conditional=True,
    ),
    users.delete_user: Operation(
        operation_id="deleteUser",
        tag="users",
        summary="Delete a user",
        description="Deletes the user with an email, in any letter case, or with an id.",
        parameters=(USER,),
        replies={204: Reply(description="Deleted.")},
        problems={404: "No user has that email or id."},
        uses_database=True,
        conditional=True,
    ),
    openapi_json: Operation(
        operation_id="openapi",
        tag="operations",
        summary="This OpenAPI document",
        description="The contract of this service as it runs: bearer tokens and their scopes "
        "appear only when it was started with API_CLIENTS or API_TOKENS, and a required "
        "If-Match (and its 428) only with REQUIRE_IF_MATCH=1.",
        replies={200: Reply(description="OpenAPI 3.1.", body=dict[str, Any])},
    ),
}


def documented_routes(routes: Iterable[BaseRoute]) -> list[tuple[Route, str, Operation]]:
    """Each route and method (HEAD aside, Starlette adds it to GET) with its operation."""
    found: list[tuple[Route, str, Operation]] = []
    for route in routes:
        if not isinstance(route, routing.Route) or route.path.startswith(SCIM_PREFIX):
            continue
        if not isinstance(route, Route):
            raise LookupError(f"{route.path} names no scope: build it with service.routes.Route")
        operation = OPERATIONS.get(route.endpoint)
        if operation is None:
            raise LookupError(f"{route.path} has no entry in service.openapi.OPERATIONS")
        found += [
            (route, method, operation) for method in sorted(set(route.methods or ()) - {"HEAD"})
        ]
    return found


def build_document(
    routes: Iterable[BaseRoute], *, tokens: bool, require_if_match: bool
) -> dict[str, Any]:
    """The document of these routes, true to the settings that change the contract:
    `tokens`, bearer tokens are required; `require_if_match`, so is If-Match on writes."""
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
            scope=route.scope if tokens else OPEN,
            require_if_match=require_if_match,
        )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "users",
            "version": "1",
            "description": "Creates, looks up, lists, updates and deletes users. Every error "
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
    return document


def operation_object(
    operation: Operation,
    schema_of: dict[object, Any],
    *,
    scope: ScopeName | None,
    require_if_match: bool,
) -> dict[str, Any]:
    """The operation as the running service serves it: `scope`, the scope a caller needs,
    OPEN when the service has no clients or the route is open."""
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
    result["security"] = [] if scope is OPEN else [{"bearerAuth": [scope]}]
    if scope is not OPEN:
        problems[401] = (
            "No bearer token in the Authorization header, one the service does not accept, "
            "or a token in the query string."
        )
        problems[403] = f"The client does not hold the scope `{scope}`."
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
