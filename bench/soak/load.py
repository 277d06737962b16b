"""The soak's load: wrk windows back to back on one service, its worker's RSS sampled meanwhile."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
import psutil

from bench import servers
from bench.wrk import WrkSummary, parse_summary, summary_line, wrk_output

SCRIPT = "soak.lua"
SOAK_PREFIX = "SOAK_SUMMARY "
# Percent of requests of each kind, as the issue gives them; soak.lua takes them in this order.
MIX = {"get": 80, "list": 10, "create": 9, "bulk": 1}
BULK_SIZE = 100
PAGE_LIMIT = 50
SAMPLE_INTERVAL = 1.0


class SoakCounts(msgspec.Struct, frozen=True, kw_only=True):
    """What soak.lua counts on top of the summary: failures by status, requests by kind."""

    status_5xx: int
    status_404: int
    status_409: int
    sent_get: int
    sent_list: int
    sent_create: int
    sent_bulk: int


counts_decoder = msgspec.json.Decoder(SoakCounts)


class Window(msgspec.Struct, frozen=True, kw_only=True):
    number: int
    start_s: float
    end_s: float
    summary: WrkSummary
    counts: SoakCounts
    rss_end: int
    # The largest of the per-second samples taken during the window, and rss_end.
    rss_peak: int

    @property
    def other_non_2xx(self) -> int:
        counts = self.counts
        return self.summary.non_2xx - counts.status_5xx - counts.status_404 - counts.status_409


class RssSampler:
    """Reads a server's worker RSS every interval in a thread, until stopped or the server exits."""

    def __init__(self, server: servers.Server, interval: float = SAMPLE_INTERVAL) -> None:
        self._server = server
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self.samples: list[tuple[float, int]] = []

    def _sample(self) -> None:
        while True:
            try:
                rss = servers.worker_rss(self._server)
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), rss))
            if self._stopped.wait(self._interval):
                return

    def peak(self, start: float, end: float) -> int:
        return max((rss for at, rss in list(self.samples) if start <= at <= end), default=0)

    @contextmanager
    def running(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stopped.set()
            self._thread.join()


def window_plan(duration: int, longest: int) -> tuple[int, int]:
    """(windows, seconds each): windows of at most longest seconds, and always at least two."""
    seconds = min(longest, duration // 2)
    return duration // seconds, seconds


def script_args(users: int, nonce: str) -> tuple[str, ...]:
    return (str(users), nonce, *map(str, MIX.values()), str(BULK_SIZE), str(PAGE_LIMIT))


def run_window(
    server: servers.Server, *, users: int, seconds: int, connections: int
) -> tuple[WrkSummary, SoakCounts]:
    # A fresh nonce per window keeps the created emails unique across windows.
    output = wrk_output(
        server.url,
        SCRIPT,
        script_args(users, secrets.token_hex(4)),
        duration=seconds,
        connections=connections,
    )
    return parse_summary(output), counts_decoder.decode(summary_line(output, SOAK_PREFIX))


def run_windows(
    server: servers.Server, *, users: int, windows: int, seconds: int, connections: int
) -> list[Window]:
    """The windows back to back, each printed as it ends; RSS is sampled all along."""
    results: list[Window] = []
    with RssSampler(server).running() as sampler:
        began = time.monotonic()
        for number in range(1, windows + 1):
            start = time.monotonic()
            summary, counts = run_window(
                server, users=users, seconds=seconds, connections=connections
            )
            end = time.monotonic()
            rss_end = servers.worker_rss(server)
            window = Window(
                number=number,
                start_s=start - began,
                end_s=end - began,
                summary=summary,
                counts=counts,
                rss_end=rss_end,
                rss_peak=max(rss_end, sampler.peak(start, end)),
            )
            results.append(window)
            print(progress_line(window, windows), flush=True)
    return results


def progress_line(window: Window, windows: int) -> str:
    summary, status_5xx = window.summary, window.counts.status_5xx
    return (
        f"  window {window.number}/{windows} ({window.start_s:.0f}-{window.end_s:.0f} s):"
        f" {summary.rps:,.0f} req/s, p99 {summary.p99_us / 1000:.2f} ms,"
        f" 5xx {status_5xx}, other non-2xx {summary.non_2xx - status_5xx},"
        f" socket errors {summary.socket_errors}, RSS {window.rss_end / 1_000_000:.1f} MB"
    )
