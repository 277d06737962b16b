"""The soak's figures as terminal tables and as SOAK.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.report import TARGET_COLUMNS, bullet_list, markdown_table, target_rows, text_table
from bench.results import TargetCheck
from bench.soak.checks import megabytes
from bench.soak.load import BULK_SIZE, MIX, PAGE_LIMIT, Window

WINDOW_COLUMNS = (
    "Window",
    "Seconds",
    "Requests",
    "Rate",
    "p50",
    "p99",
    "Max",
    "5xx",
    "404",
    "409",
    "Other non-2xx",
    "Socket errors",
    "RSS at end",
    "Peak RSS",
)
KIND_COLUMNS = ("Kind", "Target share", "Requests started", "Share")
KIND_TITLES = {
    "get": "GET /users/{email}",
    "list": "GET /users",
    "create": "POST /users",
    "bulk": f"POST /users/bulk ({BULK_SIZE} users)",
}


def milliseconds(microseconds: int) -> str:
    return f"{microseconds / 1000:.2f} ms"


def window_rows(windows: Sequence[Window]) -> list[tuple[str, ...]]:
    return [
        (
            str(window.number),
            f"{window.start_s:.0f}-{window.end_s:.0f}",
            f"{window.summary.requests:,}",
            f"{window.summary.rps:,.0f} req/s",
            milliseconds(window.summary.p50_us),
            milliseconds(window.summary.p99_us),
            milliseconds(window.summary.max_us),
            str(window.counts.status_5xx),
            str(window.counts.status_404),
            str(window.counts.status_409),
            str(window.other_non_2xx),
            str(window.summary.socket_errors),
            megabytes(window.rss_end),
            megabytes(window.rss_peak),
        )
        for window in windows
    ]


def kind_rows(windows: Sequence[Window]) -> list[tuple[str, ...]]:
    started = {
        "get": sum(window.counts.sent_get for window in windows),
        "list": sum(window.counts.sent_list for window in windows),
        "create": sum(window.counts.sent_create for window in windows),
        "bulk": sum(window.counts.sent_bulk for window in windows),
    }
    total = sum(started.values()) or 1
    return [
        (KIND_TITLES[kind], f"{MIX[kind]}%", f"{started[kind]:,}", f"{started[kind] / total:.2%}")
        for kind in MIX
    ]


def print_report(windows: Sequence[Window], checks: Sequence[TargetCheck]) -> None:
    print()
    print(text_table(WINDOW_COLUMNS, window_rows(windows)))
    print()
    print(text_table(KIND_COLUMNS, kind_rows(windows)))
    print()
    print(text_table(TARGET_COLUMNS, target_rows(checks)))


def write_markdown(
    path: Path,
    *,
    command: str,
    windows: Sequence[Window],
    checks: Sequence[TargetCheck],
    rss_before: int,
    settings: Mapping[str, str],
    machine: Mapping[str, str],
    versions: Mapping[str, str],
    smoke: bool,
) -> None:
    warning = (
        "\n**Smoke run: it only shows that the harness works and that nothing answers 5xx;"
        " windows this short say nothing about drift.**\n"
        if smoke
        else ""
    )
    first, last = windows[0], windows[-1]
    text = f"""# Soak results

`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.
{warning}
## Checks

{markdown_table(TARGET_COLUMNS, target_rows(checks))}

The first window is window 1 ({first.start_s:.0f}-{first.end_s:.0f} s) and the last is
window {last.number} ({last.start_s:.0f}-{last.end_s:.0f} s). The worker's RSS was
{megabytes(rss_before)} before the load started.

## Windows

{markdown_table(WINDOW_COLUMNS, window_rows(windows))}

## Requests by kind

{markdown_table(KIND_COLUMNS, kind_rows(windows))}

## Settings

{bullet_list(settings)}

## Machine

{bullet_list(machine)}

## Versions

{bullet_list(versions)}

## Method

- One service process (`WEB_CONCURRENCY=1`, uvicorn with the Procfile's flags) runs for the
  whole soak on one PostgreSQL, seeded by COPY with `user000000@example.com`, ... and analyzed.
- The load is consecutive wrk runs of equal length, the windows, back to back against that
  same process: wrk reconnects between windows, a gap of a few milliseconds. Each window's
  rate, p50, p99 and max are wrk's own for that window, so "p99 of the first 30 s" is window
  1's p99 and "p99 of the last 30 s" is the last window's.
- `bench/soak.lua` picks each request at random with the weights under Requests by kind:
  a random seeded email for `GET /users/{{email}}`; for `GET /users` half first pages and half
  `after=` a random seeded email, {PAGE_LIMIT} users a page; for `POST /users` a
  fresh email made of the window's nonce, wrk's thread id and a counter; for
  `POST /users/bulk` {BULK_SIZE} fresh emails made the same way. Every request names a seeded
  user or fresh ones, so anything but 2xx is a failure; the script counts 5xx, 404 and 409
  apart from the other non-2xx.
- Latency is over all kinds together: wrk keeps one histogram per run, and a response does
  not say which kind of request it answers. wrk keeps all its connections busy (a closed
  loop), so latency includes the wait for the single worker under full load.
- Window 1 includes the service's first requests under load (connections opening, statements
  being prepared), as the issue's "first 30 s" does; nothing is warmed up beforehand.
- A thread reads the worker's resident memory (RSS, psutil) every second; it is read again
  as each window ends. The RSS check compares the end of window 1 with the end of the run, so
  start-up and the first caches filling do not count; peak RSS is the largest sample.
- Every create adds rows, so the table grows during the soak; the rows before and after are
  under Settings.
- Reproduce with `pip install -r requirements-dev.txt -r bench/requirements.txt`, wrk, then
  `python -m bench.soak` from the repository root.
"""
    path.write_text(text)
