"""The SCIM messages the tests send, and the errors they expect back, as a provider sees them."""

from __future__ import annotations

from typing import Any

import httpx

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_JSON = "application/scim+json"


def patch(*operations: Any) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(operations)}


def scim_error(response: httpx.Response, status: int, scim_type: str | None = None) -> str:
    """The detail of a SCIM error with this status and scimType."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == SCIM_JSON
    error = response.json()
    assert error["schemas"] == [ERROR]
    assert error["status"] == str(status)
    assert error.get("scimType") == scim_type
    detail: str = error["detail"]
    assert detail
    return detail
