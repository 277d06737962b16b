"""/scim/v2/Users: the users as SCIM resources, read and written through the query module."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service import metrics, queries
from service.auth import actor_of
from service.bodies import read_body
from service.database import db_of
from service.queries import Actor, Condition, UserKey, encode_attributes
from service.schemas import (
    ATTRIBUTE_BOUNDS,
    EMAIL_RULE,
    MAX_ATTRIBUTES,
    MAX_ATTRIBUTES_BYTES,
    TEXT_RULE,
    Email,
    Name,
    email_key,
)
from service.scim import filters, kept
from service.scim.errors import ScimError
from service.scim.mapping import (
    COLUMNS,
    ENTERPRISE_URN,
    FORMATTED_NAME,
    NAMES,
    SHARED,
    TYPES,
    WORK_EMAIL,
)
from service.scim.resources import (
    LIST_RESPONSE,
    MEDIA_TYPE,
    PATCH_OP,
    SEARCH_REQUEST,
    USER_SCHEMA,
    EmailIn,
    ExternalId,
    ListResponse,
    NameIn,
    UserIn,
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

# A paging number: int() alone also takes "+3", "1_0", " 1" and other scripts' digits.
_whole = re.compile(r"-?[0-9]{1,19}")
_encoder = msgspec.json.Encoder()
_decode_any = msgspec.json.Decoder(dict[str, Any])
_decode_attributes = msgspec.json.Decoder(dict[str, str])
_decode_list = msgspec.json.Decoder(list[Any])


class State(NamedTuple):
    """What a SCIM write sets: the columns of the user it may change. `attributes`
    are all the user's: the table's (service/scim/mapping.py) and others, which
    SCIM leaves as they are. Never changed in place."""

    name: str
    email: str
    status: str
    external_id: str | None
    attributes: dict[str, str]

    def columns(self) -> tuple[str, str, str, str | None, str]:
        return (*self[:4], encode_attributes(self.attributes) if self.attributes else "{}")


def state_of_row(row: asyncpg.Record) -> State:
    attributes = row["attributes"]
    return State(
        row["name"],
        row["email"],
        row["status"],
        row["external_id"],
        {} if attributes == "{}" else _decode_attributes.decode(attributes),
    )


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


def to_scim(row: asyncpg.Record, location: str, groups: str | None = None) -> dict[str, Any]:
    """The user as SCIM shows it: userName is its email, displayName its name,
    active its status; the work email and name.formatted are the attributes
    email.work and formatted_name when set, else the email and the name; the
    table's other attributes in their SCIM shapes; and its `groups`, the JSON
    array SCIM_USER_GROUPS makes, when read."""
    attributes = row["attributes"]
    values = {} if attributes == "{}" else kept.scim_values(_decode_attributes.decode(attributes))
    user: dict[str, Any] = {
        "schemas": [USER_SCHEMA, ENTERPRISE_URN] if ENTERPRISE_URN in values else [USER_SCHEMA],
        "id": row["id"],
    }
    if row["external_id"] is not None:
        user["externalId"] = row["external_id"]
    user["userName"] = row["email"]
    user["displayName"] = row["name"]
    user["name"] = {"formatted": row["name"], **values.pop("name", {})}
    entries = values.pop("emails", [])
    work = next((entry["value"] for entry in entries if entry["type"] == "work"), row["email"])
    user["emails"] = [{"value": work}, *(entry for entry in entries if entry["type"] != "work")]
    user.update(values)
    user["active"] = row["status"] == "active"
    if groups is not None and groups != "[]":
        user["groups"] = _decode_list.decode(groups)
    user["meta"] = {
        "resourceType": "User",
        "created": row["created_at"],
        "lastModified": row["updated_at"],
        "location": location,
        "version": etag_of(row),
    }
    return user


def user_response(request: Request, row: asyncpg.Record, status_code: int = 200) -> Response:
    # One URL for meta.location and Location: each build of it was 2% of a
    # create's time in py-spy (Starlette's base_url).
    location = location_of(request, row["id"])
    headers = {"ETag": etag_of(row)}
    if status_code == 201:
        headers["Location"] = location
    return scim_response(to_scim(row, location), status_code, headers)


def fitting(rule: Any) -> Callable[[str], bool]:
    """Whether a string keeps an Annotated str rule's Meta, tested as msgspec does
    (lengths in characters, the pattern searched), made once: msgspec.convert
    hashes the Annotated type on every call (timeit: 3 µs a rule, this 0.7)."""
    meta = rule.__metadata__[0]
    low, high, pattern = meta.min_length or 0, meta.max_length, re.compile(meta.pattern)
    return lambda value: low <= len(value) <= high and pattern.search(value) is not None


# The rules of a user's columns, each beside its test; msgspec.convert spells
# the error of a value that fails it.
RULES = [
    (rule, fitting(rule), attribute)
    for rule, attribute in ((Email, "userName"), (Name, "displayName"), (ExternalId, "externalId"))
]


def checked(state: State) -> State:
    """The state, if the service's rules for users take it; else invalidValue. A work
    email that is userName (in any letter case), or a name.formatted that is
    displayName, is not kept apart."""
    attributes = state.attributes
    if email_key(attributes.get(WORK_EMAIL, "")) == email_key(state.email):
        attributes = {k: v for k, v in attributes.items() if k != WORK_EMAIL}
    if attributes.get(FORMATTED_NAME) == state.name:
        attributes = {k: v for k, v in attributes.items() if k != FORMATTED_NAME}
    state = state._replace(attributes=attributes)
    values = (state.email, state.name, state.external_id)
    for (rule, fits, attribute), value in zip(RULES, values, strict=True):
        if value is None or fits(value):
            continue
        try:
            msgspec.convert(value, rule)
        except msgspec.ValidationError as exc:
            detail = f"{attribute}: {exc}"
            if "matching regex" in detail:
                # The raw pattern helps nobody: the rule in words, as /users says it.
                detail = f"{attribute} must be {EMAIL_RULE if rule is Email else TEXT_RULE}"
            raise ScimError(400, detail, "invalidValue") from None
    # The bounds of a user's attributes, the native API's: a write past them changes nothing.
    size = len(_encoder.encode(state.attributes)) if state.attributes else 0
    if len(state.attributes) > MAX_ATTRIBUTES or size > MAX_ATTRIBUTES_BYTES:
        raise ScimError(
            400,
            f"The user's attributes would be {len(state.attributes)} names and {size:,} bytes "
            f"of JSON: a user holds {ATTRIBUTE_BOUNDS}",
            "invalidValue",
        )
    return state


def state_of(body: UserIn, raw: dict[str, Any], current: State | None, skipped: list[str]) -> State:
    """The user a POST or PUT body describes. userName is the email; the name is
    displayName, else name.formatted, else givenName and familyName, else userName.
    Without active, a PUT keeps the status (re-enabling a user is never implied)
    and a create is active. The table's attributes are those the body gives: a PUT
    removes those it leaves out, and keeps the user's other attributes."""
    given = body.name
    parts = [] if given is None else [p for p in (given.givenName, given.familyName) if p]
    name = body.displayName or (given and given.formatted) or " ".join(parts) or body.userName
    if body.active is not None:
        status = "active" if truth(body.active) else "disabled"
    else:
        status = "active" if current is None else current.status
    others = {} if current is None else current.attributes
    changes = kept.Changes(skipped)
    for key, value in raw.items():
        described(changes, key, value)
    attributes = changes.applied({k: v for k, v in others.items() if k not in NAMES})
    return checked(State(name, body.userName, status, body.externalId, attributes))


def described(changes: kept.Changes, key: str, value: Any) -> None:
    """A POST or PUT body's attribute `key`, if the table keeps it; else skipped."""
    if changes.set_text(kept.SIMPLE.get(key.lower()), value):
        return  # title and the like, without a Path
    try:
        path = kept.parse(key)
    except ScimError:
        changes.skip(key, value)  # no attribute of any schema: ignored, as any unknown one
        return
    if path.schema == USER_SCHEMA and path.attribute == "groups":
        return  # read-only, as a PUT may send what it read (RFC 7644 §3.5.1): ignored
    if path.schema == USER_SCHEMA and path.filter is None and path.sub is None:
        if path.attribute in COLUMNS:
            return  # read by UserIn, or set by the service
        if path.attribute == "emails":
            value = as_work(key, value)
    changes.assign(path, value, replace=True)


def as_work(path: str, value: Any) -> list[Any]:
    """A list of emails with the user's own one (primary, else work, else without a
    type) as the work one: userName is the identity, this its work email."""
    entries = value if isinstance(value, list) else [value]
    own = the_email(path, entries, required=False)
    return [
        {**entry, "type": "work"} if own is not None and entry is own else entry
        for entry in entries
    ]


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
# names the service reads, by its lower case: UserIn's members, and theirs.
MEMBERS = {name.lower(): name for name in UserIn.__struct_fields__}
CANONICAL = MEMBERS | {
    name.lower(): name for struct in (NameIn, EmailIn) for name in struct.__struct_fields__
}


def canonical(value: Any, depth: int) -> Any:
    """A value with the attribute names the service reads spelt as its Structs spell
    them, down to `depth` levels of objects: the emails' and the name's own."""
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


def user_in(body: bytes) -> tuple[UserIn, dict[str, Any]]:
    """A POST or PUT body: what the user's columns take, and the whole of it."""
    raw: dict[str, Any] = decoded(_decode_any, body)
    # Only the members UserIn reads: spelling the table's attributes too, which it
    # ignores, was a fifth of the translation of Entra's create (cProfile).
    read = {
        MEMBERS[key.lower()]: canonical(item, 2)
        for key, item in raw.items()
        if key.lower() in MEMBERS
    }
    try:
        return msgspec.convert(read, UserIn), raw
    except msgspec.ValidationError as exc:
        raise ScimError(400, str(exc), "invalidValue") from None


def reported(skipped: list[str]) -> None:
    for path in dict.fromkeys(skipped):
        kept.skip(path)


async def create_user(request: Request) -> Response:
    skipped: list[str] = []
    state = state_of(*user_in(await body_of(request)), None, skipped)
    try:
        row = await db_of(request).fetchrow(
            queries.SCIM_CREATE, *state.columns(), *actor_of(request.scope)
        )
    except asyncpg.UniqueViolationError as exc:
        raise taken(exc) from None
    assert row is not None
    metrics.USERS_CREATED.inc()
    reported(skipped)
    return user_response(request, row, 201)


def taken(exc: asyncpg.UniqueViolationError) -> ScimError:
    attribute = "externalId" if exc.constraint_name == "users_external_id_key" else "userName"
    return ScimError(409, f"Another user has this {attribute}", "uniqueness")


async def get_user(request: Request) -> Response:
    attributes, excluded = attribute_params(request)
    user_id, db = user_id_of(request), db_of(request)
    groups = None
    if shows_groups(attributes, excluded):
        row = await db.fetchrow(
            queries.SCIM_FIND_WITH_GROUPS, user_id, scim_url(request, "Groups/")
        )
        groups = None if row is None else row["groups"]
    else:
        row = await db.fetchrow(queries.SCIM_FIND, user_id)
    if row is None:
        raise ScimError(404, "No user has this id")
    user = to_scim(row, location_of(request, row["id"]), groups)
    return scim_response(selected(user, attributes, excluded), headers={"ETag": etag_of(row)})


def shows_groups(attributes: list[Steps], excluded: list[Steps]) -> bool:
    """Whether a read shows the user's groups, which it then reads."""
    if attributes:
        return any(name[0] == "groups" for name in attributes)
    return ("groups",) not in excluded


async def replace_user(request: Request) -> Response:
    body, raw = user_in(await body_of(request))
    skipped: list[str] = []
    response = await write(request, lambda current: state_of(body, raw, current, skipped))
    reported(skipped)
    return response


async def patch_user(request: Request) -> Response:
    body = message(await body_of(request), PATCH_OP, ("Operations",), strict=False)
    operations = body.get("Operations")
    if not isinstance(operations, list):
        raise ScimError(400, f"A PATCH is a {PATCH_OP} with a list of Operations", "invalidSyntax")
    if not 1 <= len(operations) <= MAX_OPERATIONS:
        raise ScimError(400, f"A PATCH has 1 to {MAX_OPERATIONS} Operations", "invalidValue")
    skipped: list[str] = []
    response = await write(request, lambda state: patched(state, operations, skipped))
    reported(skipped)
    return response


async def write(request: Request, change: Callable[[State], State]) -> Response:
    """The user read, changed by `change` and written back only if it is still at
    the version read: a change is never made to a version it was not computed
    from, nor If-Match checked against another. A write that finds the user
    changed meanwhile is made again with the user read and locked, in one
    transaction, as a concurrent write to the same user waits for the native
    PATCH's single UPDATE."""
    user_id, condition = user_id_of(request), condition_of(request)
    actor = actor_of(request.scope)
    # Read first without a transaction: two round trips, not four with BEGIN
    # and COMMIT, ~0.1 ms of a write's 1.7 ms in the database before its commit
    # is flushed (asyncpg, one user written 300 times a round).
    db = db_of(request)
    row = await db.fetchrow(queries.SCIM_FIND, user_id)
    if row is None:
        raise ScimError(404, "No user has this id")
    written = await written_back(db.fetchrow, user_id, row, condition, change, actor)
    if written is None:
        async with db.connection() as conn, conn.transaction():
            row = await conn.fetchrow(queries.SCIM_LOCK, user_id)
            written = await written_back(conn.fetchrow, user_id, row, condition, change, actor)
        assert written is not None  # the row stayed locked at the version read
    assert row is not None
    if written["version"] != row["version"]:
        metrics.USERS_UPDATED.inc()
    return user_response(request, written)


async def written_back(
    fetchrow: Callable[..., Awaitable[asyncpg.Record | None]],
    user_id: UUID,
    row: asyncpg.Record | None,
    condition: Condition,
    change: Callable[[State], State],
    actor: Actor,
) -> asyncpg.Record | None:
    """The user written back as `change` makes it from `row`, or None when it is no
    longer at the row's version."""
    if row is None:
        raise ScimError(404, "No user has this id")
    if condition is not None and (UUID(row["id"]), row["version"]) not in condition:
        raise ScimError(412, "The user has changed: If-Match does not name its version")
    state = checked(change(state_of_row(row)))
    try:
        return await fetchrow(
            queries.SCIM_REPLACE, user_id, *state.columns(), row["version"], *actor
        )
    except asyncpg.UniqueViolationError as exc:
        raise taken(exc) from None


async def delete_user(request: Request) -> Response:
    return await delete(request, UserKey(None, user_id_of(request)))


# PATCH (RFC 7644 §3.5.2): each operation applied in turn to the user as read.
# An operation on a path outside the published schema is skipped (its path
# added to `skipped`) and the others applied; a malformed path is a 400.
def patched(state: State, operations: list[Any], skipped: list[str] | None = None) -> State:
    skipped = [] if skipped is None else skipped
    # One copy of the attributes, changed by each operation in turn: a copy and a
    # State for each was a fifth of a PATCH's translation (cProfile).
    attributes = dict(state.attributes)
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
        if read_only(path, value):
            raise ScimError(
                400, "groups is read-only: change members through /Groups", "mutability"
            )
        changes = kept.Changes(skipped)
        if op == "remove":
            if path is None:
                raise ScimError(400, "remove needs a path", "noTarget")
            state = removed(state, kept.parse(path), changes)
        elif path is None:
            if not isinstance(value, dict):
                raise ScimError(400, f"{op} without a path takes an object", "invalidValue")
            for attribute, given in value.items():
                state = assigned(state, kept.parse(attribute), given, op, changes)
        else:
            state = assigned(state, kept.parse(path), value, op, changes)
        changes.apply(attributes)
    return state._replace(attributes=attributes)


def read_only(path: Any, value: Any) -> bool:
    """Whether an operation writes the user's groups, by its path or, without one,
    by a name of its value."""
    paths = [path] if isinstance(path, str) else list(value) if isinstance(value, dict) else []
    for text in paths:
        found = kept.parse(str(text))
        if found.schema == USER_SCHEMA and found.attribute == "groups":
            return True
    return False


def core_attribute(path: kept.Path) -> str | None:
    """The user's own column a path names, in lower case ("emails.value" and the
    like), or None for a path the table keeps or does not know. A value filter on
    emails that every user's one work email meets names it; another is noTarget."""
    attribute = path.attribute
    if path.schema != USER_SCHEMA or (attribute not in COLUMNS and attribute not in SHARED):
        return None
    if attribute == "name" and path.sub is not None:
        return None
    if attribute == "emails" and path.filter is not None:
        if kept.typed(path) in TYPES["emails"]:
            return None
        try:
            condition = filters.to_sql(f"emails[{path.filter}]").text
        except filters.InvalidFilter as exc:
            raise ScimError(400, f"path {path.text!r}: {exc}", "invalidPath") from None
        if condition != "true":
            raise ScimError(
                400, f"path {path.text!r} selects no email: the user has one work email", "noTarget"
            )
    elif path.filter is not None:
        raise ScimError(400, f"{path.text!r}: {attribute} takes no [filter]", "invalidPath")
    return attribute if path.sub is None else f"{attribute}.{path.sub}"


WORK_ENTRY = 'type eq "work"'


def text_value(path: str, value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # a multi-valued attribute given as one item
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if not isinstance(value, str):
        raise ScimError(400, f"{path} takes a string", "invalidValue")
    return value


def assigned(state: State, path: kept.Path, value: Any, op: str, changes: kept.Changes) -> State:
    attribute = core_attribute(path)
    if attribute is None:
        changes.assign(path, value, replace=op == "replace")
        return state
    text = path.text
    # The work email, never userName: Entra's mail and user principal name differ.
    if attribute == "emails":
        if path.filter is not None:  # emails[primary eq true]: the work entry
            changes.assign(path._replace(filter=WORK_ENTRY), value, op == "replace")
        else:
            changes.assign(path, as_work(text, value), op == "replace")
        return state
    if attribute == "emails.value":
        work = path._replace(filter=WORK_ENTRY, sub="value")
        changes.assign(work, text_value(text, value), replace=True)
        return state
    if attribute == "username":
        return state._replace(email=text_value(text, value))
    if attribute == "displayname":
        return state._replace(name=text_value(text, value))
    if attribute == "name":
        if not isinstance(value, dict):
            raise ScimError(400, "name takes an object", "invalidValue")
        changes.assign(path, value, replace=False)
        return state
    if attribute in ("emails.type", "emails.primary"):
        return state  # constants of the user's one email: accepted, and unchanged
    if attribute == "externalid":
        return state._replace(external_id=None if value is None else text_value(text, value))
    if attribute == "active":
        return state._replace(status="active" if truth(value) else "disabled")
    if attribute in ("id", "meta", "schemas") or attribute.startswith("meta."):
        raise ScimError(400, f"{text} is read-only", "mutability")
    changes.skip(text, value)  # userName.x and the like: not in the schema
    return state


def the_email(path: str, emails: list[Any], required: bool = True) -> Any:
    """The email of a list that is the user's: the primary one, else the work one, else
    one without a type. A home or other email alone is not: None, or noTarget when
    `required`."""
    items = [item for item in emails if isinstance(item, dict)]
    for chosen in (
        [item for item in items if item.get("primary") in (True, "true", "True")],
        [item for item in items if str(item.get("type", "")).lower() == "work"],
        [item for item in items if item.get("type") is None],
    ):
        if chosen:
            return chosen[0]
    if required:
        raise ScimError(400, f"{path}: no primary or work email to be the user's", "noTarget")
    return None


def truth(value: Any) -> bool:
    # Entra ID sends "True" and "False" as strings.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ScimError(400, "active takes true or false", "invalidValue")


def removed(state: State, path: kept.Path, changes: kept.Changes) -> State:
    attribute = core_attribute(path)
    if attribute is None:
        changes.remove(path)
        return state
    if attribute == "externalid":
        return state._replace(external_id=None)
    if attribute in ("displayname", "name"):
        if attribute == "name":
            changes.remove(path)  # givenName, familyName and the rest too
        return state._replace(name=state.email)  # a user always has a name: its email stands in
    if attribute in ("emails", "emails.value"):  # the work email is userName again
        whole = path.filter is None and path.sub is None
        changes.remove(path if whole else path._replace(filter=WORK_ENTRY, sub="value"))
        return state
    if attribute in ("username", "active", "id", "schemas") or attribute.startswith("meta"):
        raise ScimError(400, f"{path.text} is required and cannot be removed", "mutability")
    return state


# Lists and searches.
class Listing(NamedTuple):
    filter: str | None
    start_index: int
    per_page: int
    sort_by: str | None
    descending: bool
    attributes: list[Steps]
    excluded: list[Steps]


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


# An attribute of attributes= or excludedAttributes=, as the keys that lead to
# it in lower case: ("name", "formatted"), or (the extension's URN, "manager", "value").
Steps = tuple[str, ...]


def names(raw: object) -> list[Steps]:
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return [steps(kept.parse(str(item))) for item in items if str(item).strip()]


def steps(path: kept.Path) -> Steps:
    found = () if path.schema == USER_SCHEMA else (path.schema.lower(),)
    return found + tuple(part for part in (path.attribute, path.sub) if part is not None)


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


def attribute_params(request: Request) -> tuple[list[Steps], list[Steps]]:
    params = query_parameters(request, USER_PARAMETERS)
    return names(params.get("attributes")), names(params.get("excludedAttributes"))


def selected(
    user: dict[str, Any], attributes: list[Steps], excluded: list[Steps]
) -> dict[str, Any]:
    """The user with only `attributes` (and those always returned), or without `excluded`,
    sub-attributes and the extension's included; the own email's type and primary only
    when asked for; `schemas` naming the extension only when it is shown."""
    own = user["emails"][0]
    if ("emails", "type") in attributes:
        own["type"] = "work"
    if ("emails", "primary") in attributes:
        own["primary"] = True
    shown = user
    if attributes:
        shown = picked(user, [*attributes, *((name,) for name in ALWAYS_RETURNED)])
    if excluded:
        shown = dropped(shown, [name for name in excluded if name[0] not in ALWAYS_RETURNED])
    if ENTERPRISE_URN not in shown:
        shown["schemas"] = [USER_SCHEMA]
    return shown


def picked(value: Any, wanted: list[Steps]) -> Any:
    """Of `value`, what the steps lead to; an entry of a list keeps its value and type."""
    if any(not name for name in wanted):
        return value
    if isinstance(value, list):
        entries = [picked(entry, [*wanted, ("value",), ("type",)]) for entry in value]
        return [entry for entry in entries if entry]
    if not isinstance(value, dict):
        return None  # a sub-attribute of a simple value: none
    found = {}
    for key, item in value.items():
        inner = [name[1:] for name in wanted if name[0] == key.lower()]
        if inner:
            item = picked(item, inner)
            if item not in (None, {}, []):
                found[key] = item
    return found


def dropped(value: Any, unwanted: list[Steps]) -> Any:
    """`value` without what the steps lead to, and without what that leaves empty."""
    if isinstance(value, list):
        entries = [dropped(entry, unwanted) for entry in value]
        return [entry for entry in entries if entry != {}]
    if not isinstance(value, dict):
        return value
    found = {}
    for key, item in value.items():
        inner = [name[1:] for name in unwanted if name[0] == key.lower()]
        if any(not name for name in inner):
            continue
        if inner:
            item = dropped(item, inner)
            if item in ({}, []):
                continue
        found[key] = item
    return found


async def list_users(request: Request) -> Response:
    return await answer_list(request, listing(query_parameters(request, LIST_PARAMETERS)))


async def search_users(request: Request) -> Response:
    body = message(await body_of(request), SEARCH_REQUEST, LIST_PARAMETERS, strict=True)
    return await answer_list(request, listing(body))


async def answer_list(request: Request, given: Listing) -> Response:
    resources, total = await user_page(request, given, given.start_index - 1, given.per_page)
    return scim_response(
        ListResponse(
            schemas=[LIST_RESPONSE],
            totalResults=total,
            startIndex=given.start_index,
            itemsPerPage=len(resources),
            Resources=resources,
        )
    )


async def user_page(
    request: Request, given: Listing, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The users a listing asks for, `limit` of them after the first `offset`, as
    SCIM shows them, and how many match."""
    where, arguments = "true", list[object]()
    if given.filter is not None:
        try:
            where, arguments = filters.to_sql(given.filter)
        except filters.InvalidFilter as exc:
            raise ScimError(400, str(exc), "invalidFilter") from None
    order = "lower(email)"
    if given.sort_by is not None:
        found = SORTS.get(".".join(steps(kept.parse(given.sort_by))))
        if found is None:
            raise ScimError(400, f"sortBy takes one of {', '.join(SORTS)}", "invalidValue")
        order = found
    if given.descending:
        order = ", ".join(f"{part} DESC" for part in order.split(", "))
    number = len(arguments)
    groups = shows_groups(given.attributes, given.excluded)
    column = ""
    if groups:
        column = ", " + queries.SCIM_USER_GROUPS.format(base=number + 3) + " AS groups"
    query = queries.SCIM_PAGE.format(
        groups=column, where=where, order=order, offset=number + 1, limit=number + 2
    )
    async with queries.searching(db_of(request)) as conn:
        rows = []
        if limit:
            extra = [scim_url(request, "Groups/")] if groups else []
            rows = await conn.fetch(query, *arguments, offset, limit, *extra)
        total = await conn.fetchval(queries.SCIM_COUNT.format(where=where), *arguments)
    users = scim_url(request, "Users")  # made once for the page
    resources = [
        selected(
            to_scim(row, f"{users}/{row['id']}", row["groups"] if groups else None),
            given.attributes,
            given.excluded,
        )
        for row in rows
    ]
    return resources, int(total)
