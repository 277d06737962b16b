"""The app: its route table, and the lifespan that owns the pool."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE

from service import changes, groups, health, metrics, openapi, users
from service.access_tokens import AccessTokens
from service.database import CannotStart, Database, close_pool, open_pool
from service.dispatch import Dispatch
from service.logs import configure_logging
from service.lookups import Creates, Reads
from service.replicas import open_replicas
from service.routes import Route
from service.schemas import UUID_PATTERN
from service.scim import discovery
from service.scim import groups as scim_groups
from service.scim import search as scim_search
from service.scim import users as scim_users
from service.scopes import OPEN
from service.settings import Settings, SettingsError
from service.watch import Watch

logger = logging.getLogger("service")


class UserConvertor(Convertor[str]):
    """A path segment naming a user: an email, which holds an "@", or an id, a UUID.

    So "/users/bulk", "/users/lookup" and "/users/changes" are never taken for a user, and a
    wrong method there is a 405 rather than "no such user". "/" may appear, as %2F in a local
    part, but not after the "@", as no domain holds one: "/users/{user}/changes" is never
    taken for a user either.
    """

    regex = "[^@]*@[^/]*|" + UUID_PATTERN

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("user", UserConvertor())


class GroupConvertor(Convertor[str]):
    """A path segment naming a group: its id, a UUID in any letter case."""

    regex = UUID_PATTERN

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("group", GroupConvertor())


# The map of the API, each route with the scope a caller needs (service/scopes.py),
# or OPEN, and its operation in /openapi.json, written beside its endpoint. Each
# path also answers with a trailing slash ("/users/") without a redirect, as
# existing callers use it: Dispatch strips it before routing. Routes are tried in
# order, so the busiest come first. Laid out by hand to read as a table: a route
# too long for one line has its operation on the next.
# fmt: off
routes = [
    Route("/users/{user:user}", users.get_user, methods=["GET"], scope="users:read",
          operation=users.GET_USER),
    Route("/users", users.list_users, methods=["GET"], scope="users:read",
          operation=users.LIST_USERS),
    Route("/users", users.create_user, methods=["POST"], scope="users:create",
          operation=users.CREATE_USER),
    Route("/users/lookup", users.lookup_users, methods=["POST"], scope="users:read",
          operation=users.LOOKUP_USERS),
    Route("/users/changes", changes.list_changes, methods=["GET"], scope="users:changes",
          operation=changes.LIST_CHANGES),
    Route("/changes", changes.list_all_changes, methods=["GET"],
          scope=("users:changes", "groups:read"), operation=changes.LIST_ALL_CHANGES),
    Route("/users/{user:user}", users.update_user, methods=["PATCH"], scope="users:update",
          operation=users.UPDATE_USER),
    Route("/users/{user:user}", users.delete_user, methods=["DELETE"], scope="users:delete",
          operation=users.DELETE_USER),
    Route("/users/{user:user}/changes", changes.list_user_changes, methods=["GET"],
          scope="users:changes", operation=changes.LIST_USER_CHANGES),
    Route("/users/bulk", users.create_users, methods=["POST"], scope="users:create",
          operation=users.CREATE_USERS),
    Route("/users/{user:user}/groups", groups.list_user_groups, methods=["GET"],
          scope="groups:read", operation=groups.LIST_USER_GROUPS),
    Route("/groups/{group:group}/members/{user:user}", groups.check_member, methods=["GET"],
          scope="groups:read", operation=groups.CHECK_MEMBER),
    Route("/groups", groups.list_groups, methods=["GET"], scope="groups:read",
          operation=groups.LIST_GROUPS),
    Route("/groups", groups.create_group, methods=["POST"], scope="groups:write",
          operation=groups.CREATE_GROUP),
    Route("/groups/{group:group}", groups.get_group, methods=["GET"], scope="groups:read",
          operation=groups.GET_GROUP),
    Route("/groups/{group:group}", groups.update_group, methods=["PATCH"],
          scope="groups:write", operation=groups.UPDATE_GROUP),
    Route("/groups/{group:group}", groups.delete_group, methods=["DELETE"],
          scope="groups:write", operation=groups.DELETE_GROUP),
    Route("/groups/{group:group}/members", groups.list_members, methods=["GET"],
          scope="groups:read", operation=groups.LIST_MEMBERS),
    Route("/groups/{group:group}/members", groups.change_members, methods=["POST"],
          scope="groups:write", operation=groups.CHANGE_MEMBERS),
    Route("/livez", health.livez, methods=["GET"], scope=OPEN, operation=health.LIVEZ),
    Route("/readyz", health.readyz, methods=["GET"], scope=OPEN, operation=health.READYZ),
    Route("/metrics", metrics.metrics, methods=["GET"], scope=OPEN, operation=metrics.METRICS),
    Route("/openapi.json", openapi.openapi_json, methods=["GET"], scope=OPEN,
          operation=openapi.OPENAPI),
    # SCIM 2.0 for identity providers (service/scim); its discovery documents
    # it, so /openapi.json leaves it out.
    Route("/scim/v2/Users", scim_users.list_users, methods=["GET"], scope="scim"),
    Route("/scim/v2/Users", scim_users.create_user, methods=["POST"], scope="scim"),
    Route("/scim/v2/Users/.search", scim_users.search_users, methods=["POST"], scope="scim"),
    Route("/scim/v2/.search", scim_search.search, methods=["POST"], scope="scim"),
    Route("/scim/v2/Users/{id}", scim_users.get_user, methods=["GET"], scope="scim"),
    Route("/scim/v2/Users/{id}", scim_users.replace_user, methods=["PUT"], scope="scim"),
    Route("/scim/v2/Users/{id}", scim_users.patch_user, methods=["PATCH"], scope="scim"),
    Route("/scim/v2/Users/{id}", scim_users.delete_user, methods=["DELETE"], scope="scim"),
    Route(
        "/scim/v2/ServiceProviderConfig",
        discovery.service_provider_config,
        methods=["GET"],
        scope="scim",
    ),
    Route("/scim/v2/ResourceTypes", discovery.resource_types, methods=["GET"], scope="scim"),
    Route("/scim/v2/ResourceTypes/{id}", discovery.resource_type, methods=["GET"], scope="scim"),
    Route("/scim/v2/Schemas", discovery.schemas, methods=["GET"], scope="scim"),
    Route("/scim/v2/Schemas/{id}", discovery.schema, methods=["GET"], scope="scim"),
    Route("/scim/v2/Groups", scim_groups.list_groups, methods=["GET"], scope="scim"),
    Route("/scim/v2/Groups", scim_groups.create_group, methods=["POST"], scope="scim"),
    Route("/scim/v2/Groups/.search", scim_groups.search_groups, methods=["POST"],
          scope="scim"),
    Route("/scim/v2/Groups/{id}", scim_groups.get_group, methods=["GET"], scope="scim"),
    Route("/scim/v2/Groups/{id}", scim_groups.replace_group, methods=["PUT"], scope="scim"),
    Route("/scim/v2/Groups/{id}", scim_groups.patch_group, methods=["PATCH"], scope="scim"),
    Route("/scim/v2/Groups/{id}", scim_groups.delete_group, methods=["DELETE"], scope="scim"),
]
# fmt: on


class Service(Starlette):
    """Starlette's app, serving its routes through Dispatch alone.

    Starlette's own stack (server errors, exceptions, the router's per-route
    wrappers) is replaced by the one layer that does all of their work.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return Dispatch(self, self.state.settings)


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


def create_app(settings: Settings | None = None) -> Service:
    """The app for uvicorn's --factory; settings come from the environment by default."""
    if settings is None:
        settings = load_settings()
    configure_logging(settings)
    access_tokens = None
    if settings.jwt_issuer is not None and settings.jwt_audience is not None:
        access_tokens = AccessTokens(
            settings.jwt_issuer, settings.jwt_audience, settings.jwt_jwks_url
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics.forget_dead_workers()
        try:
            app.state.pool = await open_pool(settings)
        except CannotStart as exc:
            logger.error("%s", exc)  # the one line that says why; no traceback is needed
            raise
        app.state.db = Database(app.state.pool, settings.db_pool_timeout)
        replicas = None
        if settings.database_read_urls:
            replicas = await open_replicas(settings, app.state.db)
        app.state.replicas = replicas
        app.state.reads = Reads(app.state.db, replicas)
        app.state.creates = Creates(app.state.db)
        # What start-up made lives as long as the worker: moved out of the
        # collector's reach, it is not walked again by every full collection,
        # which under load were the lookups' slowest 1% (p99 12 ms -> 6 ms).
        gc.collect()
        gc.freeze()
        gauge_watch = asyncio.create_task(metrics.watch_gauges(app.state.pool))
        purge = asyncio.create_task(changes.keep_purging(app.state.db, settings.changes_retention))
        app.state.watch = Watch(app.state.db, settings)
        app.state.watch.start()
        if access_tokens is not None:
            # Fetched meanwhile: an issuer out of reach does not hold up the start.
            access_tokens.keys.start()
        lag_watch = None if replicas is None else asyncio.create_task(replicas.watch())
        try:
            yield
        finally:
            gauge_watch.cancel()
            purge.cancel()
            await asyncio.gather(purge, return_exceptions=True)
            await app.state.watch.stop()
            if replicas is not None:
                assert lag_watch is not None
                lag_watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lag_watch
                await replicas.close()
            await close_pool(app.state.pool)
            if access_tokens is not None:
                await access_tokens.keys.stop()
            metrics.forget_this_worker()

    app = Service(routes=routes, lifespan=lifespan)
    app.state.settings = settings
    app.state.access_tokens = access_tokens
    return app
