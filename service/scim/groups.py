"""/scim/v2/Groups: not supported, said as a SCIM error an integrator can act on."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from service.scim.errors import ScimError

# 501, not 404: the resource type is not implemented (RFC 7644 §3.12 gives 501
# for an operation the service does not support), whereas a 404 would read as
# "no such group" and invite a create.
NO_GROUPS = (
    "Groups are not supported: this service provisions users only. Turn group provisioning "
    "off (Okta: Push Groups; Entra ID: the Groups mapping of the provisioning settings)."
)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def groups(request: Request) -> Response:
    raise ScimError(501, NO_GROUPS)
