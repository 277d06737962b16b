"""Watches every request: its ID, metrics and log line, and a last-resort 500."""

from __future__ import annotations

import logging
import random
import re
import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.logs import request_id, route_template
from service.problems import ProblemError, problem_response
from service.settings import Settings

logger = logging.getLogger("service.requests")

# A caller's ID is kept when it looks like one (a UUID, a base64 token, ...).
REQUEST_ID = re.compile(r"[A-Za-z0-9+/=-]{20,200}")
PROBES = frozenset({"/livez", "/readyz"})


class ObserveRequests:
    """Request ID, timing, metrics and logging for each request, in one layer.

    One wrapper rather than one middleware per concern: every layer costs a
    call and a wrapped send on each request.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.slow_seconds = settings.slow_request_ms / 1000
        self.access_log = settings.access_log
        # Labelled children by (method, route, status): labels() is a locked
        # lookup each time, and the set of keys is small.
        self.children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = next((value for key, value in scope["headers"] if key == b"x-request-id"), b"")
        rid = given.decode("latin-1")
        if not (given and REQUEST_ID.fullmatch(rid)):
            # Unique, not secret: the PRNG spares a getrandom() call per request.
            rid = f"{random.getrandbits(128):032x}"
        request_id.set(rid)
        status: int | None = None  # until a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        metrics.requests_in_flight.value += 1
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unexpected error on %s %s", scope["method"], route_template(scope))
            if status is not None:  # too late for a problem response
                raise
            response = problem_response(ProblemError(500, "An unexpected error occurred"))
            await response(scope, receive, send_with_id)
        finally:
            metrics.requests_in_flight.value -= 1
            # No response at all (the task was cancelled) counts as a failure.
            self.record(scope, status or 500, time.perf_counter() - started)

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        method = scope["method"]
        key = (method, route, status)
        children = self.children.get(key)
        if children is None:
            children = self.children[key] = (
                metrics.REQUESTS.labels(*key),
                metrics.LATENCY.labels(*key),
            )
        children[0].inc()
        children[1].observe(seconds)
        if status >= 500:
            level = logging.ERROR
        elif seconds >= self.slow_seconds:
            level = logging.WARNING
        elif status >= 400 or self.access_log:
            level = logging.INFO
        else:
            return
        if route in PROBES:
            level = logging.DEBUG  # the platform probes often; its probes are not news
        if logger.isEnabledFor(level):
            fields = {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
            }
            logger.log(level, "%s %s %s", method, route, status, extra=fields)
