"""What each request leaves behind: its ID, its metrics and its log line."""

from __future__ import annotations

import logging
import random
import re

from starlette.types import Scope

from service import metrics
from service.auth import caller_of
from service.logs import route_template
from service.settings import Settings

logger = logging.getLogger("service.requests")

# A caller's ID is kept when it looks like one (a UUID, a base64 token, ...).
REQUEST_ID = re.compile(r"[A-Za-z0-9+/=-]{20,200}")
PROBES = frozenset({"/livez", "/readyz"})
# The scope's seconds a request spent waiting by design (a long poll's wait, a
# stream): not time spent answering, so not what makes a request slow.
WAITED = "service.waited"
LABELS = metrics.client_labels.labels


def request_id_of(scope: Scope) -> str:
    """The caller's X-Request-ID when it looks like one, else a new one."""
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            given: str = value.decode("latin-1")
            if REQUEST_ID.fullmatch(given):
                return given
            break
    # Unique, not secret: the PRNG spares a getrandom() call per request.
    return f"{random.getrandbits(128):032x}"


class Observer:
    """Counts, times and, when it is news, logs each answered request."""

    def __init__(self, settings: Settings) -> None:
        self.slow_seconds = settings.slow_request_ms / 1000
        self.access_log = settings.access_log
        metrics.client_labels.configure(client.name for client in settings.callers())

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        method = scope["method"]
        caller = caller_of(scope)
        if caller is None:
            client = metrics.NO_CLIENT
        else:
            # The labels' dict first, a name known to it: ~100 ns a request.
            client = LABELS.get(caller.name) or metrics.client_label(caller.name)
        metrics.request_tally.add((method, route, status, client), seconds)
        if status >= 500:
            level = logging.ERROR
        elif seconds - scope.get(WAITED, 0.0) >= self.slow_seconds:
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
            if caller is not None:
                fields["client"] = caller.name
            logger.log(level, "%s %s %s", method, route, status, extra=fields)
