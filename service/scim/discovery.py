"""SCIM discovery (RFC 7644 §4): what the service supports, and the schemas it keeps."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.scim.errors import ScimError
from service.scim.groups import MAX_MEMBERS
from service.scim.mapping import (
    ENTERPRISE_URN,
    FORMATTED_NAME,
    TABLE,
    TYPES,
    USER_URN,
    WORK_EMAIL,
    Mapped,
)
from service.scim.resources import (
    GROUP_SCHEMA,
    LIST_RESPONSE,
    MAX_EXTERNAL_ID_LENGTH,
    USER_SCHEMA,
)
from service.scim.users import MAX_COUNT, scim_response, scim_url

SERVICE_PROVIDER_CONFIG = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"


def attribute(name: str, kind: str = "string", **overrides: Any) -> dict[str, Any]:
    """An attribute of the schema, with RFC 7643 §7's defaults."""
    return {
        "name": name,
        "type": kind,
        "multiValued": False,
        "description": "",
        "required": False,
        "caseExact": False,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": "none",
        **overrides,
    }


def kept(mapped: Mapped, name: str) -> dict[str, Any]:
    """An attribute of the table: a string kept as the user's attribute, compared
    exactly as the native API's attribute filters compare it."""
    if mapped.type is not None:
        description = f"Kept as the attribute {mapped.name} for {mapped.type}."
    else:
        description = f"{mapped.description}: the attribute {mapped.name}."
    return attribute(name, caseExact=True, description=description)


def kept_attributes(schema: str) -> list[dict[str, Any]]:
    """The table's attributes of a schema, complex ones with their sub-attributes."""
    found: dict[str, dict[str, Any]] = {}
    for mapped in TABLE:
        if mapped.schema != schema:
            continue
        if mapped.sub is None:
            found[mapped.attribute] = kept(mapped, mapped.attribute)
            continue
        holder = found.setdefault(
            mapped.attribute,
            attribute(
                mapped.attribute,
                "complex",
                multiValued=mapped.type is not None,
                subAttributes=[],
            ),
        )
        subs = holder["subAttributes"]
        same = next((sub for sub in subs if sub["name"] == mapped.sub), None)
        if same is None:
            subs.append(kept(mapped, mapped.sub))
        else:  # one sub-attribute of each typed entry: value of work, mobile and fax
            same["description"] = (
                same["description"].rstrip(".") + f"; {mapped.name} for {mapped.type}."
            )
    for name, holder in found.items():
        types = TYPES.get(name.lower())
        if types:
            holder["description"] = f"Kept for the types {', '.join(types)}."
            holder["subAttributes"].append(attribute("type", canonicalValues=types))
    return list(found.values())


KEPT = {attribute["name"]: attribute for attribute in kept_attributes(USER_URN)}
ENTERPRISE_ATTRIBUTES = kept_attributes(ENTERPRISE_URN)

# Exactly what the service keeps: userName is the user's email, displayName its
# name, active its status; the table's attributes (service/scim/mapping.py),
# the work email and name.formatted among them, are the user's attributes.
USER_ATTRIBUTES = [
    attribute(
        "userName",
        required=True,
        uniqueness="server",
        description="The user's email and identity: unique regardless of letter case. "
        "Writes to emails never change it.",
    ),
    attribute(
        "externalId",
        caseExact=True,
        uniqueness="server",
        description=f"The provider's id of the user: 1 to {MAX_EXTERNAL_ID_LENGTH} characters, "
        "unique when set.",
    ),
    # Every user has a name, an email and a status: these are required, in the
    # sense that the service always holds a value (a create may leave the
    # name out: it is then the email), and none can be removed.
    attribute(
        "displayName",
        required=True,
        description="The user's name, 1 to 200 characters.",
    ),
    attribute(
        "name",
        "complex",
        required=True,
        description="The user's name.",
        subAttributes=[
            attribute(
                "formatted",
                description="displayName, unless the provider sends another: then kept as "
                f"the attribute {FORMATTED_NAME}.",
            ),
            *(sub for sub in KEPT.pop("name")["subAttributes"] if sub["name"] != "formatted"),
        ],
    ),
    attribute(
        "emails",
        "complex",
        multiValued=True,
        required=True,
        description="The work email, the same as userName unless the provider sends "
        f"another (kept as the attribute {WORK_EMAIL}): of type work, and primary, which "
        "it shows when asked for (attributes=emails.type); and a second email, of type "
        f"{' or '.join(t for t in TYPES['emails'] if t != 'work')}, kept as the attribute "
        "email.<type>.",
        subAttributes=[
            attribute("value", required=True),
            # The user's own email is of type work, shown when asked for; a
            # second email's entry always shows its type, which tells it apart.
            attribute("type", mutability="readOnly", returned="request", canonicalValues=["work"]),
            attribute("primary", "boolean", mutability="readOnly", returned="request"),
        ],
    ),
    attribute("active", "boolean", required=True, description="false for a disabled user."),
    *(attribute for name, attribute in KEPT.items() if name != "emails"),
    attribute(
        "groups",
        "complex",
        multiValued=True,
        mutability="readOnly",
        description="The groups the user is a member of, changed through /Groups: read-only.",
        subAttributes=[
            attribute("value", mutability="readOnly", description="The group's id."),
            attribute(
                "$ref",
                "reference",
                mutability="readOnly",
                referenceTypes=["Group"],
                description="The group's URI.",
            ),
            attribute("display", mutability="readOnly", description="The group's displayName."),
        ],
    ),
]

GROUP_ATTRIBUTES = [
    attribute(
        "displayName",
        required=True,
        uniqueness="server",
        description="The group's name: 1 to 256 characters, unique regardless of letter case.",
    ),
    attribute(
        "externalId",
        caseExact=True,
        uniqueness="server",
        description=f"The provider's id of the group: 1 to {MAX_EXTERNAL_ID_LENGTH} characters, "
        "unique when set.",
    ),
    attribute(
        "members",
        "complex",
        multiValued=True,
        description="The group's members, users only (groups do not nest), all of them "
        f"in a read. A write names at most {MAX_MEMBERS:,}; members that name no user "
        "are refused and change nothing.",
        subAttributes=[
            attribute("value", mutability="immutable", description="The user's id."),
            attribute(
                "$ref",
                "reference",
                mutability="immutable",
                referenceTypes=["User"],
                description="The user's URI; ignored in a write, where value names the user.",
            ),
            attribute(
                "type",
                mutability="immutable",
                canonicalValues=["User"],
                description="User, the one type of member.",
            ),
        ],
    ),
]


def meta(request: Request, kind: str, path: str) -> dict[str, str]:
    return {"resourceType": kind, "location": scim_url(request, path)}


def user_schema(request: Request) -> dict[str, Any]:
    return {
        "schemas": [SCHEMA],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "A user of the service",
        "attributes": USER_ATTRIBUTES,
        "meta": meta(request, "Schema", f"Schemas/{USER_SCHEMA}"),
    }


def enterprise_schema(request: Request) -> dict[str, Any]:
    return {
        "schemas": [SCHEMA],
        "id": ENTERPRISE_URN,
        "name": "EnterpriseUser",
        "description": "Enterprise user: each attribute kept as the user's attribute",
        "attributes": ENTERPRISE_ATTRIBUTES,
        "meta": meta(request, "Schema", f"Schemas/{ENTERPRISE_URN}"),
    }


def group_schema(request: Request) -> dict[str, Any]:
    return {
        "schemas": [SCHEMA],
        "id": GROUP_SCHEMA,
        "name": "Group",
        "description": "A group of users",
        "attributes": GROUP_ATTRIBUTES,
        "meta": meta(request, "Schema", f"Schemas/{GROUP_SCHEMA}"),
    }


SCHEMAS = {USER_SCHEMA: user_schema, ENTERPRISE_URN: enterprise_schema, GROUP_SCHEMA: group_schema}


def user_type(request: Request) -> dict[str, Any]:
    return {
        "schemas": [RESOURCE_TYPE],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "A user of the service",
        "schema": USER_SCHEMA,
        "schemaExtensions": [{"schema": ENTERPRISE_URN, "required": False}],
        "meta": meta(request, "ResourceType", "ResourceTypes/User"),
    }


def group_type(request: Request) -> dict[str, Any]:
    return {
        "schemas": [RESOURCE_TYPE],
        "id": "Group",
        "name": "Group",
        "endpoint": "/Groups",
        "description": "A group of users",
        "schema": GROUP_SCHEMA,
        "meta": meta(request, "ResourceType", "ResourceTypes/Group"),
    }


TYPES_BY_ID = {"User": user_type, "Group": group_type}


def listed(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemas": [LIST_RESPONSE],
        "totalResults": len(resources),
        "startIndex": 1,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


async def service_provider_config(request: Request) -> Response:
    return scim_response(
        {
            "schemas": [SERVICE_PROVIDER_CONFIG],
            "patch": {"supported": True},
            "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": True, "maxResults": MAX_COUNT},
            "changePassword": {"supported": False},
            "sort": {"supported": True},
            "etag": {"supported": True},
            "authenticationSchemes": [
                {
                    "type": "oauthbearertoken",
                    "name": "Bearer token",
                    "description": "The token of an API_CLIENTS client holding the scim "
                    "scope, or one of API_TOKENS; none when the service has neither.",
                    "primary": True,
                }
            ],
            "meta": meta(request, "ServiceProviderConfig", "ServiceProviderConfig"),
        }
    )


async def resource_types(request: Request) -> Response:
    return scim_response(listed([found(request) for found in TYPES_BY_ID.values()]))


async def resource_type(request: Request) -> Response:
    found = TYPES_BY_ID.get(request.path_params["id"])
    if found is None:
        raise ScimError(404, f"The service has the resource types {' and '.join(TYPES_BY_ID)}")
    return scim_response(found(request))


async def schemas(request: Request) -> Response:
    return scim_response(listed([found(request) for found in SCHEMAS.values()]))


async def schema(request: Request) -> Response:
    found = SCHEMAS.get(request.path_params["id"])
    if found is None:
        raise ScimError(404, f"The service has the schemas {', '.join(SCHEMAS)}")
    return scim_response(found(request))
