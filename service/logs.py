"""Log lines, as JSON or text, each carrying the ID of its request."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import msgspec
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from service.settings import Settings

# Set by the request middleware; every log line of that request carries it.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# What a request's log line adds to the message, when present.
REQUEST_FIELDS = ("method", "route", "status", "duration_ms", "client")
_encoder = msgspec.json.Encoder()


def route_template(scope: Scope) -> str:
    """The route of a request, as logs and metrics name it: "/users/{email}".

    Never the raw path: it holds emails, which are personal data, and once
    decoded it could forge lines of a text log. Starlette puts the matched
    route in the scope; its template also keeps metric labels few.
    """
    route: BaseRoute | None = scope.get("route")
    if isinstance(route, Route):
        return route.path_format
    return "unmatched"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for a log pipeline to index."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            line["request_id"] = rid
        for field in REQUEST_FIELDS:
            if hasattr(record, field):
                line[field] = getattr(record, field)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, with the same fields as the JSON."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname:<8} {record.name}: {record.getMessage()}"
        fields = [
            f"{field}={getattr(record, field)}"
            for field in (*REQUEST_FIELDS, "request_id")
            if getattr(record, field, None) is not None
        ]
        if fields:
            text += "  " + " ".join(fields)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs, told apart from any other."""


def configure_logging(settings: Settings) -> None:
    """Send the service's and uvicorn's lines through one handler on stderr."""
    handler = ServiceHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    # Replace only a handler of ours, so that a test runner's capture stays.
    root.handlers = [h for h in root.handlers if not isinstance(h, ServiceHandler)] + [handler]
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True
    # The service writes its own access lines (ACCESS_LOG=1), with the request
    # ID. uvicorn builds its access line's arguments (quoting the path among
    # them) whenever this logger has a handler, even a disabled one's: with
    # none, and not propagating, it skips them (~1.5% of a lookup's CPU).
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    access.disabled = True
