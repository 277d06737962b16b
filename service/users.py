"""The /users endpoints: decode the request, run a query, encode the answer."""

from __future__ import annotations

import re
from datetime import datetime
from functools import partial
from typing import Annotated, Any, NamedTuple
from urllib.parse import quote, quote_plus
from uuid import UUID

import msgspec
from asyncpg.pool import PoolConnectionProxy
from starlette.requests import Request
from starlette.responses import Response

from service import idempotency, metrics, queries
from service.auth import actor_of
from service.bodies import decode, read_body, read_json
from service.conditions import etag, match_condition, none_match
from service.database import db_of
from service.lookups import Creates, Reads
from service.operations import (
    BODY_PROBLEMS,
    CONTENT_LOCATION,
    ETAG,
    IDEMPOTENCY_KEY,
    IF_NONE_MATCH,
    IN_PROGRESS,
    KEY_PROBLEMS,
    LOCATION,
    REPLAYED,
    USER,
    Header,
    Operation,
    Parameter,
    Reply,
)
from service.preferences import preferences
from service.problems import ProblemError
from service.queries import ESTIMATE_EXACT_BELOW, Actor, Condition, Filters, UserKey
from service.schemas import (
    ATTRIBUTE_BOUNDS,
    ATTRIBUTE_NAME_RULE,
    ATTRIBUTE_VALUE_RULE,
    MAX_ATTRIBUTE_NAME_LENGTH,
    MAX_ATTRIBUTES,
    MAX_BULK_USERS,
    MAX_LOOKUP_BYTES,
    MAX_LOOKUP_HANDLES,
    MAX_SEARCH_LENGTH,
    MIN_SEARCH_LENGTH,
    TIMESTAMP_RANGE,
    UUID_PATTERN,
    AttributeValue,
    Email,
    Handles,
    Inserted,
    Lookup,
    NewUser,
    NewUsers,
    Patch,
    SearchText,
    Status,
    Stored,
    Timestamp,
    User,
    UserPatch,
    email_key,
    in_utc,
    is_attribute_name,
    is_attribute_value,
    is_email,
    is_handle,
)
from service.settings import Settings

LIST_PARAMETERS = (
    "limit", "offset", "after", "q", "created_after", "created_before", "status", "group"
)  # fmt: skip
FILTER_PARAMETERS = ("q", "created_after", "created_before", "status", "group")
# attribute.<name>=<value>: only users whose attribute <name> has that value.
ATTRIBUTE_PREFIX = "attribute."
NO_FILTERS = Filters(q=None, created_after=None, created_before=None)
# What Prefer: count= may ask for, and how each is made.
COUNTS = {"exact": queries.count_users, "estimated": queries.estimate_users}
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
MAX_OFFSET = 2**63 - 1  # PostgreSQL's bigint
# What quote_plus leaves as it is, and "@", which it writes as %40.
_plain = re.compile(r"[A-Za-z0-9_.~@-]*")

_decode_new_user = msgspec.json.Decoder(NewUser)
_decode_new_users = msgspec.json.Decoder(NewUsers)
_decode_patch = msgspec.json.Decoder(Patch)
_decode_handles = msgspec.json.Decoder(Handles)


# How many keys the JSON of each body held, for bodies.decode to know that none repeats.
def new_user_keys(new: NewUser) -> int:
    keys = 2  # name and email, required
    if new.status is not msgspec.UNSET:
        keys += 1
    if new.attributes is not msgspec.UNSET:
        keys += 1 + len(new.attributes)
    return keys


def new_users_keys(new_users: list[NewUser]) -> int:
    return sum(map(new_user_keys, new_users))


def handle_keys(handles: list[str]) -> int:
    return 0  # an array of strings holds no object


def patch_keys(patch: UserPatch) -> int:
    keys = sum(getattr(patch, field) is not msgspec.UNSET for field in UserPatch.__struct_fields__)
    return keys + (0 if patch.attributes is msgspec.UNSET else len(patch.attributes))


_encoder = msgspec.json.Encoder()


def json_response(
    content: object, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encoder.encode(content), status_code, headers, media_type="application/json")


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def reads_of(request: Request) -> Reads:
    reads: Reads = request.app.state.reads
    return reads


def creates_of(request: Request) -> Creates:
    creates: Creates = request.app.state.creates
    return creates


NO_USER = "No user has that email or id"


def path_user(request: Request) -> UserKey:
    """The {user} of the path, an email or an id."""
    user: str = request.path_params["user"]
    if "@" not in user:
        return UserKey(None, UUID(user))  # the route's pattern admits canonical UUIDs only
    return UserKey(path_email_key(user), None)


def path_email_key(email: str) -> str:
    """The email_key of a path's email; one that cannot be valid names no user: 404."""
    if not is_email(email):
        raise ProblemError(404, NO_USER)
    return email_key(email)


def query_string(params: dict[str, str]) -> str:
    """urlencode's query string, made without quote_plus for plain values such as
    most emails: the Link of a page took 6% of a first page's profile, mostly there."""
    return "&".join(f"{query_value(name)}={query_value(value)}" for name, value in params.items())


def query_value(text: str) -> str:
    """`text` as urlencode writes it."""
    if _plain.fullmatch(text):
        return text.replace("@", "%40")
    return quote_plus(text)


def user_url(email: str) -> str:
    return "/users/" + quote(email, safe="@+")


def user_response(
    stored: Stored, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """One user, with the ETag that names its version."""
    response = json_response(stored.user, status_code, headers)
    # Appended as bytes rather than through Response's headers: ~1 µs a lookup.
    response.raw_headers.append((b"etag", etag(stored).encode()))
    return response


CREATE_USER = Operation(
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
        409: "The email exists in some letter case; `conflicts` holds it as sent." + IN_PROGRESS,
        410: "The user that an earlier request with this Idempotency-Key created has "
        "since been deleted: its stored answer keeps nothing of the user.",
    },
    uses_database=True,
)


async def create_user(request: Request) -> Response:
    settings = settings_of(request)
    key = idempotency.key_of(request)
    if key is not None:
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
        new = decode(_decode_new_user, new_user_keys, body)
        work = partial(create_one, new=new, actor=actor_of(request.scope))
        return await idempotency.answer_once(request, key, body, work)
    new = await read_json(
        request, _decode_new_user, new_user_keys, settings.max_body_bytes, settings.body_timeout
    )
    return created(await creates_of(request).create(new, actor_of(request.scope)), new)


async def create_one(conn: PoolConnectionProxy, *, new: NewUser, actor: Actor) -> Response:
    """A create in a transaction of its own, with its Idempotency-Key: not coalesced."""
    [stored] = await queries.insert_each(conn, [queries.new_row(new, actor)])
    return created(stored, new)


def created(stored: Stored | None, new: NewUser) -> Response:
    if stored is None:
        raise ProblemError(409, "A user with that email already exists", conflicts=[new.email])
    metrics.USERS_CREATED.inc()
    return user_response(stored, 201, {"Location": user_url(stored.user.email)})


GET_USER = Operation(
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
)


async def get_user(request: Request) -> Response:
    user: str = request.path_params["user"]
    if "@" in user:  # by email, the hot path: without a UserKey, ~0.3 µs
        stored = await reads_of(request).user.get(path_email_key(user))
    else:
        stored = await reads_of(request).find_user(path_user(request))
    if stored is None:
        raise ProblemError(404, NO_USER)
    # The raw headers, not request.headers: ~1 µs a lookup on the hot path.
    for name, value in request.scope["headers"]:
        if name == b"if-none-match" and none_match(value.decode("latin-1"), etag(stored)):
            return Response(status_code=304, headers={"ETag": etag(stored)})
    return user_response(stored)


def handle_key(handle: str) -> str | None:
    """What a lookup's handle names: an email_key or a lower-case id; None for neither."""
    # email_key folds an id's hex digits as it folds an email's letters.
    return email_key(handle) if is_handle(handle) else None


LOOKUP_USERS = Operation(
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
)


async def lookup_users(request: Request) -> Response:
    """Each user the handles name, once, in order of first mention; and the handles naming none."""
    # A read: an Idempotency-Key changes nothing, so one sent is ignored.
    settings = settings_of(request)
    handles = await read_json(
        request, _decode_handles, handle_keys, MAX_LOOKUP_BYTES, settings.body_timeout
    )
    return json_response(await look_up(reads_of(request), handles))


async def look_up(reads: Reads, handles: list[str]) -> Lookup:
    """The answer of a lookup of these handles, read through `reads`."""
    # By handle as given: a handle repeated verbatim is looked at once.
    keys = {handle: handle_key(handle) for handle in handles}
    wanted = tuple(dict.fromkeys(key for key in keys.values() if key is not None))
    named = await reads.handles.get(wanted) if wanted else {}
    found: dict[str, User] = {}  # by id: a user named twice appears once
    missing: list[str] = []
    for handle, key in keys.items():
        user = None if key is None else named.get(key)
        if user is None:
            missing.append(handle)
        elif user.id not in found:
            found[user.id] = user
    return Lookup(found=list(found.values()), missing=missing)


class ListQuery(NamedTuple):
    """The query parameters of GET /users, checked."""

    limit: int
    offset: int
    after: str | None  # an email_key
    filters: Filters | None  # None when none is given
    # The filters as the request spelt them, for the next page's link.
    spelt: dict[str, str]


def query_int(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    # isdigit alone admits other scripts' digits; the length check keeps int() cheap.
    if raw.isascii() and raw.isdigit() and len(raw) <= 19 and low <= int(raw) <= high:
        return int(raw)
    raise ProblemError(422, f"{name} must be a whole number from {low} to {high}", field=name)


def query_timestamp(params: dict[str, str], name: str) -> datetime | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        instant = msgspec.convert(raw, Timestamp)
    except msgspec.ValidationError:
        raise ProblemError(
            422,
            f"{name} must be an RFC 3339 timestamp with an offset, like 2026-11-01T00:00:00Z "
            "(a + in the offset is sent as %2B)",
            field=name,
        ) from None
    found = in_utc(instant)
    if found is None:
        raise ProblemError(422, f"{name} must be an instant {TIMESTAMP_RANGE}", field=name)
    return found


def query_search(params: dict[str, str]) -> str | None:
    raw = params.get("q")
    if raw is None:
        return None
    try:
        return email_key(msgspec.convert(raw, SearchText))
    except msgspec.ValidationError:
        raise ProblemError(
            422,
            f"q must be {MIN_SEARCH_LENGTH} to {MAX_SEARCH_LENGTH} characters, "
            "without control characters",
            field="q",
        ) from None


def query_status(params: dict[str, str]) -> str | None:
    raw = params.get("status")
    if raw is None:
        return None
    try:
        status: str = msgspec.convert(raw, Status)
    except msgspec.ValidationError:
        raise ProblemError(422, "status must be active or disabled", field="status") from None
    return status


def query_group(params: dict[str, str]) -> UUID | None:
    raw = params.get("group")
    if raw is None:
        return None
    if not re.fullmatch(UUID_PATTERN, raw):
        raise ProblemError(422, "group must be a group's id, a UUID", field="group")
    return UUID(raw)


def query_attributes(params: dict[str, str]) -> dict[str, str] | None:
    """The attribute.<name> filters, by name; None when none is given."""
    attributes: dict[str, str] = {}
    for parameter, value in params.items():
        if not parameter.startswith(ATTRIBUTE_PREFIX):
            continue
        name = parameter.removeprefix(ATTRIBUTE_PREFIX)
        if not is_attribute_name(name):
            detail = f"{parameter}: an attribute's name is {ATTRIBUTE_NAME_RULE}"
            raise ProblemError(422, detail, field=parameter)
        if not is_attribute_value(value):
            detail = f"{parameter}: an attribute's value is {ATTRIBUTE_VALUE_RULE}"
            raise ProblemError(422, detail, field=parameter)
        if len(attributes) == MAX_ATTRIBUTES:
            # More could match no user, who holds at most as many.
            detail = f"At most {MAX_ATTRIBUTES} {ATTRIBUTE_PREFIX}<name> filters, as a user has"
            raise ProblemError(422, detail, field=parameter)
        attributes[name] = value
    return attributes or None


def query_params(
    request: Request, known: tuple[str, ...], prefix: str | None = None
) -> dict[str, str]:
    """The query's parameters, each known (or named with `prefix`) and given at most once."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in known and not (prefix and name.startswith(prefix)):
            takes = (*known, f"{prefix}<name>") if prefix else known
            raise ProblemError(
                422,
                f"Unknown query parameter {name!r}; {request.method} {request.url.path} takes "
                + ", ".join(takes),
                field=name,
            )
        if name in params:
            raise ProblemError(422, f"{name} may be given once", field=name)
        params[name] = value
    return params


def list_query(request: Request) -> ListQuery:
    """The parameters of GET /users: each known, given at most once, and valid."""
    params = query_params(request, LIST_PARAMETERS, ATTRIBUTE_PREFIX)
    after = params.get("after")
    if after is not None:
        if not is_email(after):
            raise ProblemError(422, "after must be an email address", field="after")
        after = email_key(after)
    filters = Filters(
        q=query_search(params),
        created_after=query_timestamp(params, "created_after"),
        created_before=query_timestamp(params, "created_before"),
        status=query_status(params),
        attributes=query_attributes(params),
        group=query_group(params),
    )
    return ListQuery(
        limit=query_int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=query_int(params, "offset", 0, 0, MAX_OFFSET),
        after=after,
        filters=None if filters == NO_FILTERS else filters,
        spelt={
            name: value
            for name, value in params.items()
            if name in FILTER_PARAMETERS or name.startswith(ATTRIBUTE_PREFIX)
        },
    )


def count_preference(request: Request) -> str | None:
    """The count the request prefers (Prefer: count=exact or count=estimated), else None."""
    # The raw headers, not request.headers, which a list without Prefer never
    # needs otherwise: ~1 µs a page.
    prefer = [
        value.decode("latin-1") for name, value in request.scope["headers"] if name == b"prefer"
    ]
    if not prefer:
        return None
    count = preferences(prefer).get("count", "").lower()
    return count if count in COUNTS else None


# Rules list_users checks by hand, named so that msgspec writes their
# schemas in the document as it writes those of the Structs.
Limit = Annotated[
    int,
    msgspec.Meta(ge=1, le=MAX_LIMIT, extra_json_schema={"default": DEFAULT_LIMIT}),
]
# No declared default: a generated client would then always send offset=0.
Offset = Annotated[int, msgspec.Meta(ge=0, le=MAX_OFFSET)]
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
        Parameter(
            name="group",
            location="query",
            type=UUID,
            description="Only the members of the group with this id; none when no group has it.",
        ),
    )
}
# ATTRIBUTE_PREFIX's parameters, as one object spread over the query.
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
                "pattern": rf"^{re.escape(ATTRIBUTE_PREFIX)}[a-z][a-z0-9_.-]"
                f"{{0,{MAX_ATTRIBUTE_NAME_LENGTH - 1}}}$",
            },
            "additionalProperties": msgspec.json.schema(AttributeValue),
        },
    ),
]
LINK = Header(
    name="Link",
    type=str,
    required=False,
    description='On a full page only: `</users?after=…&limit=N>; rel="next"`, the next page.',
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


LIST_USERS = Operation(
    operation_id="listUsers",
    tag="users",
    summary="List users",
    description="A page of users ordered by email regardless of letter case, optionally "
    "only those that match `q`, `created_after`, `created_before`, `status`, `group` and "
    "`attribute.<name>` filters, all of them at once. A full page links "
    "the next one in `Link`, with the same filters; following it stays fast at any depth. "
    "Also served at `/users/`.",
    # LIST_PARAMETERS names those list_users takes, each with its entry above.
    parameters=(
        *(QUERY_PARAMETERS[name] for name in LIST_PARAMETERS),
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
    ),
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
)


async def list_users(request: Request) -> Response:
    query = list_query(request)
    count = count_preference(request)
    total = None
    reads = reads_of(request)
    filters = query.filters
    if count == "estimated" and filters is not None and filters.attributes:
        # PostgreSQL keeps no statistics of attribute values: its estimate of
        # a containment is a constant guess, so these are counted, through
        # the index, and Preference-Applied says so.
        count = "exact"
    if filters is None:
        if query.after is None:
            users = await reads.page_at.get((query.limit, query.offset))
        else:
            users = await reads.page_after.get((query.after, query.limit, query.offset))
        if count is not None:
            total = await reads.in_snapshot(partial(COUNTS[count], filters=NO_FILTERS))
    else:

        async def search(conn: PoolConnectionProxy) -> tuple[list[User], int | None]:
            # One snapshot: the page and its count see the same users.
            resolved = await queries.resolve_group(conn, filters)
            page = await queries.search_users(
                conn, resolved, after=query.after, limit=query.limit, offset=query.offset
            )
            return page, None if count is None else await COUNTS[count](conn, resolved)

        users, total = await reads.in_snapshot(search)
    headers = {"Vary": "Prefer"}
    if total is not None:
        headers["X-Total-Count"] = str(total)
        headers["Preference-Applied"] = f"count={count}"
    if len(users) == query.limit:
        # Keyset paging: the next page starts after the last email of this one.
        link = query_string({**query.spelt, "after": users[-1].email, "limit": str(query.limit)})
        headers["Link"] = f'</users?{link}>; rel="next"'
    return json_response(users, headers=headers)


CREATE_USERS = Operation(
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
)


async def create_users(request: Request) -> Response:
    settings = settings_of(request)
    key = idempotency.key_of(request)
    body = await read_body(request, settings.max_bulk_bytes, settings.body_timeout)
    new_users = decode(_decode_new_users, new_users_keys, body)
    work = partial(insert_all, new_users, actor_of(request.scope))
    if key is not None:
        return await idempotency.answer_once(request, key, body, work)
    async with db_of(request).connection() as conn:
        return await work(conn)


async def insert_all(new_users: list[NewUser], actor: Actor, conn: PoolConnectionProxy) -> Response:
    if not new_users:
        return json_response(Inserted(inserted=0), 201)
    # The unique index refuses emails that exist or repeat in the payload, so
    # the repeats are looked for only when it did (1.6 ms of a 10,000-user load).
    taken = await queries.copy_users(conn, new_users, actor)
    if taken is None:
        metrics.USERS_CREATED.inc(len(new_users))
        return json_response(Inserted(inserted=len(new_users)), 201)
    spelt: dict[str, str] = {}  # email_key -> the email as the request first spelt it
    repeated: set[str] = set()
    for new in new_users:
        key = email_key(new.email)
        if key in spelt:
            repeated.add(key)
        else:
            spelt[key] = new.email
    raise conflict(spelt, repeated | {email_key(email) for email in taken})


def conflict(spelt: dict[str, str], keys: set[str]) -> ProblemError:
    """A 409 listing emails as the request spelt them, so a caller finds each in its payload."""
    return ProblemError(
        409,
        "Emails repeat or already exist; nothing was inserted",
        conflicts=[spelt[key] for key in sorted(keys)],
    )


def write_condition(request: Request) -> Condition:
    """The If-Match of a PATCH or DELETE; 428 without one when REQUIRE_IF_MATCH is set."""
    # Field lines sent more than once are one comma-separated list (RFC 9110 §5.3).
    lines = request.headers.getlist("if-match")
    if not lines:
        if settings_of(request).require_if_match:
            raise ProblemError(428, "This service requires If-Match with the user's ETag")
        return None
    return match_condition(", ".join(lines))


async def failed_write(request: Request, key: UserKey) -> ProblemError:
    """Why a conditional write found no row: no such user (404), or another version (412)."""
    if await queries.find_user(db_of(request), key) is None:
        return ProblemError(404, NO_USER)
    return ProblemError(412, "The user has changed: If-Match does not name its current ETag")


UPDATE_USER = Operation(
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
)


async def update_user(request: Request) -> Response:
    key = path_user(request)
    condition = write_condition(request)
    settings = settings_of(request)
    patch = await read_json(
        request, _decode_patch, patch_keys, settings.max_body_bytes, settings.body_timeout
    )
    email = None if patch.email is msgspec.UNSET else patch.email
    try:
        updated = await queries.update_user(
            db_of(request),
            key,
            condition,
            name=None if patch.name is msgspec.UNSET else patch.name,
            email=email,
            status=None if patch.status is msgspec.UNSET else patch.status,
            attributes=None if patch.attributes is msgspec.UNSET else patch.attributes,
            actor=actor_of(request.scope),
        )
    except queries.EmailTaken:
        message = "Another user has that email, in some letter case; nothing changed"
        raise ProblemError(409, message, conflicts=[email] if email else None) from None
    except queries.AttributesOverflow:
        message = f"The attributes, merged, would break their bounds: {ATTRIBUTE_BOUNDS}"
        raise ProblemError(422, message, field="$.attributes") from None
    if updated is None:
        raise await failed_write(request, key)
    stored, changed = updated
    if changed:
        metrics.USERS_UPDATED.inc()
    # The user's address, which an email change has just moved.
    return user_response(stored, headers={"Content-Location": user_url(stored.user.email)})


DELETE_USER = Operation(
    operation_id="deleteUser",
    tag="users",
    summary="Delete a user",
    description="Deletes the user with an email, in any letter case, or with an id.",
    parameters=(USER,),
    replies={204: Reply(description="Deleted.")},
    problems={404: "No user has that email or id."},
    uses_database=True,
    conditional=True,
)


async def delete_user(request: Request) -> Response:
    return await delete(request, path_user(request))


async def delete(request: Request, key: UserKey) -> Response:
    """Delete the user `key` names, under the request's If-Match: a 204, else 404 or 412.
    Also SCIM's DELETE (service/scim)."""
    condition = write_condition(request)
    forgotten, unnamed = idempotency.FORGOTTEN, idempotency.UNNAMED
    deleted = await queries.delete_user(
        db_of(request), key, condition, forgotten=forgotten, unnamed=unnamed,
        actor=actor_of(request.scope),
    )  # fmt: skip
    if not deleted:
        raise await failed_write(request, key)
    metrics.USERS_DELETED.inc()
    return Response(status_code=204)
