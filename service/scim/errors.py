"""SCIM's errors (RFC 7644 §3.12): every answer under /scim/v2 that is not a success."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service.problems import MEDIA_TYPE as PROBLEM_MEDIA_TYPE
from service.problems import ProblemError
from service.schemas import Problem
from service.scim.resources import ERROR, MEDIA_TYPE, ScimErrorBody

PREFIX = "/scim/"
# The scimType a status implies when the error did not name one.
IMPLIED = {409: "uniqueness"}
_encoder = msgspec.json.Encoder()
_decode_problem = msgspec.json.Decoder(Problem)


class ScimError(ProblemError):
    """An error with SCIM's scimType: invalidFilter, invalidValue, uniqueness, ..."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(status, detail)
        self.scim_type = scim_type


def is_scim(request: Request) -> bool:
    path: str = request.scope["path"]
    return path.startswith(PREFIX)


def as_scim(response: Response, exc: BaseException) -> Response:
    """A problem answer of the service as SCIM's error, headers kept (Retry-After,
    WWW-Authenticate, Allow); any other answer as it is."""
    if response.media_type != PROBLEM_MEDIA_TYPE:
        return response
    problem = _decode_problem.decode(bytes(response.body))
    scim_type = exc.scim_type if isinstance(exc, ScimError) else IMPLIED.get(problem.status)
    if isinstance(exc, msgspec.ValidationError):
        scim_type = "invalidValue"
    elif isinstance(exc, msgspec.DecodeError):
        scim_type = "invalidSyntax"
    body = _encoder.encode(
        ScimErrorBody(
            schemas=[ERROR], status=str(problem.status), detail=problem.detail, scimType=scim_type
        )
    )
    headers = {
        key: value
        for key, value in response.headers.items()
        if key not in ("content-length", "content-type")
    }
    return Response(body, problem.status, headers, media_type=MEDIA_TYPE)
