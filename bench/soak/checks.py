"""The issue's three soak checks, and the failures that show the harness itself is broken."""

from __future__ import annotations

from collections.abc import Sequence

from bench.results import TargetCheck
from bench.soak.load import Window

RSS_GROWTH_LIMIT = 0.10
P99_DRIFT_LIMIT = 1.5


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def no_5xx(windows: Sequence[Window]) -> TargetCheck:
    status_5xx = sum(window.counts.status_5xx for window in windows)
    requests = sum(window.summary.requests for window in windows)
    return TargetCheck(
        name="5xx responses",
        goal="= 0",
        measured=f"{status_5xx:,} of {requests:,} requests",
        met=status_5xx == 0,
    )


def rss_growth(windows: Sequence[Window]) -> TargetCheck:
    first, last = windows[0].rss_end, windows[-1].rss_end
    growth = (last - first) / first
    peak = max(window.rss_peak for window in windows[1:])
    return TargetCheck(
        name="Worker RSS growth after the first window",
        goal=f"< {RSS_GROWTH_LIMIT:.0%}",
        measured=(
            f"{growth:+.1%} ({megabytes(first)} at the end of window 1,"
            f" {megabytes(last)} at the end; peak since {megabytes(peak)})"
        ),
        met=growth < RSS_GROWTH_LIMIT,
    )


def p99_drift(windows: Sequence[Window]) -> TargetCheck:
    first, last = windows[0].summary.p99_us / 1000, windows[-1].summary.p99_us / 1000
    ratio = last / first
    return TargetCheck(
        name="p99 of the last window vs the first",
        goal=f"<= {P99_DRIFT_LIMIT}x",
        measured=f"{ratio:.2f}x ({last:.2f} ms vs {first:.2f} ms)",
        met=ratio <= P99_DRIFT_LIMIT,
    )


def check_soak(windows: Sequence[Window]) -> list[TargetCheck]:
    return [no_5xx(windows), rss_growth(windows), p99_drift(windows)]


def harness_failures(windows: Sequence[Window]) -> list[str]:
    """What fails a smoke run: no requests, 5xx, or any other non-2xx.

    Every request names a seeded user or fresh ones, so a 404 or 409 means the script is wrong.
    """
    failures = []
    for window in windows:
        summary, counts = window.summary, window.counts
        if summary.requests == 0:
            failures.append(f"window {window.number}: no requests")
        if counts.status_5xx:
            failures.append(f"window {window.number}: {counts.status_5xx} 5xx")
        if summary.non_2xx > counts.status_5xx:
            failures.append(
                f"window {window.number}: {summary.non_2xx - counts.status_5xx} other non-2xx"
                f" ({counts.status_404} 404, {counts.status_409} 409)"
            )
    return failures
