"""The group endpoints: decode the request, run a query, encode the answer."""

from __future__ import annotations

from functools import partial
from uuid import UUID

import msgspec
from asyncpg.pool import PoolConnectionProxy
from starlette.requests import Request
from starlette.responses import Response

from service import group_queries, idempotency
from service.auth import actor_of
from service.bodies import decode, read_body, read_json
from service.conditions import group_etag, match_condition, none_match
from service.database import db_of
from service.group_queries import NamedUser, NoSuchGroup, NoSuchUser
from service.operations import (
    BODY_PROBLEMS,
    IDEMPOTENCY_KEY,
    IF_NONE_MATCH,
    IN_PROGRESS,
    KEY_PROBLEMS,
    REPLAYED,
    USER,
    Header,
    Operation,
    Parameter,
    Reply,
)
from service.problems import RETRY_AFTER_SECONDS, ProblemError, problem_response
from service.queries import Actor, Condition, StoredAnswer
from service.schemas import (
    ATTRIBUTE_BOUNDS,
    MAX_LOOKUP_BYTES,
    MAX_MEMBER_CHANGES,
    MAX_SEARCH_LENGTH,
    MIN_SEARCH_LENGTH,
    Email,
    Group,
    GroupChanges,
    GroupName,
    GroupPatch,
    MemberChanges,
    MembersChanged,
    NewGroup,
    SearchText,
    StoredGroup,
    User,
    email_key,
    is_email,
)
from service.users import (
    NO_USER,
    Limit,
    handle_key,
    json_response,
    path_user,
    query_int,
    query_params,
    query_string,
    reads_of,
    settings_of,
    user_url,
)

NO_GROUP = "No group has that id"
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000

_decode_new_group = msgspec.json.Decoder(NewGroup)
_decode_patch = msgspec.json.Decoder(GroupPatch)
_decode_member_changes = msgspec.json.Decoder(MemberChanges)


# How many keys the JSON of each body held, for bodies.decode to know that none repeats.
def new_group_keys(new: NewGroup) -> int:
    return 1 + (0 if new.attributes is msgspec.UNSET else 1 + len(new.attributes))


def patch_keys(patch: GroupChanges) -> int:
    keys = (patch.name is not msgspec.UNSET) + (patch.attributes is not msgspec.UNSET)
    return keys + (0 if patch.attributes is msgspec.UNSET else len(patch.attributes))


def member_change_keys(changes: MemberChanges) -> int:
    return (changes.add is not msgspec.UNSET) + (changes.remove is not msgspec.UNSET)


def path_group(request: Request) -> UUID:
    """The {group} of the path: its id (the route's pattern admits canonical UUIDs only)."""
    return UUID(request.path_params["group"])


def group_url(group: Group) -> str:
    return "/groups/" + group.id


def group_response(
    stored: StoredGroup, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """One group, with the ETag that names its version."""
    response = json_response(stored.group, status_code, headers)
    response.raw_headers.append((b"etag", group_etag(stored).encode()))
    return response


# What the endpoints of /groups share.
GROUP = Parameter(
    name="group",
    location="path",
    type=UUID,
    description="The group's id. One that is not a UUID names no group: 404.",
)
GROUP_LOCATION = Header(name="Location", type=str, description="The path of the new group.")
GROUP_ETAG = Header(
    name="ETag",
    type=str,
    description="The group's strong entity tag: it changes whenever its name or attributes "
    "do, and only then (not with its members).",
)
LINK = Header(
    name="Link",
    type=str,
    required=False,
    description='On a full page only: `<…?after=…&limit=N>; rel="next"`, the next page.',
)


CREATE_GROUP = Operation(
    operation_id="createGroup",
    tag="groups",
    summary="Create a group",
    description="Creates a group, without members, whose name no group has in any letter "
    "case (of ASCII letters). Also served at `/groups/`.",
    parameters=(IDEMPOTENCY_KEY,),
    body=NewGroup,
    replies={
        201: Reply(
            description="Created.", body=Group, headers=(GROUP_LOCATION, GROUP_ETAG, REPLAYED)
        )
    },
    problems={
        **BODY_PROBLEMS,
        **KEY_PROBLEMS,
        409: "A group has that name, in some letter case." + IN_PROGRESS,
        410: "The group that an earlier request with this Idempotency-Key created has "
        "since been deleted: its stored answer keeps nothing of the group.",
    },
    uses_database=True,
)


async def create_group(request: Request) -> Response:
    settings = settings_of(request)
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
    new = decode(_decode_new_group, new_group_keys, body)
    key = idempotency.key_of(request)
    work = partial(insert_group, new=new, actor=actor_of(request.scope))
    if key is not None:
        return await idempotency.answer_once(request, key, body, work)
    async with db_of(request).connection() as conn:
        return await work(conn)


async def insert_group(conn: PoolConnectionProxy, *, new: NewGroup, actor: Actor) -> Response:
    attributes = {} if new.attributes is msgspec.UNSET else new.attributes
    stored = await group_queries.insert_group(conn, new.name, attributes, actor)
    if stored is None:
        # The name is not repeated: a stored answer outlives the group that has it.
        raise ProblemError(409, "A group with that name already exists, in some letter case")
    return group_response(stored, 201, {"Location": group_url(stored.group)})


GET_GROUP = Operation(
    operation_id="getGroup",
    tag="groups",
    summary="Get a group",
    description="The group with an id.",
    parameters=(GROUP, IF_NONE_MATCH),
    replies={
        200: Reply(description="The group.", body=Group, headers=(GROUP_ETAG,)),
        304: Reply(description="If-None-Match names the group's ETag.", headers=(GROUP_ETAG,)),
    },
    problems={404: "No group has that id."},
    uses_database=True,
)


async def get_group(request: Request) -> Response:
    stored = await group_queries.find_group(db_of(request), path_group(request))
    if stored is None:
        raise ProblemError(404, NO_GROUP)
    current = group_etag(stored)
    lines = request.headers.getlist("if-none-match")
    if lines and none_match(", ".join(lines), current):
        return Response(status_code=304, headers={"ETag": current})
    return group_response(stored)


def query_after_name(params: dict[str, str]) -> str:
    raw = params.get("after")
    if raw is None:
        return ""
    try:
        name: str = msgspec.convert(raw, GroupName)
    except msgspec.ValidationError:
        raise ProblemError(422, "after must be a group's name", field="after") from None
    return name


def query_after_email(params: dict[str, str]) -> str:
    raw = params.get("after")
    if raw is None:
        return ""
    if not is_email(raw):
        raise ProblemError(422, "after must be an email address", field="after")
    return email_key(raw)


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


def next_link(path: str, spelt: dict[str, str], after: str, limit: int) -> str:
    link = query_string({**spelt, "after": after, "limit": str(limit)})
    return f'<{path}?{link}>; rel="next"'


LIMIT = Parameter(name="limit", location="query", type=Limit, description="Items per page.")
AFTER_NAME = Parameter(
    name="after",
    location="query",
    type=GroupName,
    description="Start after this name, in any letter case (keyset paging, as in `Link`).",
)
AFTER_EMAIL = Parameter(
    name="after",
    location="query",
    type=Email,
    description="Start after this email, in any letter case (keyset paging, as in `Link`).",
)

LIST_GROUPS = Operation(
    operation_id="listGroups",
    tag="groups",
    summary="List groups",
    description="A page of groups ordered by name regardless of letter case, optionally only "
    "those whose name contains `q`. A full page links the next one in `Link`. Also served "
    "at `/groups/`.",
    parameters=(
        LIMIT,
        AFTER_NAME,
        Parameter(
            name="q",
            location="query",
            type=SearchText,
            description="Only groups whose name contains this text, ASCII letters in any "
            "case; `%` and `_` are plain characters.",
        ),
    ),
    replies={200: Reply(description="The page.", body=list[Group], headers=(LINK,))},
    problems={
        422: "A parameter that is unknown, given twice or breaks its rule; `field` names it."
    },
    uses_database=True,
)


async def list_groups(request: Request) -> Response:
    params = query_params(request, ("limit", "after", "q"))
    limit = query_int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    q = query_search(params)
    groups = await group_queries.list_groups(
        db_of(request), after=query_after_name(params), limit=limit, q=q
    )
    headers = {}
    if len(groups) == limit:
        spelt = {"q": params["q"]} if q is not None else {}
        headers["Link"] = next_link("/groups", spelt, groups[-1].name, limit)
    return json_response(groups, headers=headers)


def write_condition(request: Request) -> Condition:
    """The If-Match of a PATCH or DELETE; 428 without one when REQUIRE_IF_MATCH is set."""
    lines = request.headers.getlist("if-match")
    if not lines:
        if settings_of(request).require_if_match:
            raise ProblemError(428, "This service requires If-Match with the group's ETag")
        return None
    return match_condition(", ".join(lines))


async def failed_write(request: Request, id: UUID) -> ProblemError:
    """Why a conditional write found no row: no such group (404), or another version (412)."""
    if await group_queries.find_group(db_of(request), id) is None:
        return ProblemError(404, NO_GROUP)
    return ProblemError(412, "The group has changed: If-Match does not name its current ETag")


UPDATE_GROUP = Operation(
    operation_id="updateGroup",
    tag="groups",
    summary="Change a group",
    description="Changes the name, the attributes or both of the group with an id, in one "
    "write. `attributes` is a JSON Merge Patch (RFC 7396) of them: a name given a string is "
    "set, a name given null is removed, and the others are kept. The id, `created_at` and "
    "the members stay.",
    parameters=(GROUP,),
    body=GroupPatch,
    replies={
        200: Reply(
            description="The changed group; the group as it is, unchanged and with the "
            "same ETag, when the patch changes nothing.",
            body=Group,
            headers=(GROUP_ETAG,),
        )
    },
    problems={
        **BODY_PROBLEMS,
        404: "No group has that id.",
        409: "Another group has the new name, in some letter case. Nothing changed.",
        422: "The body breaks a rule, or has no field; `field` is the JSON path of where "
        "(`$.name`, `$.attributes.tenant`, `$`). Or the attributes, merged, would hold "
        "more than 50 names or 8,192 bytes (`$.attributes`); nothing changed.",
        503: "The database is down or too slow, or other writes to the group kept coming "
        "between this one's read and its change; retry after Retry-After seconds.",
    },
    uses_database=True,
    conditional=True,
)


async def update_group(request: Request) -> Response:
    id = path_group(request)
    condition = write_condition(request)
    settings = settings_of(request)
    patch = await read_json(
        request, _decode_patch, patch_keys, settings.max_body_bytes, settings.body_timeout
    )
    try:
        updated = await group_queries.update_group(
            db_of(request),
            id,
            condition,
            name=None if patch.name is msgspec.UNSET else patch.name,
            attributes=None if patch.attributes is msgspec.UNSET else patch.attributes,
            actor=actor_of(request.scope),
        )
    except group_queries.NameTaken:
        raise ProblemError(
            409, "Another group has that name, in some letter case; nothing changed"
        ) from None
    except group_queries.AttributesOverflow:
        message = f"The attributes, merged, would break their bounds: {ATTRIBUTE_BOUNDS}"
        raise ProblemError(422, message, field="$.attributes") from None
    except group_queries.Contended:
        raise ProblemError(
            503,
            "Other requests keep changing this group; retry shortly",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None
    if updated is None:
        raise await failed_write(request, id)
    stored, _ = updated
    return group_response(stored)


# What a stored answer becomes when the group it showed is deleted: a retry
# of its key learns what happened, and nothing of the group is kept.
FORGOTTEN = StoredAnswer(
    route="",
    fingerprint=b"",
    status=410,
    headers=idempotency.FORGOTTEN.headers,
    body=bytes(
        problem_response(
            ProblemError(410, "The group this request created has since been deleted")
        ).body
    ),
)

DELETE_GROUP = Operation(
    operation_id="deleteGroup",
    tag="groups",
    summary="Delete a group",
    description="Deletes the group with an id, and its memberships; its members stay. "
    "Nothing of its name or attributes is kept, an answer stored for its create included.",
    parameters=(GROUP,),
    replies={204: Reply(description="Deleted.")},
    problems={404: "No group has that id."},
    uses_database=True,
    conditional=True,
)


async def delete_group(request: Request) -> Response:
    id = path_group(request)
    condition = write_condition(request)
    deleted = await group_queries.delete_group(
        db_of(request), id, condition, forgotten=FORGOTTEN, actor=actor_of(request.scope)
    )
    if not deleted:
        raise await failed_write(request, id)
    return Response(status_code=204)


CHANGE_MEMBERS = Operation(
    operation_id="changeMembers",
    tag="groups",
    summary="Add and remove members",
    description=f"Adds the users `add` names to the group and removes those `remove` names, "
    f"up to {MAX_MEMBER_CHANGES:,} handles in all, each an email in any letter case or an "
    "id; either list may be left out. One transaction: the removes come after the adds. "
    "Idempotent: adding a member or removing a user who is not one changes nothing, and the "
    "call is safe to retry (it needs no Idempotency-Key, and one sent is ignored). Its cost "
    "depends on the handles, not on the group's size. Changes to one group's members take "
    "turns; the group itself (its ETag) does not change.",
    parameters=(GROUP,),
    body=MemberChanges,
    replies={200: Reply(description="What changed, and the handles missing.", body=MembersChanged)},
    problems={
        **BODY_PROBLEMS,
        404: "No group has that id.",
        413: f"The body is larger than {MAX_LOOKUP_BYTES // 1024 // 1024} MiB.",
        422: f"The body breaks a rule (`field` is the JSON path of where), holds more than "
        f"{MAX_MEMBER_CHANGES:,} handles in all, or one handle in both lists (`field` is `$`).",
    },
    uses_database=True,
)


async def change_members(request: Request) -> Response:
    # Idempotent by itself: an Idempotency-Key changes nothing, so one sent is
    # ignored, and no answer naming users is stored.
    id = path_group(request)
    settings = settings_of(request)
    changes = await read_json(
        request, _decode_member_changes, member_change_keys, MAX_LOOKUP_BYTES,
        settings.body_timeout,
    )  # fmt: skip
    add = [] if changes.add is msgspec.UNSET else changes.add
    remove = [] if changes.remove is msgspec.UNSET else changes.remove
    add_keys = {handle: handle_key(handle) for handle in add}
    remove_keys = {handle: handle_key(handle) for handle in remove}
    try:
        added, removed = await group_queries.change_members(
            db_of(request),
            id,
            sorted({key for key in add_keys.values() if key is not None}),
            sorted({key for key in remove_keys.values() if key is not None}),
            actor_of(request.scope),
        )
    except NoSuchGroup:
        raise ProblemError(404, NO_GROUP) from None
    missing: list[str] = []
    answer = MembersChanged(
        added=changed_handles(add_keys, added, missing),
        removed=changed_handles(remove_keys, removed, missing),
        missing=list(dict.fromkeys(missing)),
    )
    return json_response(answer)


def changed_handles(
    keys: dict[str, str | None], named: list[NamedUser], missing: list[str]
) -> list[str]:
    """The handles, in request order, of the users changed (each user once); the handles
    that named no user are appended to `missing`."""
    by_key: dict[str | None, NamedUser] = {}
    for one in named:
        by_key[one.id] = by_key[one.email_key] = one
    changed: list[str] = []
    seen: set[str] = set()
    for handle, key in keys.items():
        user = by_key.get(key)
        if user is None:
            missing.append(handle)
        elif user.changed and user.id not in seen:
            seen.add(user.id)
            changed.append(handle)
    return changed


LIST_MEMBERS = Operation(
    operation_id="listMembers",
    tag="groups",
    summary="List a group's members",
    description="A page of the group's members, as users, ordered by email regardless of "
    "letter case. A full page links the next one in `Link`.",
    parameters=(GROUP, LIMIT, AFTER_EMAIL),
    replies={200: Reply(description="The page.", body=list[User], headers=(LINK,))},
    problems={
        404: "No group has that id.",
        422: "A parameter that is unknown, given twice or breaks its rule; `field` names it.",
    },
    uses_database=True,
)


async def list_members(request: Request) -> Response:
    id = path_group(request)
    params = query_params(request, ("limit", "after"))
    limit = query_int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    try:
        users = await group_queries.list_members(
            db_of(request), id, after=query_after_email(params), limit=limit
        )
    except NoSuchGroup:
        raise ProblemError(404, NO_GROUP) from None
    headers = {}
    if len(users) == limit:
        headers["Link"] = next_link(f"/groups/{id}/members", {}, users[-1].email, limit)
    return json_response(users, headers=headers)


CHECK_MEMBER = Operation(
    operation_id="checkMember",
    tag="groups",
    summary="Is this user in this group?",
    description="204 when the user, by email in any letter case or by id, is a member of "
    "the group; 404 when not, or when either does not exist (the problem says which). One "
    "indexed query, whatever the group's size.",
    parameters=(GROUP, USER),
    replies={204: Reply(description="The user is a member.")},
    problems={
        404: "The user is not a member, or no group has that id, or no user that email or id."
    },
    uses_database=True,
)


async def check_member(request: Request) -> Response:
    found = await reads_of(request).membership.get((path_group(request), path_user(request)))
    if found.member:
        return Response(status_code=204)
    if not found.group_found:
        raise ProblemError(404, NO_GROUP)
    if not found.user_found:
        raise ProblemError(404, NO_USER)
    raise ProblemError(404, "The user is not a member of the group")


LIST_USER_GROUPS = Operation(
    operation_id="listUserGroups",
    tag="groups",
    summary="List a user's groups",
    description="A page of the groups the user, by email in any letter case or by id, is a "
    "member of, ordered by name regardless of letter case. A full page links the next one "
    "in `Link`.",
    parameters=(USER, LIMIT, AFTER_NAME),
    replies={200: Reply(description="The page.", body=list[Group], headers=(LINK,))},
    problems={
        404: "No user has that email or id.",
        422: "A parameter that is unknown, given twice or breaks its rule; `field` names it.",
    },
    uses_database=True,
)


async def list_user_groups(request: Request) -> Response:
    user = path_user(request)
    params = query_params(request, ("limit", "after"))
    limit = query_int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    try:
        groups = await group_queries.list_user_groups(
            db_of(request), user, after=query_after_name(params), limit=limit
        )
    except NoSuchUser:
        raise ProblemError(404, NO_USER) from None
    headers = {}
    if len(groups) == limit:
        path = user_url(request.path_params["user"]) + "/groups"
        headers["Link"] = next_link(path, {}, groups[-1].name, limit)
    return json_response(groups, headers=headers)
