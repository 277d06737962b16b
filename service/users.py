"""The /users endpoints: decode the request, run a query, encode the answer."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service import queries
from service.bodies import read_json
from service.database import db_of
from service.lookups import Creates, Reads
from service.problems import ProblemError
from service.schemas import Email, Inserted, NewUser, NewUsers, UserPatch, email_key
from service.settings import Settings

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
MAX_OFFSET = 2**63 - 1  # PostgreSQL's bigint

_decode_new_user = msgspec.json.Decoder(NewUser)
_decode_new_users = msgspec.json.Decoder(NewUsers)
_decode_patch = msgspec.json.Decoder(UserPatch)
_encoder = msgspec.json.Encoder()


def json_response(
    content: object, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encoder.encode(content), status_code, headers, media_type="application/json")


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def reads_of(request: Request) -> Reads:
    reads: Reads = request.app.state.reads
    return reads


def creates_of(request: Request) -> Creates:
    creates: Creates = request.app.state.creates
    return creates


def path_email(request: Request) -> str:
    """The {email} of the path; one that cannot be valid names no user: 404."""
    email: str = request.path_params["email"]
    try:
        return msgspec.convert(email, Email)
    except msgspec.ValidationError:
        raise ProblemError(404, "No user has that email") from None


def user_url(email: str) -> str:
    return "/users/" + quote(email, safe="@+")


async def create_user(request: Request) -> Response:
    settings = settings_of(request)
    new = await read_json(request, _decode_new_user, settings.max_body_bytes, settings.body_timeout)
    user = await creates_of(request).create(name=new.name, email=new.email)
    if user is None:
        raise ProblemError(409, "A user with that email already exists", conflicts=[new.email])
    return json_response(user, 201, {"Location": user_url(user.email)})


async def get_user(request: Request) -> Response:
    user = await reads_of(request).user.get(email_key(path_email(request)))
    if user is None:
        raise ProblemError(404, "No user has that email")
    return json_response(user)


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # isdigit alone admits other scripts' digits; the length check keeps int() cheap.
    if raw.isascii() and raw.isdigit() and len(raw) <= 19 and low <= int(raw) <= high:
        return int(raw)
    raise ProblemError(422, f"{name} must be a whole number from {low} to {high}", field=name)


async def list_users(request: Request) -> Response:
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
    after = request.query_params.get("after")
    if after is None:
        users = await reads_of(request).page_at.get((limit, offset))
    else:
        try:
            after = msgspec.convert(after, Email)
        except msgspec.ValidationError:
            raise ProblemError(422, "after must be an email address", field="after") from None
        users = await reads_of(request).page_after.get((email_key(after), limit, offset))
    headers = None
    if len(users) == limit:
        # Keyset paging: the next page starts after the last email of this one.
        query = urlencode({"after": users[-1].email, "limit": limit})
        headers = {"Link": f'</users?{query}>; rel="next"'}
    return json_response(users, headers=headers)


async def create_users(request: Request) -> Response:
    settings = settings_of(request)
    new_users = await read_json(
        request, _decode_new_users, settings.max_bulk_bytes, settings.body_timeout
    )
    if not new_users:
        return json_response(Inserted(inserted=0), 201)
    # The unique index refuses emails that exist or repeat in the payload, so
    # the repeats are looked for only when it did (1.6 ms of a 10,000-user load).
    taken = await queries.insert_users(db_of(request), new_users)
    if taken is None:
        return json_response(Inserted(inserted=len(new_users)), 201)
    spelt: dict[str, str] = {}  # email_key -> the email as the request first spelt it
    repeated: set[str] = set()
    for new in new_users:
        key = email_key(new.email)
        if key in spelt:
            repeated.add(key)
        else:
            spelt[key] = new.email
    raise conflict(spelt, repeated | {email_key(email) for email in taken})


def conflict(spelt: dict[str, str], keys: set[str]) -> ProblemError:
    """A 409 listing emails as the request spelt them, so a caller finds each in its payload."""
    return ProblemError(
        409,
        "Emails repeat or already exist; nothing was inserted",
        conflicts=[spelt[key] for key in sorted(keys)],
    )


async def update_user(request: Request) -> Response:
    email = path_email(request)
    settings = settings_of(request)
    patch = await read_json(request, _decode_patch, settings.max_body_bytes, settings.body_timeout)
    user = await queries.update_user_name(db_of(request), email=email, name=patch.name)
    if user is None:
        raise ProblemError(404, "No user has that email")
    return json_response(user)


async def delete_user(request: Request) -> Response:
    if not await queries.delete_user(db_of(request), path_email(request)):
        raise ProblemError(404, "No user has that email")
    return Response(status_code=204)
