"""/scim/v2/Groups: the groups as SCIM resources, read and written through the group queries."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service import group_queries
from service.auth import actor_of
from service.bodies import read_body
from service.database import db_of
from service.group_queries import ScimGroupWrite
from service.groups import FORGOTTEN
from service.groups import write_condition as condition_of
from service.schemas import MAX_LOOKUP_BYTES, GroupName
from service.scim import filters
from service.scim.errors import ScimError
from service.scim.resources import (
    ENTRA_GROUP_SCHEMA,
    GROUP_SCHEMA,
    LIST_RESPONSE,
    PATCH_OP,
    SEARCH_REQUEST,
    ExternalId,
    ListResponse,
)
from service.scim.users import (
    LIST_PARAMETERS,
    MAX_OPERATIONS,
    Listing,
    Steps,
    attribute_params,
    body_of,
    decoded,
    listing,
    message,
    parameters,
    query_parameters,
    scim_response,
    scim_url,
)
from service.users import settings_of

# A write names at most this many members (a PUT's or POST's members, a
# PATCH's in all its operations): larger groups are filled by PATCHes, as
# Okta and Entra fill them, in batches far smaller. Bodies are read up to the
# member changes' limit of the native API, which such a write fits.
MAX_MEMBERS = 10_000
MAX_BODY_BYTES = MAX_LOOKUP_BYTES
ALWAYS_RETURNED = frozenset({"schemas", "id"})
# The top-level attributes of a group, by lower-case name, as answers spell them.
ATTRIBUTES = {
    name.lower(): name for name in ("schemas", "id", "externalId", "displayName", "members", "meta")
}
SCHEMAS = frozenset({GROUP_SCHEMA.lower(), ENTRA_GROUP_SCHEMA.lower()})
# members[value eq "<id>"], as Okta and Entra write a remove of one member.
_member_path = re.compile(r'members\[\s*value\s+eq\s+"([^"]*)"\s*\]', re.IGNORECASE)
_decode_any = msgspec.json.Decoder(dict[str, Any])
NO_GROUP = "No group has this id"


def group_id_of(request: Request) -> UUID:
    try:
        return UUID(request.path_params["id"])
    except ValueError:
        raise ScimError(404, NO_GROUP) from None


def etag_of(row: asyncpg.Record) -> str:
    """The group's ETag, as the native API makes it: members do not change it."""
    return f'"{row["version"]}-{row["id"]}"'


def to_scim(row: asyncpg.Record, location: str, members: bytes | None) -> dict[str, Any]:
    """The group as SCIM shows it: displayName is its name; members, when read, are
    the JSON array the database made, embedded as it is."""
    group: dict[str, Any] = {"schemas": [GROUP_SCHEMA], "id": row["id"]}
    if row["external_id"] is not None:
        group["externalId"] = row["external_id"]
    group["displayName"] = row["name"]
    if members is not None and members != b"[]":
        group["members"] = msgspec.Raw(members)
    group["meta"] = {
        "resourceType": "Group",
        "created": row["created_at"],
        "lastModified": row["updated_at"],
        "location": location,
        "version": etag_of(row),
    }
    return group


class Shown:
    """What attributes= and excludedAttributes= leave of a group, by top-level name:
    a sub-attribute (members.value) stands for its attribute."""

    def __init__(self, attributes: set[str], excluded: set[str]) -> None:
        self.attributes = attributes
        self.excluded = excluded - ALWAYS_RETURNED
        self.asked = bool(attributes or excluded)

    @classmethod
    def of_steps(cls, attributes: list[Steps], excluded: list[Steps]) -> Shown:
        urn = GROUP_SCHEMA.lower() + ":"
        return cls(
            {name[0].removeprefix(urn) for name in attributes},
            {name[0].removeprefix(urn) for name in excluded},
        )

    @property
    def members(self) -> bool:
        if self.attributes:
            return "members" in self.attributes
        return "members" not in self.excluded

    def of(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            key: value
            for key, value in group.items()
            if (not self.attributes or key.lower() in self.attributes | ALWAYS_RETURNED)
            and key.lower() not in self.excluded
        }


def top_names(raw: object) -> set[str]:
    if raw is None:
        return set()
    items = raw if isinstance(raw, list) else str(raw).split(",")
    found = set()
    for item in items:
        name = str(item).strip().lower().removeprefix(GROUP_SCHEMA.lower() + ":")
        name = re.split(r"[.\[]", name, maxsplit=1)[0]
        if name:
            found.add(name)
    return found


def shown_of(request: Request) -> Shown:
    return Shown.of_steps(*attribute_params(request))


async def group_response(
    request: Request, id: UUID, shown: Shown, status_code: int = 200
) -> Response:
    """The group as it is now, read with its members when they are shown."""
    users = scim_url(request, "Users/") if shown.members else None
    row = await group_queries.scim_find_group(db_of(request), id, members_under=users)
    if row is None:
        raise ScimError(404, NO_GROUP)
    location = scim_url(request, f"Groups/{row['id']}")
    headers = {"ETag": etag_of(row)}
    if status_code == 201:
        headers["Location"] = location
    members = row["members"] if shown.members else None
    return scim_response(shown.of(to_scim(row, location, members)), status_code, headers)


async def group_body(request: Request) -> dict[str, Any]:
    settings = settings_of(request)
    body = bytes(await read_body(request, MAX_BODY_BYTES, settings.body_timeout))
    found: dict[str, Any] = decoded(_decode_any, body)
    return found


def text(value: Any, attribute: str, rule: Any) -> str:
    try:
        found: str = msgspec.convert(value, rule)
    except msgspec.ValidationError as exc:
        raise ScimError(400, f"{attribute}: {exc}", "invalidValue") from None
    return found


def display_name(value: Any) -> str:
    return text(value, "displayName", GroupName)


def external_id(value: Any) -> str | None:
    return None if value is None else text(value, "externalId", ExternalId)


def member_ids(value: Any, *, strict: bool = True) -> list[str]:
    """The users' ids a members value names: [{"value": id, "$ref": ..., ...}, ...], or
    one such object. Each is a user's id, in lower case; with `strict`, one that is
    no UUID, or a member of another type than User, is invalidValue; else it is left
    out, as naming no member."""
    entries = value if isinstance(value, list) else [value]
    found: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ScimError(400, 'A member is an object: {"value": "<user id>"}', "invalidValue")
        fields = {str(key).lower(): item for key, item in entry.items()}
        kind = fields.get("type")
        if kind is not None and str(kind).lower() != "user":
            raise ScimError(400, "Members are users: groups do not nest", "invalidValue")
        raw = fields.get("value")
        if raw is None and isinstance(fields.get("$ref"), str):
            raw = fields["$ref"].rstrip("/").rpartition("/")[2]  # the user its $ref names
        try:
            found.append(str(UUID(str(raw))))
        except ValueError:
            if strict:
                raise ScimError(
                    400, f"No user has the id {raw!r}: members are users' ids", "invalidValue"
                ) from None
    return found


def bounded(ids: dict[str, None] | list[str]) -> None:
    if len(ids) > MAX_MEMBERS:
        raise ScimError(
            400,
            f"A write names at most {MAX_MEMBERS:,} members; add more with PATCH, in batches",
            "invalidValue",
        )


def written(body: dict[str, Any]) -> ScimGroupWrite:
    """What a POST or PUT body says the group is: its displayName, externalId (none
    when left out) and members (none when left out). Names in any letter case;
    the core schema or Entra's legacy one; other attributes are ignored."""
    fields = parameters(body.items(), ("schemas", *ATTRIBUTES.values()), "Group", strict=False)
    schemas = fields.get("schemas")
    if schemas is not None and not (
        isinstance(schemas, list) and SCHEMAS & {str(schema).lower() for schema in schemas}
    ):
        raise ScimError(400, f"The body's schemas must hold {GROUP_SCHEMA!r}", "invalidSyntax")
    if "displayName" not in fields:
        raise ScimError(400, "A group needs a displayName", "invalidValue")
    members = member_ids(fields.get("members") or [])
    bounded(members)
    return ScimGroupWrite(
        name=display_name(fields["displayName"]),
        external_id=external_id(fields.get("externalId")),
        replace=tuple(dict.fromkeys(members)),
    )


def refused(exc: Exception) -> ScimError:
    """The SCIM error of a group query's refusal."""
    if isinstance(exc, group_queries.NameTaken):
        return ScimError(
            409, "Another group has this displayName, in some letter case", "uniqueness"
        )
    if isinstance(exc, group_queries.ExternalIdTaken):
        return ScimError(409, "Another group has this externalId", "uniqueness")
    if isinstance(exc, group_queries.UnknownMembers):
        shown = ", ".join(exc.ids[:10]) + (", ..." if len(exc.ids) > 10 else "")
        return ScimError(400, f"No user has these ids, so nothing changed: {shown}", "invalidValue")
    if isinstance(exc, group_queries.Stale):
        return ScimError(412, "The group has changed: If-Match does not name its version")
    if isinstance(exc, group_queries.NoSuchGroup):
        return ScimError(404, NO_GROUP)
    raise exc


REFUSALS = (
    group_queries.NameTaken,
    group_queries.ExternalIdTaken,
    group_queries.UnknownMembers,
    group_queries.Stale,
    group_queries.NoSuchGroup,
)


async def create_group(request: Request) -> Response:
    shown = shown_of(request)
    group = written(await group_body(request))
    assert group.name is not None
    assert group.replace is not None
    assert not isinstance(group.external_id, msgspec.UnsetType)
    try:
        row = await group_queries.scim_create_group(
            db_of(request), group.name, group.external_id, group.replace, actor_of(request.scope)
        )
    except REFUSALS as exc:
        raise refused(exc) from None
    return await group_response(request, UUID(row["id"]), shown, 201)


async def get_group(request: Request) -> Response:
    return await group_response(request, group_id_of(request), shown_of(request))


async def replace_group(request: Request) -> Response:
    """PUT: the group's displayName, externalId and members all as the body gives them."""
    id, condition, shown = group_id_of(request), condition_of(request), shown_of(request)
    group = written(await group_body(request))
    try:
        await group_queries.scim_write_group(
            db_of(request), id, condition, group, actor_of(request.scope)
        )
    except REFUSALS as exc:
        raise refused(exc) from None
    return await group_response(request, id, shown)


async def patch_group(request: Request) -> Response:
    """PATCH: 204, or 200 with the group when attributes= or excludedAttributes= asks
    for it (RFC 7644 §3.5.2): its members are read only when shown."""
    id, condition, shown = group_id_of(request), condition_of(request), shown_of(request)
    settings = settings_of(request)
    raw = bytes(await read_body(request, MAX_BODY_BYTES, settings.body_timeout))
    body = message(raw, PATCH_OP, ("Operations",), strict=False)
    operations = body.get("Operations")
    if not isinstance(operations, list):
        raise ScimError(400, f"A PATCH is a {PATCH_OP} with a list of Operations", "invalidSyntax")
    if not 1 <= len(operations) <= MAX_OPERATIONS:
        raise ScimError(400, f"A PATCH has 1 to {MAX_OPERATIONS} Operations", "invalidValue")
    try:
        await group_queries.scim_write_group(
            db_of(request), id, condition, patched(str(id), operations), actor_of(request.scope)
        )
    except REFUSALS as exc:
        raise refused(exc) from None
    if not shown.asked:
        return Response(status_code=204)
    return await group_response(request, id, shown)


async def delete_group(request: Request) -> Response:
    id, condition = group_id_of(request), condition_of(request)
    actor = actor_of(request.scope)
    if await group_queries.delete_group(
        db_of(request), id, condition, forgotten=FORGOTTEN, actor=actor
    ):
        return Response(status_code=204)
    if await group_queries.find_group(db_of(request), id) is None:
        raise ScimError(404, NO_GROUP)
    raise ScimError(412, "The group has changed: If-Match does not name its version")


class Patch:
    """A PATCH's operations folded, in their order, into one write."""

    def __init__(self, id: str) -> None:
        self.id = id
        self.name: str | None = None
        self.external_id: str | msgspec.UnsetType | None = msgspec.UNSET
        self.replace: dict[str, None] | None = None  # ordered sets of ids
        self.add: dict[str, None] = {}
        self.remove: dict[str, None] = {}

    def write(self) -> ScimGroupWrite:
        for ids in (self.replace or {}, self.add):
            bounded(ids)
        return ScimGroupWrite(
            name=self.name,
            external_id=self.external_id,
            replace=None if self.replace is None else tuple(self.replace),
            add=tuple(self.add),
            remove=tuple(self.remove),
        )

    def operation(self, operation: Any) -> None:
        if not isinstance(operation, dict):
            raise ScimError(400, "Each operation is an object", "invalidSyntax")
        fields = {str(key).lower(): value for key, value in operation.items()}
        op = str(fields.get("op", "")).lower()
        path, value = fields.get("path"), fields.get("value")
        if op not in ("add", "replace", "remove"):
            raise ScimError(400, f"Unknown op {fields.get('op')!r}", "invalidSyntax")
        if path is not None and not isinstance(path, str):
            raise ScimError(400, "path is a string", "invalidPath")
        if path is None:
            if op == "remove":
                raise ScimError(400, "remove needs a path", "noTarget")
            if not isinstance(value, dict):
                raise ScimError(400, f"{op} without a path takes an object", "invalidValue")
            for attribute, given in value.items():  # Okta: {"id": ..., "displayName": ...}
                self.apply(op, str(attribute), given)
        else:
            self.apply(op, path, value)

    def apply(self, op: str, path: str, value: Any) -> None:
        lowered = path.strip().lower().removeprefix(GROUP_SCHEMA.lower() + ":")
        member = _member_path.fullmatch(lowered)
        if member is not None or lowered == "members":
            self.members(op, member and member[1], value)
        elif lowered == "displayname":
            if op == "remove":
                raise ScimError(400, "displayName is required and cannot be removed", "mutability")
            self.name = display_name(value)
        elif lowered == "externalid":
            self.external_id = None if op == "remove" else external_id(value)
        elif lowered == "id":
            if op == "remove" or str(value).lower() != self.id:
                raise ScimError(400, "id is read-only", "mutability")
        elif lowered == "schemas":
            pass  # the group's own, as every answer shows them
        elif lowered == "meta" or lowered.startswith("meta."):
            raise ScimError(400, f"{path} is read-only", "mutability")
        elif lowered.startswith("members"):
            raise ScimError(
                400, f'{path!r}: members take the path members or members[value eq "<id>"]',
                "invalidPath",
            )  # fmt: skip
        else:
            raise ScimError(
                400, f"{path!r}: a group has displayName, externalId and members", "invalidPath"
            )

    def members(self, op: str, one: str | None, value: Any) -> None:
        if op == "remove":
            if one is not None:
                ids = member_ids({"value": one}, strict=False)
            elif value is None:  # every member
                self.replace, self.add, self.remove = {}, {}, {}
                return
            else:
                ids = member_ids(value, strict=False)
            for id in ids:
                self.add.pop(id, None)
                if self.replace is not None:
                    self.replace.pop(id, None)
                else:
                    self.remove[id] = None
            return
        if one is not None:
            raise ScimError(
                400, f'{op} takes the path members, not members[value eq "..."]', "invalidPath"
            )
        named = dict.fromkeys(member_ids([] if value is None else value))
        if op == "replace":
            self.replace, self.add, self.remove = named, {}, {}
        elif self.replace is not None:
            self.replace.update(named)
        else:
            self.add.update(named)
            for id in named:
                self.remove.pop(id, None)


def patched(id: str, operations: list[Any]) -> ScimGroupWrite:
    """The write a PATCH's operations make of the group with this id."""
    patch = Patch(id)
    for operation in operations:
        patch.operation(operation)
    return patch.write()


# Lists: by filter on id, displayName, externalId and the times, in name order.
async def list_groups(request: Request) -> Response:
    return await answer_list(request, listing(query_parameters(request, LIST_PARAMETERS)))


async def search_groups(request: Request) -> Response:
    body = message(await body_of(request), SEARCH_REQUEST, LIST_PARAMETERS, strict=True)
    return await answer_list(request, listing(body))


async def answer_list(request: Request, given: Listing) -> Response:
    if given.sort_by is not None and top_names(given.sort_by) - {"displayname"}:
        raise ScimError(400, "sortBy takes displayName", "invalidValue")
    resources, total = await group_page(request, given, given.start_index - 1, given.per_page)
    return scim_response(
        ListResponse(
            schemas=[LIST_RESPONSE],
            totalResults=total,
            startIndex=given.start_index,
            itemsPerPage=len(resources),
            Resources=resources,
        )
    )


async def group_page(
    request: Request, given: Listing, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The groups a listing asks for, `limit` of them after the first `offset`, in
    name order, as SCIM shows them, and how many match."""
    shown = Shown.of_steps(given.attributes, given.excluded)
    where, arguments = "true", list[object]()
    if given.filter is not None:
        try:
            where, arguments = filters.group_sql(given.filter)
        except filters.InvalidFilter as exc:
            raise ScimError(400, str(exc), "invalidFilter") from None
    rows, total = await group_queries.scim_group_page(
        db_of(request),
        (where, arguments),
        descending=given.descending,
        offset=offset,
        limit=limit,
        members_under=scim_url(request, "Users/") if shown.members else None,
    )
    groups = scim_url(request, "Groups")
    resources = [
        shown.of(to_scim(row, f"{groups}/{row['id']}", row["members"] if shown.members else None))
        for row in rows
    ]
    return resources, total
