"""A route of the API: its path, methods and endpoint, with its scope and its operation."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from starlette import routing
from starlette.requests import Request
from starlette.responses import Response

from service.operations import Operation
from service.scopes import SCOPES, ScopeName

Endpoint = Callable[[Request], Awaitable[Response]]


class Route(routing.Route):
    """Starlette's Route, whose path must match to its very end, and which names the scope
    a caller must hold: one of SCOPES, a tuple of them all needed, or OPEN (None) for a
    route without auth. Its operation is what /openapi.json says of it; SCIM's routes
    have none, as SCIM's own discovery describes them."""

    def __init__(
        self,
        path: str,
        endpoint: Endpoint,
        *,
        methods: list[str],
        scope: ScopeName | tuple[ScopeName, ...] | None,
        operation: Operation | None = None,
    ) -> None:
        super().__init__(path, endpoint, methods=methods)
        scopes = () if scope is None else (scope,) if isinstance(scope, str) else scope
        for name in scopes:
            if name not in SCOPES:
                raise ValueError(f"{path}: unknown scope {name!r}")
        self.scopes: tuple[ScopeName, ...] = scopes
        self.operation = operation
        # Starlette ends the regex in "$", which in Python also matches before
        # a final "\n": "/users/ann@example.com%0A" would name ann. "\Z" does
        # not, and costs nothing more per request than "$".
        self.path_regex = re.compile(self.path_regex.pattern.removesuffix("$") + r"\Z")

    @property
    def scope(self) -> ScopeName | None:
        """The first scope the route needs; OPEN for none."""
        return self.scopes[0] if self.scopes else None
