"""/scim/v2/Users: the users as SCIM resources, read and written through the query module."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service import metrics, queries
from service.bodies import read_body
from service.database import db_of
from service.queries import Condition, UserKey
from service.schemas import EMAIL_RULE, TEXT_RULE, Email, Name
from service.scim import filters
from service.scim.errors import ScimError
from service.scim.resources import (
    LIST_RESPONSE,
    MEDIA_TYPE,
    PATCH_OP,
    SEARCH_REQUEST,
    USER_SCHEMA,
    ExternalId,
    ListResponse,
    ScimUser,
    UserEmail,
    UserIn,
    UserMeta,
    UserName,
)
from service.users import delete, settings_of, write_condition

DEFAULT_COUNT = 100
MAX_COUNT = 1000
MAX_OPERATIONS = 100
MAX_INDEX = 2**31 - 1  # startIndex and count, RFC 7644's integers
# sortBy: the attributes a list may be ordered by, each with a unique tiebreak.
SORTS = {
    "username": "lower(email)",
    "emails": "lower(email)",
    "emails.value": "lower(email)",
    "displayname": 'lower(name COLLATE "C"), lower(email)',
    "name.formatted": 'lower(name COLLATE "C"), lower(email)',
    "externalid": "external_id, lower(email)",
    "id": "public_id",
    "meta.created": "created_at, lower(email)",
    "meta.lastmodified": "updated_at, lower(email)",
}
ALWAYS_RETURNED = {"schemas", "id"}
# The parameters of a list or search (RFC 7644 §3.4.2, §3.4.3), and of a read of one user.
LIST_PARAMETERS = (
    *("filter", "startIndex", "count", "sortBy", "sortOrder"),
    *("attributes", "excludedAttributes"),
)
USER_PARAMETERS = ("attributes", "excludedAttributes")

# An attribute with a sub-attribute or not, or emails[filter] with one or not.
_path = re.compile(r"[a-z][a-z0-9_$-]*(\.[a-z][a-z0-9_$-]*)?|emails\[.+\](\.[a-z]+)?", re.DOTALL)
# A paging number: int() alone also takes "+3", "1_0", " 1" and other scripts' digits.
_whole = re.compile(r"-?[0-9]{1,19}")
_encoder = msgspec.json.Encoder()
_decode_any = msgspec.json.Decoder(dict[str, Any])


class State(NamedTuple):
    """What a SCIM write sets: the columns of the user it may change."""

    name: str
    email: str
    status: str
    external_id: str | None


def scim_response(
    content: object, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encoder.encode(content), status_code, headers, media_type=MEDIA_TYPE)


def scim_url(request: Request, path: str) -> str:
    """The absolute URL of a path under /scim/v2: under PUBLIC_URL when it is set; else
    as the caller reached the service, Starlette's base_url, whose scheme uvicorn takes
    from X-Forwarded-Proto only from a peer in --forwarded-allow-ips, and whose host is
    the request's Host header, which nothing vets."""
    base = settings_of(request).public_url or str(request.base_url).rstrip("/")
    return f"{base}/scim/v2/{path}"


def location_of(request: Request, user_id: str) -> str:
    return scim_url(request, f"Users/{user_id}")


def etag_of(row: asyncpg.Record) -> str:
    return f'"{row["version"]}-{row["id"]}"'


def to_scim(request: Request, row: asyncpg.Record) -> ScimUser:
    return ScimUser(
        schemas=[USER_SCHEMA],
        id=row["id"],
        externalId=row["external_id"],
        userName=row["email"],
        displayName=row["name"],
        name=UserName(formatted=row["name"]),
        emails=[UserEmail(value=row["email"])],
        active=row["status"] == "active",
        meta=UserMeta(
            resourceType="User",
            created=row["created_at"],
            lastModified=row["updated_at"],
            location=location_of(request, row["id"]),
            version=etag_of(row),
        ),
    )


def user_response(request: Request, row: asyncpg.Record, status_code: int = 200) -> Response:
    headers = {"ETag": etag_of(row)}
    if status_code == 201:
        headers["Location"] = location_of(request, row["id"])
    return scim_response(to_scim(request, row), status_code, headers)


def checked(state: State) -> State:
    """The state, if the service's rules for users take it; else invalidValue."""
    for rule, value, attribute in (
        (Email, state.email, "userName"),
        (Name, state.name, "displayName"),
        (ExternalId, state.external_id, "externalId"),
    ):
        if value is None:
            continue
        try:
            msgspec.convert(value, rule)
        except msgspec.ValidationError as exc:
            detail = f"{attribute}: {exc}"
            if "matching regex" in detail:
                # The raw pattern helps nobody: the rule in words, as /users says it.
                detail = f"{attribute} must be {EMAIL_RULE if rule is Email else TEXT_RULE}"
            raise ScimError(400, detail, "invalidValue") from None
    return state


def state_of(body: UserIn) -> State:
    """The user a POST or PUT body describes. userName is the email; the name is
    displayName, else name.formatted, else givenName and familyName, else userName."""
    given = body.name
    parts = [] if given is None else [p for p in (given.givenName, given.familyName) if p]
    name = body.displayName or (given and given.formatted) or " ".join(parts) or body.userName
    status = "active" if truth(body.active) else "disabled"
    return checked(State(name, body.userName, status, body.externalId))


def user_id_of(request: Request) -> UUID:
    try:
        return UUID(request.path_params["id"])
    except ValueError:
        raise ScimError(404, "No user has this id") from None


def condition_of(request: Request) -> Condition:
    """If-Match, as on /users: a 428 without one when REQUIRE_IF_MATCH is set."""
    return write_condition(request)


async def body_of(request: Request) -> bytes:
    settings = settings_of(request)
    return bytes(await read_body(request, settings.max_body_bytes, settings.body_timeout))


def decoded(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ScimError(400, str(exc), "invalidValue") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ScimError(400, f"Malformed JSON: {exc}", "invalidSyntax") from None
    except RecursionError:
        raise ScimError(400, "Malformed JSON: nested too deeply", "invalidSyntax") from None


def parameters(
    given: Iterable[tuple[str, Any]], known: tuple[str, ...], where: str, *, strict: bool = True
) -> dict[str, Any]:
    """The parameters by the names `known` spells, given in any letter case as RFC 7643
    §2.1 has attribute names, each at most once; an unknown one is a 400 when `strict`,
    else left out."""
    spelling = {name.lower(): name for name in known}
    found: dict[str, Any] = {}
    for name, value in given:
        known_name = spelling.get(name.lower())
        if known_name is None:
            if not strict:
                continue
            detail = f"Unknown parameter {name!r}: {where} takes {', '.join(known)}"
            raise ScimError(400, detail, "invalidValue")
        if known_name in found:
            detail = f"{known_name} may be given once; {name!r} gives it again"
            raise ScimError(400, detail, "invalidValue")
        found[known_name] = value
    return found


def message(body: bytes, schema: str, known: tuple[str, ...], *, strict: bool) -> dict[str, Any]:
    """A PATCH or search body: a JSON object whose schemas, if given, name `schema`,
    its members by the names `known` spells."""
    found = parameters(
        decoded(_decode_any, body).items(), ("schemas", *known), schema.rpartition(":")[2],
        strict=strict,
    )  # fmt: skip
    schemas = found.get("schemas", [schema])
    if not isinstance(schemas, list) or schema not in schemas:
        raise ScimError(400, f"The body's schemas must be [{schema!r}]", "invalidSyntax")
    return found


# Attribute names are case-insensitive (RFC 7643 §2.1): each spelling of the
# names the service reads, by its lower case.
CANONICAL = {
    name.lower(): name
    for name in (
        *("schemas", "userName", "externalId", "displayName", "name", "emails", "active"),
        *("formatted", "givenName", "familyName", "value", "type", "primary"),
    )
}


def canonical(value: Any, depth: int = 3) -> Any:
    """A body with the attribute names the service reads spelt as its Structs spell them,
    down to the emails' and the name's own: the levels it reads."""
    if depth == 0:
        return value
    if isinstance(value, dict):
        return {
            CANONICAL.get(key.lower(), key): canonical(item, depth - 1)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [canonical(item, depth) for item in value]
    return value


def user_in(body: bytes) -> UserIn:
    try:
        return msgspec.convert(canonical(decoded(_decode_any, body)), UserIn)
    except msgspec.ValidationError as exc:
        raise ScimError(400, str(exc), "invalidValue") from None


async def create_user(request: Request) -> Response:
    state = state_of(user_in(await body_of(request)))
    try:
        row = await db_of(request).fetchrow(queries.SCIM_CREATE, *state)
    except asyncpg.UniqueViolationError as exc:
        raise taken(exc) from None
    assert row is not None
    metrics.USERS_CREATED.inc()
    return user_response(request, row, 201)


def taken(exc: asyncpg.UniqueViolationError) -> ScimError:
    attribute = "externalId" if exc.constraint_name == "users_external_id_key" else "userName"
    return ScimError(409, f"Another user has this {attribute}", "uniqueness")


async def get_user(request: Request) -> Response:
    row = await db_of(request).fetchrow(queries.SCIM_FIND, user_id_of(request))
    if row is None:
        raise ScimError(404, "No user has this id")
    return scim_response(
        selected(to_scim(request, row), *attribute_params(request)), headers={"ETag": etag_of(row)}
    )


async def replace_user(request: Request) -> Response:
    state = state_of(user_in(await body_of(request)))
    return await write(request, lambda _: state)


async def patch_user(request: Request) -> Response:
    body = message(await body_of(request), PATCH_OP, ("Operations",), strict=False)
    operations = body.get("Operations")
    if not isinstance(operations, list):
        raise ScimError(400, f"A PATCH is a {PATCH_OP} with a list of Operations", "invalidSyntax")
    if not 1 <= len(operations) <= MAX_OPERATIONS:
        raise ScimError(400, f"A PATCH has 1 to {MAX_OPERATIONS} Operations", "invalidValue")
    return await write(request, lambda state: patched(state, operations))


async def write(request: Request, change: Callable[[State], State]) -> Response:
    """The user read and locked, changed by `change` and written back in one
    transaction: a concurrent write to the same user waits for this one, as
    the native PATCH's single UPDATE does. If-Match is checked against the
    version locked."""
    user_id, condition = user_id_of(request), condition_of(request)
    async with db_of(request).connection() as conn, conn.transaction():
        row = await conn.fetchrow(queries.SCIM_LOCK, user_id)
        if row is None:
            raise ScimError(404, "No user has this id")
        if condition is not None and (UUID(row["id"]), row["version"]) not in condition:
            raise ScimError(412, "The user has changed: If-Match does not name its version")
        current = State(row["name"], row["email"], row["status"], row["external_id"])
        state = checked(change(current))
        try:
            written = await conn.fetchrow(queries.SCIM_REPLACE, user_id, *state, row["version"])
        except asyncpg.UniqueViolationError as exc:
            raise taken(exc) from None
    assert written is not None  # the row stayed locked at the version read
    if written["version"] != row["version"]:
        metrics.USERS_UPDATED.inc()
    return user_response(request, written)


async def delete_user(request: Request) -> Response:
    return await delete(request, UserKey(None, user_id_of(request)))


# PATCH (RFC 7644 §3.5.2): each operation applied in turn to the user as read.
def patched(state: State, operations: list[Any]) -> State:
    for operation in operations:
        if not isinstance(operation, dict):
            raise ScimError(400, "Each operation is an object", "invalidSyntax")
        op = str(operation.get("op", "")).lower()
        path = operation.get("path")
        value = operation.get("value")
        if op not in ("add", "replace", "remove"):
            raise ScimError(400, f"Unknown op {operation.get('op')!r}", "invalidSyntax")
        if path is not None and not isinstance(path, str):
            raise ScimError(400, "path is a string", "invalidPath")
        if op == "remove":
            if path is None:
                raise ScimError(400, "remove needs a path", "noTarget")
            state = removed(state, path)
        elif path is None:
            if not isinstance(value, dict):
                raise ScimError(400, f"{op} without a path takes an object", "invalidValue")
            for attribute, given in value.items():
                state = assigned(state, attribute, given)
        else:
            state = assigned(state, path, value)
    return state


def attribute_path(path: str) -> str:
    """A path in lower case, without the User schema's URN; value filters on emails
    that every user's one work email meets are dropped; others are noTarget."""
    lowered = path.strip().lower()
    if lowered.startswith(filters.USER_URN.lower()):
        lowered = lowered[len(filters.USER_URN) :]
    if not _path.fullmatch(lowered):
        raise ScimError(400, f"{path!r} is not an attribute path", "invalidPath")
    if lowered.startswith("emails["):
        inner, _, rest = lowered[len("emails[") :].partition("]")
        try:
            condition = filters.to_sql(f"emails[{inner}]").text
        except filters.InvalidFilter as exc:
            raise ScimError(400, f"path {path!r}: {exc}", "invalidPath") from None
        if condition != "true":
            raise ScimError(
                400, f"path {path!r} selects no email: the user has one work email", "noTarget"
            )
        lowered = "emails" + rest
    return lowered


def text_value(path: str, value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # a multi-valued attribute given as one item
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if not isinstance(value, str):
        raise ScimError(400, f"{path} takes a string", "invalidValue")
    return value


def assigned(state: State, path: str, value: Any) -> State:
    attribute = attribute_path(path)
    if attribute in ("username", "emails", "emails.value"):
        if attribute == "emails" and isinstance(value, list):
            value = the_email(path, value)
        return state._replace(email=text_value(path, value))
    if attribute in ("displayname", "name.formatted"):
        return state._replace(name=text_value(path, value))
    if attribute == "name":
        if not isinstance(value, dict):
            raise ScimError(400, "name takes an object", "invalidValue")
        formatted = value.get("formatted")
        return (
            state
            if formatted is None
            else state._replace(name=text_value("name.formatted", formatted))
        )
    if attribute in ("name.givenname", "name.familyname", "emails.type", "emails.primary"):
        return state  # kept by no column: accepted, as the schema does not advertise them
    if attribute == "externalid":
        return state._replace(external_id=None if value is None else text_value(path, value))
    if attribute == "active":
        return state._replace(status="active" if truth(value) else "disabled")
    if attribute in ("id", "meta", "schemas") or attribute.startswith("meta."):
        raise ScimError(400, f"{path} is read-only", "mutability")
    return state  # an attribute the schema does not advertise: ignored (RFC 7643 §3)


def the_email(path: str, emails: list[Any]) -> Any:
    """The email of a list that is the user's: the primary one, else the work one, else
    one without a type. A home or other email alone is not."""
    items = [item for item in emails if isinstance(item, dict)]
    for chosen in (
        [item for item in items if item.get("primary") in (True, "true", "True")],
        [item for item in items if str(item.get("type", "")).lower() == "work"],
        [item for item in items if item.get("type") is None],
    ):
        if chosen:
            return chosen[0]
    raise ScimError(400, f"{path}: no primary or work email to be the user's", "noTarget")


def truth(value: Any) -> bool:
    # Entra ID sends "True" and "False" as strings.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ScimError(400, "active takes true or false", "invalidValue")


def removed(state: State, path: str) -> State:
    attribute = attribute_path(path)
    if attribute == "externalid":
        return state._replace(external_id=None)
    if attribute in ("displayname", "name", "name.formatted"):
        return state._replace(name=state.email)  # a user always has a name: its email stands in
    if attribute in (
        "username",
        "emails",
        "emails.value",
        "active",
        "id",
        "schemas",
    ) or attribute.startswith("meta"):
        raise ScimError(400, f"{path} is required and cannot be removed", "mutability")
    return state


# Lists and searches.
class Listing(NamedTuple):
    filter: str | None
    start_index: int
    per_page: int
    sort_by: str | None
    descending: bool
    attributes: list[str]
    excluded: list[str]


def int_param(raw: object, name: str, default: int) -> int:
    """A whole number in ASCII digits, optionally negative (clamped by the caller, as
    RFC 7644 §3.4.2.4 says): a JSON integer in a search body, text in a query."""
    if raw is None:
        return default
    text = str(raw) if type(raw) is int else raw
    if not (isinstance(text, str) and _whole.fullmatch(text)):
        raise ScimError(400, f"{name} is a whole number in the digits 0-9", "invalidValue")
    number = int(text)
    if abs(number) > MAX_INDEX:
        raise ScimError(400, f"{name} is at most {MAX_INDEX:,}", "invalidValue")
    return number


def names(raw: object) -> list[str]:
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return [attribute_path(str(item)) for item in items if str(item).strip()]


def listing(given: dict[str, Any]) -> Listing:
    order = str(given.get("sortOrder") or "ascending").lower()
    if order not in ("ascending", "descending"):
        raise ScimError(400, "sortOrder is ascending or descending", "invalidValue")
    return Listing(
        filter=None if given.get("filter") is None else str(given["filter"]),
        start_index=max(1, int_param(given.get("startIndex"), "startIndex", 1)),
        per_page=min(MAX_COUNT, max(0, int_param(given.get("count"), "count", DEFAULT_COUNT))),
        sort_by=None if given.get("sortBy") is None else str(given["sortBy"]),
        descending=order == "descending",
        attributes=names(given.get("attributes")),
        excluded=names(given.get("excludedAttributes")),
    )


def query_parameters(request: Request, known: tuple[str, ...]) -> dict[str, Any]:
    where = f"{request.method} {request.url.path}"
    return parameters(request.query_params.multi_items(), known, where)


def attribute_params(request: Request) -> tuple[list[str], list[str]]:
    params = query_parameters(request, USER_PARAMETERS)
    return names(params.get("attributes")), names(params.get("excludedAttributes"))


def selected(user: ScimUser, attributes: list[str], excluded: list[str]) -> dict[str, Any]:
    """The user with only `attributes` (and those always returned), or without `excluded`;
    emails' type and primary only when asked for."""
    for email in user.emails:
        email.type = "work" if "emails.type" in attributes else None
        email.primary = True if "emails.primary" in attributes else None
    shown: dict[str, Any] = msgspec.to_builtins(user)
    keys = {key.lower(): key for key in shown}
    if attributes:
        wanted = {name.partition(".")[0] for name in attributes} | ALWAYS_RETURNED
        shown = {key: value for key, value in shown.items() if key.lower() in wanted}
    for name in excluded:
        key = keys.get(name.partition(".")[0])
        if key is not None and key.lower() not in ALWAYS_RETURNED and "." not in name:
            shown.pop(key, None)
    return shown


async def list_users(request: Request) -> Response:
    return await answer_list(request, listing(query_parameters(request, LIST_PARAMETERS)))


async def search_users(request: Request) -> Response:
    body = message(await body_of(request), SEARCH_REQUEST, LIST_PARAMETERS, strict=True)
    return await answer_list(request, listing(body))


async def answer_list(request: Request, given: Listing) -> Response:
    where, arguments = "true", list[object]()
    if given.filter is not None:
        try:
            where, arguments = filters.to_sql(given.filter)
        except filters.InvalidFilter as exc:
            raise ScimError(400, str(exc), "invalidFilter") from None
    order = "lower(email)"
    if given.sort_by is not None:
        found = SORTS.get(attribute_path(given.sort_by))
        if found is None:
            raise ScimError(400, f"sortBy takes one of {', '.join(SORTS)}", "invalidValue")
        order = found
    if given.descending:
        order = ", ".join(f"{part} DESC" for part in order.split(", "))
    query = queries.SCIM_PAGE.format(
        where=where, order=order, offset=len(arguments) + 1, limit=len(arguments) + 2
    )
    async with queries.searching(db_of(request)) as conn:
        rows = []
        if given.per_page:
            rows = await conn.fetch(query, *arguments, given.start_index - 1, given.per_page)
        total = await conn.fetchval(queries.SCIM_COUNT.format(where=where), *arguments)
    resources = [selected(to_scim(request, row), given.attributes, given.excluded) for row in rows]
    return scim_response(
        ListResponse(
            schemas=[LIST_RESPONSE],
            totalResults=int(total),
            startIndex=given.start_index,
            itemsPerPage=len(resources),
            Resources=resources,
        )
    )
