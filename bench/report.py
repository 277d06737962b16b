"""The results as a terminal table, bench/RESULTS.md and a bar chart in bench/results.png."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

# No display on servers or in CI; must be chosen before pyplot is imported.
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import NullFormatter, StrMethodFormatter

from bench.results import ScenarioResult, TargetCheck, comparisons

COLORS = {
    "service": "#2a9d8f",
    "service-auth": "#8ab17d",
    "service-jwt": "#a7c957",
    "service-nofeed": "#b5c99a",
    "service-2": "#52796f",
    "tutorial": "#e76f51",
    "peer": "#f4a261",
    "floor": "#264653",
    "ceiling": "#8d99ae",
    "copy": "#6d597a",
}
RESULT_COLUMNS = ("Scenario", "Variant", "Median rate", "Median p99", "Non-2xx", "Socket errors")
TARGET_COLUMNS = ("Target", "Goal", "Measured", "Met")
COMPARISON_COLUMNS = ("Scenario", "Service vs", "Ratio of median rates")
MET_COLORS = {True: "#2a9d8f", False: "#e76f51"}
# Far-exceeded targets would squash the rest.
SCORE_AXIS_MAX = 2.0


def verdict(met: bool | None) -> str:
    return {True: "met", False: "not met", None: "n/a"}[met]


def result_rows(results: Sequence[ScenarioResult]) -> list[tuple[str, ...]]:
    return [
        (
            result.scenario.title,
            variant.label,
            f"{variant.rate:,.0f} {result.scenario.unit}",
            f"{variant.p99_ms:.2f} ms",
            str(variant.non_2xx),
            str(variant.socket_errors),
        )
        for result in results
        for variant in result.variants
    ]


def target_rows(checks: Sequence[TargetCheck]) -> list[tuple[str, ...]]:
    return [(check.name, check.goal, check.measured, verdict(check.met)) for check in checks]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, [("-" * width) for width in widths], *rows]
    ]
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def print_report(results: Sequence[ScenarioResult], checks: Sequence[TargetCheck]) -> None:
    print()
    print(text_table(RESULT_COLUMNS, result_rows(results)))
    print()
    print(text_table(COMPARISON_COLUMNS, comparison_rows(results)))
    print()
    print(text_table(TARGET_COLUMNS, target_rows(checks)))


def bullet_list(items: Mapping[str, str]) -> str:
    return "\n".join(f"- {name}: {value}" for name, value in items.items())


# What holds back each target not met, with the profile that shows it, keyed by target
# name. Profiles: py-spy record at 500 Hz for 12 s of the worker under wrk -t1 -c64 on
# 100,000 users; the commands and before/after figures are in the commits that acted on them.
LIMITS: dict[str, str] = {
    "GET /users/{email}: rate vs its floor": (
        "The floor looks the user up through the same coalescing and query, and encodes the "
        "same User, with nothing around it. In py-spy's profile of the service (200 Hz, 10 s, "
        "wrk -c64, 2026-12-05), uvicorn's protocol and socket writes, the event loop and "
        "asyncpg come first, as in the floor's; what the service adds is spread over pieces "
        "of 1 to 2% each: Starlette's route match and Request, the Response and its headers, "
        "the ETag, the request ID, the metrics tally. The email check was the one piece above "
        "that, 4% (msgspec.convert hashing the Annotated type each call), and is now one "
        "compiled pattern. The large pieces went earlier: Starlette's five layers around each "
        "request (0.43x to 0.60x the floor), uvicorn's access-line arguments (+9%), metrics "
        "written once a request (0.66x to 0.72x), full collections over the start-up heap "
        "(p99 12 to 6 ms). The rest is Starlette's Request, Response and route matching, "
        "which the stack keeps."
    ),
    "First page: rate vs its floor": (
        "A turn's callers of the first page share its one query in both, so a request's own "
        "work is mostly encoding and sending 50 users, which both do (json_response, 7.7% of "
        "the service's samples in py-spy, 200 Hz, 10 s, wrk -c64). What the service adds: "
        "reading the query through Starlette's QueryParams and checking every parameter "
        "(5%), the Link header (6.7%, now a plain string for plain emails, which took it "
        "to about 1%), Vary, the Response object (2.6%), the request ID and metrics."
    ),
    "POST /users: rate vs its floor": (
        "Both make the same coalesced INSERT. In py-spy's profile of the service (200 Hz, "
        "10 s, wrk -c64), reading the body took 17.6% of the worker against the floor's "
        "bare receive: the framing checks (Content-Type, charset, Content-Encoding, "
        "HTTP/1.0 length), the size bound, and above all the body's deadline (asyncio.timeout "
        "around the read, 5.5%), which keeps a client from holding a request open; then the "
        "Idempotency-Key lookup (2.8%), the route match (3.2%), and Location and ETag on the "
        "201 (4.5%). Each is a feature the floor lacks and the service keeps."
    ),
    "POST /users: p99 vs the tutorial's": (
        "The tail is the statement's, not the framework's: the floor, which makes the same "
        "coalesced INSERT with no framework, has about as long a p99 in the same run "
        "(Results). Each create writes its row, about 30 trigram entries for q= searches, and "
        "its change for the feed, where the tutorial's table has one plain index; the service "
        "with the feed off has the shorter tail in the same table (Results). Tried and not "
        "kept, side by side with wrk -c64 and -c8 on 100,000 users: the trigger without its "
        "NOTIFY (p99 51.4 against 45.8 ms with it: no gain); at most 2 create statements "
        "under way, the rest waiting to go out together (p99 47 against 55 ms and 39 "
        "against 47 in two runs, 62 against 55 in a third, rates within noise). The search "
        "index's other forms cost creates no less while meeting the search targets "
        "(bench/TRIGRAM.md)."
    ),
    "POST /users: req/s with the change feed vs without": (
        "python -m bench.feed measured the same ratio at 1.03x (bench/FEED.md), on its own "
        "database; here the service and the service with the feed off take turns on a table "
        "that both grow by tens of thousands of users a round, and the rounds swing by 15%."
    ),
    "POST /users/lookup of 100 users p99": (
        "wrk keeps all 8 connections busy, so a lookup waits for the ones ahead of it: latency "
        "is about 8 over the rate. One lookup of 100 handles cost the worker 1.1 ms of CPU and "
        "PostgreSQL 0.8 ms (GET /users/{email}: 0.27 and 0.06 ms), measured with psutil over a "
        "wrk run on this machine while it was shared, and the two compete with wrk for its two "
        "cores. In py-spy's profile of the worker (250 Hz, 12 s, -c8) asyncpg's execute and "
        "decode of the 90 rows take 14%, checking the handles 7%, building the Users and their "
        "keys 6%, encoding and writing the 17 KB answer 12%; the statement itself, a BitmapOr "
        "of the two unique indexes, runs in 0.8 to 1.2 ms under EXPLAIN ANALYZE. The floor, "
        "doing the same with no framework, has the longer p99 in the same run (Results). From "
        "one connection, with no queue, the median was 2.3 ms."
    ),
    "POST /users/bulk: rows/s vs the COPY limit": (
        "The service decodes and validates the 10,000 users before its COPY, which the limit "
        "does not: msgspec takes about 10.5 ms a request, 9.5 ms of it the name and email "
        "patterns (Python's re, once per string), timed in-process on this payload, and the "
        "700 KB body crosses HTTP from a client on the same two cores."
    ),
    "GET /users/changes page: p99 vs the floor's": (
        "Both read each page with a query of its own (a page without wait= sees every write "
        "answered before it asked, so it shares no read), and both tails are the worker's "
        "queue: in py-spy's profile of the service (200 Hz, 10 s, wrk -c64) building the 100 "
        "changes of a page takes a quarter of the worker (their rows 10.5%, their cursors "
        "8.1%), work the floor does alike, and asyncpg's execute 13%. The service adds the "
        "parameter checks, Last-Event-ID and Accept, the Response and the request's metrics, "
        "each 1 to 4%, and its tail follows its lower rate."
    ),
    "Deep after= page: req/s vs the peer's keyset page": (
        "The floor, the same pages with no framework, measures about 1.5x the peer itself: the "
        "pages are PostgreSQL's index range scans and 50 users' encoding, which the peer does "
        "too. A loop turn's pages now go out as queries of at most 32 (service/lookups.py), "
        "which run side by side: 6,089 against 4,650 req/s at wrk -c64, with no change at "
        "-c1 or -c8."
    ),
}
UNEXPLAINED = "Not explained yet: the line, and the profile that shows it, are still to be written."


def limits(checks: Sequence[TargetCheck]) -> str:
    missed = [check.name for check in checks if check.met is False]
    if not missed:
        return ""
    lines = "\n".join(f"- **{name}.** {LIMITS.get(name, UNEXPLAINED)}" for name in missed)
    return f"\n### What limits the targets not met\n\n{lines}\n"


CHOICES = """\
- **Coalescing, at 1, 8 and 64 connections.** A loop turn's lookups go out as one query, its
  creates as one statement, its first pages as one shared page: at -c1 each is its own
  request's, and the tail at -c64 is the statement's, as the floor's shows. Its `after=` pages
  went out as one LATERAL query, whose index range scans PostgreSQL runs one after another in
  one backend; they now go out as queries of at most 32 pages, run side by side on the pool.
  Deep pages of 50, wrk -c64, 6 interleaved rounds of 5 s on 100,000 users (PostgreSQL 15):
  one query a turn 4,650 req/s, p99 22.2 ms; 32 a query 6,089, 20.3 ms; 24 a query 5,323,
  23.9 ms; 16 and 8 lower again. At -c1 (p99 0.6 ms) and -c8 (3.8 to 4.0 ms), every size
  within noise. Creates with at most 2 statements under way, the rest gathering behind them,
  did not hold up over three runs (Targets, POST /users p99).
- **The write cost of search.** `python -m bench.trigram` (`bench/TRIGRAM.md`, a million
  users, 8 connections creating 2 users a statement, medians of 3 interleaved rounds) compared
  schema.sql's GIN (fastupdate on, 4 MB pending list) with GIN without fastupdate (0.59x its
  create rate), GIN with a 64 MB pending list (1.30x), GiST with 12- and 64-byte signatures
  (1.00x, 1.01x), GIN on the email alone (1.03x) and no index (1.19x). Only schema.sql's GIN
  kept every search of `bench/SEARCH.md` within its 25 ms p99: GiST took 100 to 150 ms on rare
  fragments, the 64 MB pending list 89 ms on one (and a search reads the whole pending list,
  which grows to 64 MB between vacuums), and the email alone cannot find names. It stays."""


def choices(results: Sequence[ScenarioResult]) -> str:
    """CHOICES, and the run's lookup rate with one worker and with two."""
    get = next((result for result in results if result.scenario.key == "get"), None)
    one = None if get is None else get.find("service")
    two = None if get is None else get.find("service, 2 workers")
    if one is None or two is None:
        return CHOICES
    return CHOICES + (
        f"\n- **Workers.** `GET /users/{{email}}` with `WEB_CONCURRENCY=1`: {one.rate:,.0f} req/s,"
        f" p99 {one.p99_ms:.2f} ms; with 2: {two.rate:,.0f} req/s, p99 {two.p99_ms:.2f} ms"
        f" ({two.rate / one.rate:.2f}x), on two cores that PostgreSQL and wrk share. A figure,"
        " not a target: `docs/DEPLOY.md` says what to expect on a bigger machine."
    )


def comparison_rows(results: Sequence[ScenarioResult]) -> list[tuple[str, ...]]:
    return [
        (comparison.scenario, comparison.versus, f"{comparison.ratio:.2f}x")
        for comparison in comparisons(results)
    ]


def write_markdown(
    path: Path,
    *,
    command: str,
    results: Sequence[ScenarioResult],
    checks: Sequence[TargetCheck],
    settings: Mapping[str, str],
    machine: Mapping[str, str],
    versions: Mapping[str, str],
    smoke: bool,
) -> None:
    warning = (
        "\n**Smoke run: it only shows that the harness works; the numbers mean nothing.**\n"
        if smoke
        else ""
    )
    text = f"""# Benchmark results

`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.
Each target and each comparison is a ratio of medians from this one run.
{warning}
## Targets

{markdown_table(TARGET_COLUMNS, target_rows(checks))}
{limits(checks)}
## Choices measured

{choices(results)}

## Comparisons

{markdown_table(COMPARISON_COLUMNS, comparison_rows(results))}

## Results

{markdown_table(RESULT_COLUMNS, result_rows(results))}

![Median rates per scenario, and each target as measured over its goal](results.png)

## Settings

{bullet_list(settings)}

## Machine

{bullet_list(machine)}

## Versions

{bullet_list(versions)}

## Method

{METHOD}"""
    path.write_text(text)


METHOD = """\
- **The service** (`python -m service`'s app) runs as deployed, with every feature on: request
  IDs, metrics, error logging, the guarded HTTP protocol and validation. **Service, auth on** is
  a second process of it with `API_TOKENS` set, and wrk sends `Authorization: Bearer` on every
  request. **Service, JWT** is a third, with `JWT_ISSUER` and `JWT_AUDIENCE` naming a stand-in
  identity provider that the bench serves (`bench/issuer.py`), and wrk sends one RS256 access
  token of its on every request. **Service, 2 workers** is a fourth, with `WEB_CONCURRENCY=2`,
  whatever `--workers` says: a figure, not a target, for a machine whose two cores the database
  shares.
- **The tutorial** (`bench/tutorial/`) is the design the service replaces, exactly: a FastAPI
  app with one `APIRouter`, a pydantic `User(name, email)`, a pool from
  `asyncpg.create_pool(DATABASE_URL)` with its defaults and every query inside
  `async with pool.acquire() as connection`; `fetchrow` by email, `LIMIT $1 OFFSET $2` with
  no `ORDER BY` (`limit` 10 and `offset` 0 by default), `execute` and `executemany` of one
  `INSERT`; no `response_model`, no return annotations, no `Depends`. Its table is
  `users(name text not null, email text not null)` plus one plain index on `email`: the only
  change from the tutorial, without which every lookup scans the table.
- **The peer** (`bench/peer.py`) is what a speed-minded user would pick instead: Litestar with
  msgspec Structs and asyncpg, written as Litestar's documentation shows (handlers taking
  `State`, a pool from `asyncpg.create_pool(DATABASE_URL)` with its defaults opened in a
  lifespan, one query per request), serving the same four endpoints over the service's schema:
  lookups by `lower(email)`, pages in email order by `offset=` or `after=`, 404 and 409.
- **The floor** (`bench/floor.py`) is each scenario's work with no framework: a bare ASGI
  callable over the service's own pool, that calls the service's own query functions through
  its own coalescing (`service.lookups`: a loop turn's lookups in one query, its `after=` pages
  in one, its creates in one statement) and msgspec-encodes the same Structs. It picks the work
  by comparing the path, not through a router, makes no Request or Response objects, and has
  none of the service's features: no auth, ETags, Link headers, idempotency, metrics, request
  IDs, logs or problem details. It serves every scenario but bulk, whose floor is the COPY
  limit, on the service's database.
- **The ceiling** (`bench/ceiling.py`) is a bare ASGI callable answering every request with one
  constant 45-byte JSON body: what uvicorn and wrk cost with no work at all.
- **The COPY limit** (`bench/copy_limit.py`) is `copy_records_to_table` of 10,000 fresh
  prepared `(name, email)` tuples, from the benchmark's own process (on uvloop), into the
  service's own `users` table, taking turns with the service's bulk loads: the same table at
  the same size, with the same indexes, constraints and triggers. Only the COPY is timed, at
  least 3 times a round.
- Each comparator has its own database on the same PostgreSQL server, created afresh for the
  run, so that the tutorial's table and the service's can both be `users`: `bench_service`
  (the service, auth on or off, the floor and the COPY limit), `bench_tutorial` and
  `bench_peer`. The service's schema is applied by `python -m service migrate`. All are filled
  by COPY with the same users (`user000000@example.com`, ...) and analyzed.
- Every server runs under uvicorn with the Procfile's flags (`uvicorn_args` in
  `service/__main__.py`, the guarded protocol included) and the same `WEB_CONCURRENCY`. All stay
  up for the whole run, but only one is under load at a time: on two cores, wrk, the server and
  PostgreSQL already share the CPU, and an idle uvicorn uses none.
- Every scenario runs its variants interleaved, A B C A B C, after one unrecorded warm-up run of
  each (its length is under Settings). The tables report the median rate and the median p99 of
  the rounds, and the sums of non-2xx responses and socket errors.
- wrk (one thread) runs the Lua scripts in `bench/`: random seeded emails for
  `GET /users/{email}` (and `missing...` emails for the 10% misses), a random depth in the back
  half for deep pages (`after=` the email at that depth, or `offset=` that depth), four random
  digits for `q=` searches (about 0.3% of the seeded users hold them), a page of 100 changes
  after a random change of the seeding's for the feed, and fresh emails per run, thread and
  request for `POST /users`. The request timeout is 10 s.
- `POST /users/bulk` is driven from Python with httpx, since wrk is awkward with 10,000-user
  bodies: sequential requests of 10,000 fresh users for the duration of a round. A round's
  rows/s is 10,000 over its median request time, as the COPY limit's is over its median COPY.
- The service worker's resident memory (RSS) is read with psutil after the last scenario.
- Reproduce with `pip install -r requirements-dev.txt -r bench/requirements.txt`, wrk (Debian
  `apt-get install wrk`, Homebrew `brew install wrk`), then `python -m bench` from the
  repository root.
"""


def variant_labels(group: Sequence[ScenarioResult]) -> list[str]:
    return [f"{result.scenario.title}: {v.label}" for result in group for v in result.variants]


def rate_axis(axis: Axes, unit: str, group: Sequence[ScenarioResult]) -> None:
    values = [variant.rate for result in group for variant in result.variants]
    colors = [COLORS[variant.app] for result in group for variant in result.variants]
    bars = axis.barh(variant_labels(group), values, color=colors)
    axis.bar_label(bars, labels=[f"{value:,.0f}" for value in values], padding=3, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel(f"median {unit}")
    axis.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axis.margins(x=0.15)
    axis.tick_params(axis="y", labelsize=8)


def p99_axis(axis: Axes, group: Sequence[ScenarioResult]) -> None:
    """The same variants' median p99, on a log scale: tails differ by orders of magnitude."""
    values = [variant.p99_ms for result in group for variant in result.variants]
    colors = [COLORS[variant.app] for result in group for variant in result.variants]
    bars = axis.barh(variant_labels(group), values, color=colors)
    axis.bar_label(bars, labels=[f"{value:.1f}" for value in values], padding=3, fontsize=8)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel("median p99, ms (log)")
    axis.margins(x=0.15)
    axis.tick_params(axis="y", labelleft=False)


def target_axis(axis: Axes, checks: Sequence[TargetCheck]) -> None:
    """Each target's measure over its goal: 1 or more is met."""
    shown = [check for check in checks if check.score is not None]
    scores = [min(check.score or 0.0, SCORE_AXIS_MAX) for check in shown]
    colors = [MET_COLORS[check.met is True] for check in shown]
    bars = axis.barh([f"{check.name} ({check.goal})" for check in shown], scores, color=colors)
    axis.bar_label(bars, labels=[check.measured for check in shown], padding=3, fontsize=8)
    axis.axvline(1.0, color="black", linewidth=1)
    axis.invert_yaxis()
    axis.set_xlim(0, SCORE_AXIS_MAX * 1.6)
    axis.set_title("Targets", fontsize=10)
    axis.set_xlabel("measured / goal (1 = the goal; bars stop at 2)")
    axis.tick_params(axis="y", labelsize=8)


def write_chart(
    path: Path, results: Sequence[ScenarioResult], checks: Sequence[TargetCheck]
) -> None:
    """Horizontal bars: median rates (req/s, users/s and rows/s on their own axes) beside the
    same variants' p99, then the targets."""
    units = list(dict.fromkeys(result.scenario.unit for result in results))
    groups = [[result for result in results if result.scenario.unit == unit] for unit in units]
    heights = [sum(len(result.variants) for result in group) for group in groups]
    # A run of comparators alone measures no target: no row for them.
    targets = sum(check.score is not None for check in checks)
    if targets:
        heights.append(targets)
    figure = plt.figure(figsize=(15, 1.6 + 0.4 * sum(heights)))
    grid = figure.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=(3, 2))
    for row, (unit, group) in enumerate(zip(units, groups, strict=True)):
        rate_axis(figure.add_subplot(grid[row, 0]), unit, group)
        p99_axis(figure.add_subplot(grid[row, 1]), group)
    if targets:
        target_axis(figure.add_subplot(grid[-1, :]), checks)
    figure.suptitle("users service vs its floors and comparators: rates, p99s, and the targets")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
