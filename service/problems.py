"""RFC 9457 problem responses, and the one place errors become statuses."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import asyncpg
import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route

from service.database import UNAVAILABLE, PoolBusy
from service.logs import route_template
from service.metrics import DB_ERRORS
from service.queries import Contended
from service.schemas import EMAIL_RULE, TEXT_RULE, AttributeRuleError, Problem

logger = logging.getLogger("service")

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = "1"
# The status logs and metrics give a request whose client got no answer, as nginx does.
CLIENT_CLOSED_REQUEST = 499

_encoder = msgspec.json.Encoder()
# msgspec ends a validation message with the place it failed, "... - at `$[0]`",
# or says nothing of the place when it is the whole body.
_AT_PATH = re.compile(r" - at `(?P<path>[^`]*)`$")
# For a missing or unknown field, the place is the object: the field is named here.
_NAMED_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]*)`")


class ProblemError(Exception):
    """Raised by endpoints to answer with a problem; handled in one place."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        conflicts: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.conflicts = conflicts
        self.headers = headers


def problem_response(error: ProblemError) -> Response:
    problem = Problem(
        # No problem here needs more than its status says: RFC 9457's about:blank.
        type="about:blank",
        title=HTTPStatus(error.status).phrase,
        status=error.status,
        detail=error.detail,
        field=error.field,
        conflicts=error.conflicts,
    )
    return Response(
        _encoder.encode(problem),
        status_code=error.status,
        headers=error.headers,
        media_type=MEDIA_TYPE,
    )


def from_validation(exc: msgspec.ValidationError) -> ProblemError:
    """A 422 whose `field` is the exact JSON path into the body that broke a rule."""
    message = str(exc)
    match = _AT_PATH.search(message)
    field = match["path"] if match else "$"
    if match:
        message = message[: match.start()]
    named = _NAMED_FIELD.match(message)
    if named:
        field += f".{named['name']}"
    if isinstance(exc.__cause__, AttributeRuleError):  # raised in a Struct's __post_init__
        field += exc.__cause__.path
    if "matching regex" in message:
        # The raw pattern helps nobody; say what the rule is instead.
        message = f"Expected {EMAIL_RULE if field.endswith('email') else TEXT_RULE}"
    return ProblemError(422, f"{message} at {field}", field=field)


async def handle_problem(request: Request, exc: BaseException) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(exc)


async def handle_http(request: Request, exc: BaseException) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; a path
        # here has one route per method, so gather them all.
        headers["Allow"] = ", ".join(sorted(allowed_methods(request)))
        if request.method == "OPTIONS":
            # RFC 9110 §9.3.7: what the path allows, and no body.
            return Response(status_code=204, headers=headers)
    return problem_response(ProblemError(exc.status_code, exc.detail, headers=headers))


def allowed_methods(request: Request) -> set[str]:
    """The methods of every route whose path matches, OPTIONS included."""
    methods = {"OPTIONS"}
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE and isinstance(route, Route) and route.methods:
            methods |= route.methods
    return methods


async def handle_validation(request: Request, exc: BaseException) -> Response:
    assert isinstance(exc, msgspec.ValidationError)
    return problem_response(from_validation(exc))


async def handle_decode(request: Request, exc: BaseException) -> Response:
    return problem_response(ProblemError(400, f"Malformed JSON: {exc}"))


async def handle_database(request: Request, exc: BaseException) -> Response:
    # A constraint that answers for the caller is the caller's error, not a
    # fault of the database: it is not counted in db_errors_total, where it
    # would page someone for a duplicate email. Every path checks its input
    # (and catches its own unique violations), so one that reaches here is a
    # gap in that checking: worth a warning, not an alert.
    if isinstance(exc, CALLER_ERRORS):
        logger.warning(
            "the database refused a value on %s %s: %s",
            request.method, route_template(request.scope), exc,
        )  # fmt: skip
        if isinstance(exc, asyncpg.UniqueViolationError):
            return problem_response(ProblemError(409, "A user with that email already exists"))
        return problem_response(ProblemError(422, "A value was refused by the database"))
    DB_ERRORS.labels(type(exc).__name__).inc()
    logger.error(
        "database error on %s %s", request.method, route_template(request.scope), exc_info=exc
    )
    return problem_response(ProblemError(500, "The request could not be completed"))


# Refusals of a value by a constraint or a type: 409 or 422, never counted as faults.
CALLER_ERRORS = (asyncpg.UniqueViolationError, asyncpg.CheckViolationError, asyncpg.DataError)


async def handle_disconnect(request: Request, exc: BaseException) -> Response:
    # Never sent: uvicorn drops what is sent to a client that is gone. It is
    # for the log line and the metrics, which say the client got no answer,
    # and do not count a client that went away as a failure of the service.
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def handle_cancelled(request: Request, exc: BaseException) -> Response:
    # uvicorn cancels a request only when a graceful stop runs out of time.
    return problem_response(
        ProblemError(
            503,
            "The service is stopping; retry shortly",
            headers={"Retry-After": RETRY_AFTER_SECONDS, "Connection": "close"},
        )
    )


async def handle_unavailable(request: Request, exc: BaseException) -> Response:
    DB_ERRORS.labels(type(exc).__name__).inc()
    logger.warning(
        "database unavailable on %s %s: %r", request.method, route_template(request.scope), exc
    )
    return retry_shortly("The database is unavailable; retry shortly")


async def handle_busy(request: Request, exc: BaseException) -> Response:
    return retry_shortly("Every database connection is busy; retry shortly")


async def handle_contended(request: Request, exc: BaseException) -> Response:
    return retry_shortly("Other requests keep changing this user; retry shortly")


async def handle_deadlock(request: Request, exc: BaseException) -> Response:
    # Two writes each waited for a row the other held (a PATCH taking an email
    # that a bulk load holding its old one inserts, say), and PostgreSQL
    # rolled this one back whole: nothing of it is stored, and the same
    # request sent again finds the other write done.
    DB_ERRORS.labels(type(exc).__name__).inc()
    logger.warning(
        "deadlock on %s %s, rolled back: %s", request.method, route_template(request.scope), exc
    )
    return retry_shortly("Another request was writing the same users at once; retry shortly")


def retry_shortly(detail: str) -> Response:
    """A 503 for a state that passes by itself: the caller may retry in a second."""
    return problem_response(ProblemError(503, detail, headers={"Retry-After": RETRY_AFTER_SECONDS}))


Handler = Callable[[Request, BaseException], Awaitable[Response]]
EXCEPTION_HANDLERS: dict[type[BaseException], Handler] = {
    ProblemError: handle_problem,
    PoolBusy: handle_busy,
    Contended: handle_contended,
    asyncpg.DeadlockDetectedError: handle_deadlock,
    HTTPException: handle_http,
    msgspec.ValidationError: handle_validation,
    msgspec.DecodeError: handle_decode,
    ClientDisconnect: handle_disconnect,
    asyncio.CancelledError: handle_cancelled,
    asyncpg.PostgresError: handle_database,
    **{error: handle_unavailable for error in UNAVAILABLE},
}


def handler_for(exc: BaseException) -> Handler | None:
    """The handler of the closest of the exception's classes that has one."""
    for cls in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None
