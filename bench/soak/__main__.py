"""python -m bench.soak: seed, run the mixed load in windows on one service, check for drift."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import msgspec

from bench import machine, postgres, seed, servers
from bench.options import at_least
from bench.soak import report
from bench.soak.checks import check_soak, harness_failures
from bench.soak.load import BULK_SIZE, MIX, PAGE_LIMIT, Window, run_windows, window_plan
from bench.wrk import INSTALL_HINT, REQUEST_TIMEOUT, wrk_binary

BENCH_DIR = Path(__file__).resolve().parent.parent
# The issue compares the first and the last 30 s.
LONGEST_WINDOW = 30
WORKERS = 1
COUNT_USERS = "SELECT count(*) FROM users"
EPILOG = f"""\
Needs wrk on PATH. {INSTALL_HINT}
Uses DATABASE_URL when set (its users table is emptied), otherwise an embedded PostgreSQL.
The load runs as back-to-back wrk windows of {LONGEST_WINDOW} s (shorter runs: two windows of half
the duration each); the first and last windows are compared. --smoke runs 1,000 users for 10 s,
writes to a temporary directory, and exits 1 on any 5xx or other non-2xx."""


class Options(msgspec.Struct, frozen=True, kw_only=True):
    duration: int
    users: int
    connections: int
    out: Path
    smoke: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=at_least(2), help="seconds of load (120; smoke 10)")
    parser.add_argument("--users", type=at_least(1), help="users to seed (100000; smoke 1000)")
    parser.add_argument("--connections", type=at_least(1), default=64, help="wrk connections (64)")
    parser.add_argument("--out", type=Path, help="where to write SOAK.md (bench/)")
    parser.add_argument("--smoke", action="store_true", help="a quick run that checks the harness")
    args = parser.parse_args(argv)
    smoke: bool = args.smoke
    return Options(
        duration=args.duration or (10 if smoke else 120),
        users=args.users or (1_000 if smoke else 100_000),
        connections=args.connections,
        out=args.out or (Path(tempfile.mkdtemp(prefix="soak-smoke-")) if smoke else BENCH_DIR),
        smoke=smoke,
    )


class Soak(msgspec.Struct, frozen=True, kw_only=True):
    windows: tuple[Window, ...]
    rss_before: int
    rows_after: int
    postgres_version: str


async def count_users(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        rows: int = await conn.fetchval(COUNT_USERS)
    finally:
        await conn.close()
    return rows


def soak(options: Options, log_dir: Path) -> Soak:
    """Everything that needs PostgreSQL and the service; both are stopped before it returns."""
    windows, seconds = window_plan(options.duration, LONGEST_WINDOW)
    with postgres.database_url() as url:
        seed.migrate_service(url)
        asyncio.run(seed.seed_service(url, options.users))
        postgres_version = asyncio.run(seed.server_version(url))
        with servers.running(
            ["service"], database_urls={"service": url}, workers=WORKERS, log_dir=log_dir
        ) as running:
            service = running["service"]
            rss_before = servers.worker_rss(service)
            print(
                f"Soak: {windows} windows of {seconds} s; RSS {rss_before / 1e6:.1f} MB", flush=True
            )
            results = run_windows(
                service,
                users=options.users,
                windows=windows,
                seconds=seconds,
                connections=options.connections,
            )
        rows_after = asyncio.run(count_users(url))
    return Soak(
        windows=tuple(results),
        rss_before=rss_before,
        rows_after=rows_after,
        postgres_version=postgres_version,
    )


def settings_of(options: Options, database: str, rows_after: int) -> dict[str, str]:
    windows, seconds = window_plan(options.duration, LONGEST_WINDOW)
    mix = ", ".join(f"{percent}% {kind}" for kind, percent in MIX.items())
    return {
        "Database": database,
        "Users": f"{options.users:,} seeded, {rows_after:,} at the end",
        "WEB_CONCURRENCY": str(WORKERS),
        "wrk": f"-t1 -c{options.connections} --timeout {REQUEST_TIMEOUT}",
        "Duration": f"{windows * seconds} s: {windows} windows of {seconds} s, back to back",
        "Mix": f"{mix}; bulk requests of {BULK_SIZE} users; pages of {PAGE_LIMIT} users",
        "RSS sampling": "every second, and as each window ends",
    }


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGTERM, servers.exit_on_sigterm)
    options = parse_options(argv)
    wrk_binary()
    database = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"
    print(f"PostgreSQL: {database}; seeding {options.users:,} users", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="soak-logs-"))
    try:
        run = soak(options, log_dir)
    except BaseException:
        print(f"Server logs kept in {log_dir}", file=sys.stderr)
        raise
    failures = harness_failures(run.windows)
    if failures:
        print(f"Server logs kept in {log_dir}", file=sys.stderr)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)

    checks = check_soak(run.windows)
    report.print_report(run.windows, checks)
    options.out.mkdir(parents=True, exist_ok=True)
    path = options.out / "SOAK.md"
    report.write_markdown(
        path,
        command=shlex.join(["python", "-m", "bench.soak", *argv]),
        windows=run.windows,
        checks=checks,
        rss_before=run.rss_before,
        settings=settings_of(options, database, run.rows_after),
        machine=machine.describe_machine(),
        versions=machine.describe_versions(run.postgres_version),
        smoke=options.smoke,
    )
    print(f"\nWrote {path}")

    if options.smoke and failures:
        print(f"Smoke run failed: {'; '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
