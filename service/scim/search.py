"""POST /scim/v2/.search: users and groups in one list (RFC 7644 §3.4.3)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.scim.errors import ScimError
from service.scim.groups import group_page
from service.scim.resources import LIST_RESPONSE, SEARCH_REQUEST, ListResponse
from service.scim.users import (
    LIST_PARAMETERS,
    body_of,
    listing,
    message,
    scim_response,
    user_page,
)


async def search(request: Request) -> Response:
    """The users, then the groups, that the filter matches, paged as one list. A
    filter on attributes that only one type has matches none of the other (a
    filter neither takes is the users' invalidFilter); sortBy orders the users,
    and the groups are in name order."""
    given = listing(message(await body_of(request), SEARCH_REQUEST, LIST_PARAMETERS, strict=True))
    offset, limit = given.start_index - 1, given.per_page
    refused: list[ScimError] = []
    users: list[dict[str, Any]] = []
    user_total = 0
    try:
        users, user_total = await user_page(request, given, offset, limit)
    except ScimError as exc:
        if exc.scim_type != "invalidFilter":
            raise
        refused.append(exc)
    groups: list[dict[str, Any]] = []
    group_total = 0
    try:
        groups, group_total = await group_page(
            request,
            given._replace(sort_by=None),
            max(0, offset - user_total),
            limit - len(users),
        )
    except ScimError as exc:
        if exc.scim_type != "invalidFilter":
            raise
        refused.append(exc)
    if len(refused) == 2:
        raise refused[0]
    resources = users + groups
    return scim_response(
        ListResponse(
            schemas=[LIST_RESPONSE],
            totalResults=user_total + group_total,
            startIndex=given.start_index,
            itemsPerPage=len(resources),
            Resources=resources,
        )
    )
