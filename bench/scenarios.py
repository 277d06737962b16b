"""The scenarios: which request each app gets, and whether every answer should be 2xx."""

from __future__ import annotations

import msgspec

PAGE_LIMIT = "50"
MISS_RATIO = "0.1"


class Variant(msgspec.Struct, frozen=True, kw_only=True):
    label: str
    app: str
    # None drives POST /users/bulk from Python instead of wrk.
    script: str | None
    args: tuple[str, ...] = ()


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    title: str
    unit: str
    # Every request names an existing user or a fresh one, so anything but 2xx is a failure.
    hits_only: bool
    variants: tuple[Variant, ...]


def wrk_variants(script: str, *args: str) -> tuple[Variant, ...]:
    return (
        Variant(label="service", app="service", script=script, args=args),
        Variant(label="baseline", app="baseline", script=script, args=args),
    )


SCENARIOS = (
    Scenario(
        key="get",
        title="GET /users/{email}",
        unit="req/s",
        hits_only=True,
        variants=(
            *wrk_variants("get_user.lua"),
            Variant(label="ceiling", app="ceiling", script="get_user.lua"),
        ),
    ),
    Scenario(
        key="get_miss",
        title="GET /users/{email}, 10% misses",
        unit="req/s",
        hits_only=False,
        variants=wrk_variants("get_user.lua", MISS_RATIO),
    ),
    Scenario(
        key="first_page",
        title="GET /users first page",
        unit="req/s",
        hits_only=True,
        variants=wrk_variants("list_users.lua", "first", PAGE_LIMIT),
    ),
    Scenario(
        key="deep_page",
        title="GET /users deep page (back half)",
        unit="req/s",
        hits_only=True,
        variants=(
            Variant(
                label="service after=",
                app="service",
                script="list_users.lua",
                args=("after", PAGE_LIMIT),
            ),
            Variant(
                label="baseline offset=",
                app="baseline",
                script="list_users.lua",
                args=("offset", PAGE_LIMIT),
            ),
            Variant(
                label="service offset=",
                app="service",
                script="list_users.lua",
                args=("offset", PAGE_LIMIT),
            ),
        ),
    ),
    Scenario(
        key="create",
        title="POST /users",
        unit="req/s",
        hits_only=True,
        variants=wrk_variants("create_user.lua"),
    ),
    Scenario(
        key="bulk",
        title="POST /users/bulk, 10,000 rows each",
        unit="rows/s",
        hits_only=True,
        variants=(
            Variant(label="service", app="service", script=None),
            Variant(label="baseline", app="baseline", script=None),
        ),
    ),
)
