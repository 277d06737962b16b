"""The Starlette app: route table, lifespan and error handling."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from uvicorn.config import STARTUP_FAILURE

from service import health, metrics, openapi, users
from service.auth import BearerTokens
from service.database import CannotStart, Database, close_pool, open_pool
from service.logs import configure_logging
from service.lookups import Reads
from service.observe import ObserveRequests
from service.problems import EXCEPTION_HANDLERS
from service.settings import Settings, SettingsError

logger = logging.getLogger("service")

# Each path also answers with a trailing slash, without a redirect, because
# existing callers use "/users/". "{email:path}" takes a trailing "/" itself,
# and "/users/" must come before it, which would take it as an empty email.
# The router tries routes in order, so the busiest come first.
routes = [
    Route("/users", users.list_users, methods=["GET"]),
    Route("/users", users.create_user, methods=["POST"]),
    Route("/users/", users.list_users, methods=["GET"]),
    Route("/users/", users.create_user, methods=["POST"]),
    Route("/users/{email:path}", users.get_user, methods=["GET"]),
    Route("/users/{email:path}", users.update_user, methods=["PATCH"]),
    Route("/users/{email:path}", users.delete_user, methods=["DELETE"]),
    Route("/users/bulk", users.create_users, methods=["POST"]),
    Route("/users/bulk/", users.create_users, methods=["POST"]),
    Route("/livez", health.livez, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", metrics.metrics, methods=["GET"]),
    Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
]


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
        try:
            app.state.pool = await open_pool(settings)
        except CannotStart as exc:
            logger.error("%s", exc)  # the one line that says why; no traceback is needed
            raise
        app.state.db = Database(app.state.pool, settings.db_pool_timeout)
        app.state.reads = Reads(app.state.db)
        gauge_watch = asyncio.create_task(metrics.watch_gauges(app.state.pool))
        try:
            yield
        finally:
            gauge_watch.cancel()
            await close_pool(app.state.pool)
            metrics.forget_this_worker()

    middleware = [Middleware(ObserveRequests, settings=settings)]
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
