"""The Starlette app: route table, lifespan and error handling."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import STARTUP_FAILURE

from service import health, metrics, openapi, users
from service.auth import BearerTokens
from service.database import Database, close_pool, open_pool
from service.logs import configure_logging
from service.lookups import Reads
from service.observe import ObserveRequests
from service.problems import EXCEPTION_HANDLERS
from service.settings import Settings, SettingsError


class EmailConvertor(Convertor[str]):
    """A path segment that can only be an email: it holds an "@".

    So "/users/bulk" is never taken for an email, and a wrong method there is
    a 405 rather than "no such user". "/" may appear, as %2F in a local part.
    """

    regex = ".*@.*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("email", EmailConvertor())

# The map of the API. Each path also answers with a trailing slash ("/users/")
# without a redirect, as existing callers use it: TrailingSlash strips it
# before routing. The router tries routes in order, so the busiest come first.
routes = [
    Route("/users", users.list_users, methods=["GET"]),
    Route("/users", users.create_user, methods=["POST"]),
    Route("/users/{email:email}", users.get_user, methods=["GET"]),
    Route("/users/{email:email}", users.update_user, methods=["PATCH"]),
    Route("/users/{email:email}", users.delete_user, methods=["DELETE"]),
    Route("/users/bulk", users.create_users, methods=["POST"]),
    Route("/livez", health.livez, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", metrics.metrics, methods=["GET"]),
    Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
]


class TrailingSlash:
    """Routes "/users/" as "/users": one route, one operation and one metric label each."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if len(path) > 1 and path.endswith("/"):
            scope["path"] = path[:-1]
        await self.app(scope, receive, send)


def load_settings() -> Settings:
    """Settings from the environment, or exit with one line naming the variable."""
    try:
        settings = Settings.from_env()
        if settings.database_url is None:
            raise SettingsError("DATABASE_URL is not set: the service needs a PostgreSQL URL")
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr, flush=True)
        # uvicorn's supervisor stops instead of restarting a worker that exits so.
        raise SystemExit(STARTUP_FAILURE) from None
    return settings


def create_app(settings: Settings | None = None) -> Starlette:
    """The app for uvicorn's --factory; settings come from the environment by default."""
    if settings is None:
        settings = load_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics.forget_dead_workers()
        app.state.pool = await open_pool(settings)
        app.state.db = Database(app.state.pool, settings.db_pool_timeout)
        app.state.reads = Reads(app.state.db)
        gauge_watch = asyncio.create_task(metrics.watch_gauges(app.state.pool))
        try:
            yield
        finally:
            gauge_watch.cancel()
            await close_pool(app.state.pool)
            metrics.forget_this_worker()

    middleware = [Middleware(TrailingSlash), Middleware(ObserveRequests, settings=settings)]
    if settings.cors_origins:
        # Outside the token check: a browser's preflight carries no token.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=CORS_METHODS,
                allow_headers=CORS_REQUEST_HEADERS,
                expose_headers=CORS_RESPONSE_HEADERS,
            )
        )
    if settings.api_tokens:
        middleware.append(Middleware(BearerTokens, tokens=settings.api_tokens))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.router.redirect_slashes = False
    return app


# What a browser on an origin in CORS_ORIGINS may send and read.
CORS_METHODS = ("GET", "POST", "PATCH", "DELETE")
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "X-Request-ID")
CORS_RESPONSE_HEADERS = ("Location", "Link", "Retry-After", "X-Request-ID")
