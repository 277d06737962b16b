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
from matplotlib.ticker import StrMethodFormatter

from bench.results import ScenarioResult, TargetCheck, comparisons

COLORS = {
    "service": "#2a9d8f",
    "service-auth": "#8ab17d",
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
    "GET /users/{email} req/s vs the floor": (
        "The floor is the same lookup with nothing else: no routing, no Request or Response "
        "objects, no request ID, metrics, log-level checks or token check. In the service's "
        "profile, as in the floor's, uvicorn's socket writes, the event loop and asyncpg come "
        "first; what the service adds is spread over small pieces, none above 2% of the "
        "samples: Route.matches, Request and Response construction, the request ID, the "
        "metrics tally. The large pieces are gone: Starlette's five layers around each "
        "request (0.43x to 0.60x the floor), uvicorn's access-line arguments (+9%), metrics "
        "written once a request (0.66x to 0.72x) and full garbage collections over the "
        "start-up heap (p99 12 to 6 ms). Going further means leaving Starlette's Request, "
        "Response and route matching, which the stack keeps."
    ),
    "GET /users/{email} req/s vs the tutorial": (
        "5x the tutorial asks the service to be about as fast as the floor, which does the "
        "same lookup with no framework at all: across this machine's runs the floor itself "
        "measured 4.4x to 5.3x the tutorial (Results). The line on the floor says what the "
        "service's features cost over it."
    ),
    "GET /users/{email} req/s vs the peer": (
        "Likewise 4x the peer is about the floor's own rate: the floor measured 3.7x to 4.3x "
        "the peer across this machine's runs."
    ),
    "POST /users req/s vs the tutorial": (
        "Met at 3.35x in the run of 2026-11-25 13:41 UTC. Since then each new user also "
        "goes into the trigram index that serves q= searches, about 30 GIN entries a row, "
        "which the tutorial's table does not have: measured side by side (python -m bench "
        "--apps service,floor --duration 5 --rounds 3, the code before the index and after "
        "it), POST /users went from 12,675 to 10,221 req/s. Searching by part of an email "
        "or name needs that index, and its defaults are the cheapest settings measured: "
        "two-row inserts from pgbench (8 clients, 15 s, 100,000 users) ran at 5,996 tps "
        "with them, 5,789 with a 64 MB pending list, 3,055 with fastupdate off, and 7,050 "
        "without the index."
    ),
    "Deep page: after= req/s vs the tutorial's offset=": (
        "The tutorial's offset= page has no ORDER BY: PostgreSQL skips rows in whatever order "
        "the heap gives them, cheap but not a page of any order. 15x its rate is about "
        "13,000 pages of 50 users a second, near the floor's rate for one user. In the "
        "service's profile on after= pages the worker waits much of the time for PostgreSQL, "
        "which runs a batch's index range scans one after another in one backend; of the "
        "busy time, building 50 User structs a page from asyncpg's records (to_pages, "
        "to_user) is the largest share, 11% of all samples, then asyncpg's decoding and the "
        "5 KB encode and write."
    ),
    "POST /users/bulk rows/s vs the COPY limit": (
        "The service decodes and validates the 10,000 users before its COPY, which the limit "
        "does not: msgspec takes about 10.5 ms a request, 9.5 ms of it the name and email "
        "patterns (Python's re, once per string), timed in-process on this payload. "
        "Validation stays on. The COPY is the limit's own cost; the check for emails "
        "repeated in the payload now runs only when the unique index refuses a load."
    ),
    "POST /users/lookup of 100 users p99": (
        "wrk keeps all 8 connections busy, so a lookup waits for the ones ahead of it: latency "
        "is about 8 over the rate. One lookup of 100 handles cost the worker 1.1 ms of CPU and "
        "PostgreSQL 0.8 ms (GET /users/{email}: 0.27 and 0.06 ms), measured with psutil over a "
        "wrk run on this machine while it was shared, and the two compete with wrk for its two "
        "cores. In py-spy's profile of the worker (250 Hz, 12 s, -c8) asyncpg's execute and "
        "decode of the 90 rows take 14%, checking the handles 7% (msgspec.convert per handle "
        "took 1.4 ms a request before it gave way to one compiled pattern), building the Users "
        "and their keys 6%, encoding and writing the 17 KB answer 12%; the statement itself, a "
        "BitmapOr of the two unique indexes, runs in 0.8 to 1.2 ms under EXPLAIN ANALYZE. From "
        "one connection, with no queue, the median was 2.3 ms."
    ),
}
UNEXPLAINED = "Not explained yet: the line, and the profile that shows it, are still to be written."


def limits(checks: Sequence[TargetCheck]) -> str:
    missed = [check.name for check in checks if check.met is False]
    if not missed:
        return ""
    lines = "\n".join(f"- **{name}.** {LIMITS.get(name, UNEXPLAINED)}" for name in missed)
    return f"\n### What limits the targets not met\n\n{lines}\n"


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
  request. **Service, 2 workers** is a third, with `WEB_CONCURRENCY=2`, whatever `--workers`
  says: a figure, not a target, for a machine whose two cores the database shares.
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
    heights.append(sum(check.score is not None for check in checks))
    figure = plt.figure(figsize=(15, 1.6 + 0.4 * sum(heights)))
    grid = figure.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=(3, 2))
    for row, (unit, group) in enumerate(zip(units, groups, strict=True)):
        rate_axis(figure.add_subplot(grid[row, 0]), unit, group)
        p99_axis(figure.add_subplot(grid[row, 1]), group)
    target_axis(figure.add_subplot(grid[-1, :]), checks)
    figure.suptitle("users service vs its floors and comparators: rates, p99s, and the targets")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
