"""The scopes a caller may hold, each granting one part of the API."""

from __future__ import annotations

from typing import Final, Literal, get_args

ScopeName = Literal[
    "users:read", "users:create", "users:update", "users:delete", "users:changes",
    "groups:read", "groups:write", "scim",
]  # fmt: skip

# What each scope grants, as the OpenAPI document and the docs say it.
SCOPES: Final[dict[ScopeName, str]] = {
    "users:read": "List, get and look up users.",
    "users:create": "Create users, one at a time or in bulk.",
    "users:update": "Patch users.",
    "users:delete": "Delete users.",
    "users:changes": "Read the change feed, and each user's history; with groups:read, "
    "the feed of users, groups and memberships.",
    "groups:read": "List and get groups, their members and a user's groups, and check a "
    "membership.",
    "groups:write": "Create, change and delete groups, and add and remove their members.",
    "scim": "Everything under /scim/v2, for an identity provider's provisioning.",
}
assert set(SCOPES) == set(get_args(ScopeName))

# A route that any caller may use, with or without a token: probes, metrics, the document.
OPEN: Final = None
