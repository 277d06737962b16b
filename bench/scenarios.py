"""The scenarios: which request each app gets, and whether every answer should be 2xx."""

from __future__ import annotations

from typing import Literal

import msgspec

from bench.servers import AUTH_TOKEN, JWT_TOKEN

PAGE_LIMIT = "50"
MISS_RATIO = "0.1"
# Users named in one POST /users/lookup: a page of comments' authors, say.
LOOKUP_HANDLES = 100
# Callers of lookups at once. wrk keeps each connection busy, so a request's
# latency is about connections / rate: at 64, over 50 ms at any rate the
# machine reaches, which says nothing of the service. A few callers already
# keep the worker busy and let lookups arriving together share a query.
LOOKUP_CONNECTIONS = 8
# Not a server: the COPY limit is measured from this process (bench/copy_limit.py).
COPY = "copy"
# The service with the change feed's triggers off: what its writes cost without it.
FEED_OFF = "service, feed off"
# The ceiling answers GET /users/{email} only; the floor, every scenario but bulk,
# whose floor is the COPY limit.
APPS_WITH_ALL_ENDPOINTS = ("service", "tutorial", "peer")
FLOOR = "floor"
# Changes in a page of the feed scenario: its default limit.
CHANGES_LIMIT = "100"
# Placeholders in a variant's args, filled from the seeded database (bench.seed.feed_start).
FEED_XID = "{feed_xid}"
FEED_FIRST_SEQ = "{feed_first_seq}"


class Variant(msgspec.Struct, frozen=True, kw_only=True):
    label: str
    # A key of servers.APPS, or COPY.
    app: str
    # wrk runs a Lua script; bulk posts 10,000-user bodies from httpx (bench/bulk.py);
    # copy runs COPY from this process (bench/copy_limit.py).
    driver: Literal["wrk", "bulk", "copy"] = "wrk"
    script: str = ""
    args: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    # What one request answers for, in the scenario's unit: users per lookup.
    per_request: int = 1
    # wrk -c for this variant; None for the run's --connections.
    connections: int | None = None


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    title: str
    unit: str
    # Every request names an existing user or a fresh one, so anything but 2xx is a failure.
    hits_only: bool
    variants: tuple[Variant, ...]
    # The label of the service's variant, which every other variant is compared with.
    subject: str = "service"


def wrk_variants(apps: tuple[str, ...], script: str, *args: str) -> tuple[Variant, ...]:
    return tuple(Variant(label=app, app=app, script=script, args=args) for app in apps)


def page_variant(app: str, mode: str) -> Variant:
    return Variant(
        label=f"{app} {mode}=", app=app, script="list_users.lua", args=(mode, PAGE_LIMIT)
    )


SCENARIOS = (
    Scenario(
        key="get",
        title="GET /users/{email}",
        unit="req/s",
        hits_only=True,
        variants=(
            *wrk_variants(("service",), "get_user.lua"),
            Variant(
                label="service, auth on",
                app="service-auth",
                script="get_user.lua",
                headers=(f"Authorization: Bearer {AUTH_TOKEN}",),
            ),
            Variant(
                label="service, JWT",
                app="service-jwt",
                script="get_user.lua",
                headers=(f"Authorization: Bearer {JWT_TOKEN}",),
            ),
            Variant(label="service, 2 workers", app="service-2", script="get_user.lua"),
            *wrk_variants(("tutorial", "peer", FLOOR, "ceiling"), "get_user.lua"),
        ),
    ),
    Scenario(
        key="get_miss",
        title="GET /users/{email}, 10% misses",
        unit="req/s",
        hits_only=False,
        variants=wrk_variants(("service", "tutorial"), "get_user.lua", MISS_RATIO),
    ),
    Scenario(
        key="first_page",
        title="GET /users first page",
        unit="req/s",
        hits_only=True,
        variants=wrk_variants(
            (*APPS_WITH_ALL_ENDPOINTS, FLOOR), "list_users.lua", "first", PAGE_LIMIT
        ),
    ),
    Scenario(
        key="deep_page",
        title="GET /users deep page (back half)",
        unit="req/s",
        hits_only=True,
        subject="service after=",
        variants=(
            page_variant("service", "after"),
            page_variant("tutorial", "offset"),
            page_variant("peer", "after"),
            page_variant("service", "offset"),
            page_variant(FLOOR, "after"),
        ),
    ),
    Scenario(
        key="lookup",
        title=f"{LOOKUP_HANDLES} users, 10% missing: one POST /users/lookup or a GET each",
        unit="users/s",
        # The GETs of missing users are 404s.
        hits_only=False,
        subject="service lookup",
        variants=(
            *(
                Variant(
                    label=f"{app} lookup",
                    app=app,
                    script="lookup_users.lua",
                    args=(str(LOOKUP_HANDLES), MISS_RATIO),
                    per_request=LOOKUP_HANDLES,
                    connections=LOOKUP_CONNECTIONS,
                )
                for app in ("service", FLOOR)
            ),
            Variant(label="service GETs", app="service", script="get_user.lua", args=(MISS_RATIO,)),
        ),
    ),
    Scenario(
        key="search",
        title="GET /users?q= (four digits, ~0.3% of users match)",
        unit="req/s",
        hits_only=True,
        variants=wrk_variants(("service", FLOOR), "list_users.lua", "q", PAGE_LIMIT),
    ),
    Scenario(
        key="feed_page",
        title=f"GET /users/changes, {CHANGES_LIMIT} changes a page",
        unit="req/s",
        hits_only=True,
        variants=wrk_variants(
            ("service", FLOOR), "changes_page.lua", FEED_XID, FEED_FIRST_SEQ, CHANGES_LIMIT
        ),
    ),
    Scenario(
        key="create",
        title="POST /users",
        unit="req/s",
        hits_only=True,
        variants=(
            *wrk_variants((*APPS_WITH_ALL_ENDPOINTS, FLOOR), "create_user.lua"),
            Variant(label=FEED_OFF, app="service-nofeed", script="create_user.lua"),
        ),
    ),
    Scenario(
        key="bulk",
        title="POST /users/bulk, 10,000 users each",
        unit="rows/s",
        hits_only=True,
        variants=(
            *(Variant(label=app, app=app, driver="bulk") for app in APPS_WITH_ALL_ENDPOINTS),
            Variant(label=FEED_OFF, app="service-nofeed", driver="bulk"),
            Variant(label="COPY limit", app=COPY, driver="copy"),
        ),
    ),
)
