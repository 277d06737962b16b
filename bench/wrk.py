"""Runs wrk with one of the bench Lua scripts and reads the summary line the script prints."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import msgspec

SCRIPTS = Path(__file__).resolve().parent
SUMMARY_PREFIX = "BENCH_SUMMARY "
INSTALL_HINT = "Install wrk: `apt-get install wrk` on Debian/Ubuntu, `brew install wrk` on macOS."
# Generous, so a slow comparator's tail shows up as latency rather than dropped requests.
REQUEST_TIMEOUT = "10s"


class WrkSummary(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    duration_us: int
    non_2xx: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    p50_us: int
    p99_us: int
    max_us: int

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1_000_000)

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts


summary_decoder = msgspec.json.Decoder(WrkSummary)


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(f"wrk is not on PATH. {INSTALL_HINT}")
    return path


def summary_line(output: str, prefix: str = SUMMARY_PREFIX) -> str:
    """The JSON after prefix on the first line of wrk's output that starts with it."""
    for line in output.splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix)
    raise RuntimeError(f"wrk printed no {prefix.strip()} line:\n{output}")


def parse_summary(output: str) -> WrkSummary:
    return summary_decoder.decode(summary_line(output))


def run_wrk(
    url: str,
    script: str,
    args: Sequence[str],
    *,
    duration: int,
    connections: int,
    threads: int = 1,
    headers: Sequence[str] = (),
) -> WrkSummary:
    """One wrk run against url; args reach the script's init() after wrk's --."""
    output = wrk_output(
        url,
        script,
        args,
        duration=duration,
        connections=connections,
        threads=threads,
        headers=headers,
    )
    return parse_summary(output)


def wrk_output(
    url: str,
    script: str,
    args: Sequence[str],
    *,
    duration: int,
    connections: int,
    threads: int = 1,
    headers: Sequence[str] = (),
) -> str:
    """wrk's standard output, for scripts that print more than the summary line.

    headers ("Name: value") go on every request the script builds without its own.
    """
    command = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        *(flag for header in headers for flag in ("-H", header)),
        "--timeout",
        REQUEST_TIMEOUT,
        "-s",
        str(SCRIPTS / script),
        url,
        "--",
        *args,
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}):\n{completed.stderr}")
    return completed.stdout
