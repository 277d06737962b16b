"""Each HTTP request from start to end, in the one layer around the route table."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from service import metrics
from service.auth import Callers
from service.logs import request_id, route_template
from service.observe import Observer, request_id_of
from service.problems import (
    CLIENT_CLOSED_REQUEST,
    ProblemError,
    handler_for,
    problem_response,
)
from service.routes import Endpoint
from service.scim.errors import as_scim, is_scim
from service.settings import Settings

logger = logging.getLogger("service.requests")

# What a browser on an origin in CORS_ORIGINS may send and read.
CORS_METHODS = ("GET", "POST", "PATCH", "DELETE")
CORS_REQUEST_HEADERS = (
    "Authorization", "Content-Type", "X-Request-ID", "If-Match", "If-None-Match", "Idempotency-Key",
    "Prefer",
)  # fmt: skip
CORS_RESPONSE_HEADERS = (
    "Location", "Link", "Retry-After", "X-Request-ID", "ETag", "Content-Location",
    "Idempotent-Replayed", "X-Total-Count", "Preference-Applied",
)  # fmt: skip


class Dispatch:
    """Route, caller, endpoint, error mapping, request ID and record, in one call.

    Starlette would run each request through five layers (server errors, a
    middleware of the service's own, exceptions, the router, the route's
    exception wrapper), each a call and most a wrapped `send`; a profile under
    load put about 30% of the samples there. Here the endpoint returns its
    Response to this one function, which maps any exception to its problem
    through problems.EXCEPTION_HANDLERS, adds the request ID to the headers
    and knows the status without wrapping `send`. The endpoint for a path is
    still the one the route table names, found by Starlette's own matching.
    """

    def __init__(self, app: Starlette, settings: Settings) -> None:
        self.router = app.router
        self.observer = Observer(settings)
        clients, access_tokens = settings.callers(), app.state.access_tokens
        self.callers = Callers(clients, access_tokens) if clients or access_tokens else None
        # Only its origin checks and headers are used; it wraps nothing.
        self.cors = (
            CORSMiddleware(
                app.router,
                allow_origins=settings.cors_origins,
                allow_methods=CORS_METHODS,
                allow_headers=CORS_REQUEST_HEADERS,
                expose_headers=CORS_RESPONSE_HEADERS,
            )
            if settings.cors_origins
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)  # the lifespan
            return
        started = time.perf_counter()
        rid = request_id_of(scope)
        request_id.set(rid)
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            # Existing callers use "/users/": one route serves both, without a redirect.
            scope["path"] = path[:-1]
        request = Request(scope, receive)
        status = 500  # until there is a response: a cancelled request is a failure
        metrics.requests_in_flight.value += 1
        try:
            if self.cors is not None and "origin" in request.headers:
                if scope["method"] == "OPTIONS" and "access-control-request-method" in (
                    request.headers
                ):
                    response = self.cors.preflight_response(request_headers=request.headers)
                else:
                    send = functools.partial(
                        self.cors.send, send=send, request_headers=request.headers
                    )
                    response = await self.respond(request)
            else:
                response = await self.respond(request)
            status = response.status_code
            response.raw_headers.append((b"x-request-id", rid.encode()))
            try:
                await response(scope, receive, send)
            except ClientDisconnect:  # a stream whose client went
                status = CLIENT_CLOSED_REQUEST
        finally:
            metrics.requests_in_flight.value -= 1
            self.observer.record(scope, status, time.perf_counter() - started)

    async def respond(self, request: Request) -> Response:
        try:
            endpoint = self.route(request.scope)
            # After routing, as the route names the scope it needs: a path or
            # method that does not exist is a 404 or 405 to any caller.
            if self.callers is not None:
                await self.callers.check(request.scope)
            return await endpoint(request)
        except asyncio.CancelledError as exc:
            # Answered rather than passed on, so that the caller gets a 503
            # problem instead of uvicorn's plain 500 and traceback; the task
            # ends with it, and is told it was not cancelled after all.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return await self.problem(request, exc)
        except Exception as exc:
            return await self.problem(request, exc)

    def route(self, scope: Scope) -> Endpoint:
        """The endpoint of the first route that serves the path and method, as Router does."""
        partial: Route | None = None
        for route in self.router.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL and isinstance(route, Route):
                scope["route"] = route
                scope.update(child_scope)
                endpoint: Endpoint = route.endpoint
                return endpoint
            if match is Match.PARTIAL and partial is None and isinstance(route, Route):
                partial = route
        if partial is not None:
            scope["route"] = partial
            raise HTTPException(405)
        raise HTTPException(404)

    async def problem(self, request: Request, exc: BaseException) -> Response:
        """The problem an exception stands for, as SCIM's error under /scim/; any
        exception unforeseen is a logged 500."""
        handler = handler_for(exc)
        if handler is not None:
            response = await handler(request, exc)
        else:
            logger.error(
                "unexpected error on %s %s",
                request.method, route_template(request.scope), exc_info=exc,
            )  # fmt: skip
            response = problem_response(ProblemError(500, "An unexpected error occurred"))
        return as_scim(response, exc) if is_scim(request) else response
