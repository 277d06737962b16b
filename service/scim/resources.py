"""The SCIM resources (RFC 7643 §4) as the service keeps them, and its messages."""

from __future__ import annotations

from typing import Annotated

import msgspec

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
# The schema Entra ID's non-gallery apps may still send for a group.
ENTRA_GROUP_SCHEMA = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH_REQUEST = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
MEDIA_TYPE = "application/scim+json"
# An externalId: the provider's own id of the person; at most this long.
MAX_EXTERNAL_ID_LENGTH = 255
ExternalId = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=MAX_EXTERNAL_ID_LENGTH, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$"
    ),
]


# What a provider sends. Attributes the schema does not advertise are ignored
# (RFC 7643 §3: a service may ignore them), so these Structs take unknown fields.
class NameIn(msgspec.Struct, kw_only=True):
    formatted: str | None = None
    givenName: str | None = None
    familyName: str | None = None


class EmailIn(msgspec.Struct, kw_only=True):
    value: str | None = None
    type: str | None = None
    primary: bool | str | None = None  # "True" from Entra ID


class UserIn(msgspec.Struct, kw_only=True):
    """The body of POST /Users and PUT /Users/{id}."""

    schemas: list[str] = []
    userName: str
    externalId: str | None = None
    displayName: str | None = None
    name: NameIn | None = None
    emails: list[EmailIn] | None = None
    # Entra ID sends "True" and "False". None: active for a create, as it was for a PUT.
    active: bool | str | None = None


class ListResponse(msgspec.Struct, kw_only=True):
    schemas: list[str]
    totalResults: int
    startIndex: int
    itemsPerPage: int
    Resources: list[dict[str, object]]


class ScimErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    schemas: list[str]
    status: str  # a string, as RFC 7644 §3.12 writes it
    detail: str
    scimType: str | None = None
