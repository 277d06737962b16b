"""The typed description of an operation, which its route carries into /openapi.json."""

from __future__ import annotations

from typing import Literal

import msgspec

from service.schemas import IdempotencyKey, UserHandle

JSON = "application/json"


class Header(msgspec.Struct, frozen=True, kw_only=True):
    """A header of an answer."""

    name: str
    type: object
    description: str
    required: bool = True


class Parameter(msgspec.Struct, frozen=True, kw_only=True):
    """A parameter of a request: in its path, its query or its headers."""

    name: str
    location: Literal["path", "query", "header"]
    type: object
    description: str
    required: bool = False  # a path's parameters always are
    # An object whose properties are each a query parameter of their own
    # (style form, exploded): `name` is never sent, only the properties.
    spread: bool = False


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """An answer of one status: its body's type and media type, and its headers."""

    description: str
    body: object = None  # the type of the body; None for no body
    media_type: str = JSON
    headers: tuple[Header, ...] = ()
    # Other media types the answer may come in, as Accept asks, and their types.
    alternatives: tuple[tuple[str, object], ...] = ()


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """What a route does, for its caller: service/openapi.py adds what every operation
    shares (X-Request-ID, security, 401/403, problems as bodies)."""

    operation_id: str
    tag: Literal["users", "groups", "operations"]
    summary: str
    description: str
    parameters: tuple[Parameter, ...] = ()
    body: object = None  # the type of the request body
    replies: dict[int, Reply]
    problems: dict[int, str] = {}
    uses_database: bool = False  # adds 503
    conditional: bool = False  # adds If-Match and 412; with REQUIRE_IF_MATCH, required and 428


# What the endpoints of /users share.
LOCATION = Header(name="Location", type=str, description="The path of the new user.")
ETAG = Header(
    name="ETag",
    type=str,
    description="The user's strong entity tag: it changes whenever the user does, and only then.",
)
REPLAYED = Header(
    name="Idempotent-Replayed",
    type=str,
    required=False,
    description="`true` on an answer replayed for a repeated Idempotency-Key.",
)
CONTENT_LOCATION = Header(
    name="Content-Location",
    type=str,
    description="The user's path by its email, which the patch may have changed.",
)
USER = Parameter(
    name="user",
    location="path",
    type=UserHandle,
    description="The user's email in any letter case, percent-encoded, or its `id`. One "
    "that cannot be either names no user: 404.",
)
IF_NONE_MATCH = Parameter(
    name="If-None-Match",
    location="header",
    type=str,
    description="ETags, comma-separated, or `*`: when one is the current one (weak ones compared "
    "weakly), the answer is 304 without a body.",
)
IDEMPOTENCY_KEY = Parameter(
    name="Idempotency-Key",
    location="header",
    type=IdempotencyKey,
    description="The answer is stored with the write; "
    "a retry with the same key and body gets it again, byte for byte, with "
    "`Idempotent-Replayed: true`, and nothing is written twice. Keys are per bearer token "
    "and expire after IDEMPOTENCY_TTL seconds (a day by default).",
)
KEY_PROBLEMS = {
    400: "Malformed JSON, invalid UTF-8, or an Idempotency-Key that is not 1 to 255 "
    "printable ASCII characters or is sent on more than one line.",
    422: "The body breaks a rule or repeats a key (`field` is the JSON path of where), or the "
    "Idempotency-Key was used with another body or path.",
}
IN_PROGRESS = " Or a request with the same Idempotency-Key is still in progress: retry later."
BODY_PROBLEMS = {
    400: "Malformed JSON, invalid UTF-8, or arrays or objects nested too deeply to read.",
    413: "The body is larger than MAX_BODY_BYTES (64 KiB by default).",
    411: "An HTTP/1.0 request has a body but no Content-Length.",
    415: "The body is not JSON, names a charset other than UTF-8, or has a Content-Encoding "
    "other than identity (the answer then has `Accept-Encoding: identity`).",
    422: "The body breaks a rule or repeats a key; `field` is the JSON path of where (`$.email`).",
}
