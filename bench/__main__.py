"""python -m bench: seed, load the service and its comparators in turn, then report."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from bench import machine, postgres, report, seed, servers
from bench.bulk import run_bulk
from bench.copy_limit import run_copy
from bench.options import at_least, subset_of
from bench.results import Sample, ScenarioResult, check_targets, summarize
from bench.scenarios import COPY, LOOKUP_CONNECTIONS, SCENARIOS, Scenario, Variant
from bench.wrk import INSTALL_HINT, run_wrk, wrk_binary

BENCH_DIR = Path(__file__).resolve().parent
APP_NAMES = (*servers.APPS, COPY)
SCENARIO_KEYS = tuple(scenario.key for scenario in SCENARIOS)
EPILOG = f"""\
Needs wrk on PATH. {INSTALL_HINT}
Creates the databases {", ".join(seed.DATABASES.values())} afresh on the PostgreSQL server of
DATABASE_URL when set (dropping any of those names there), otherwise on an embedded PostgreSQL.
--smoke runs 1,000 users, 1 s per scenario and one round, and writes to a temporary directory."""


class Options(msgspec.Struct, frozen=True, kw_only=True):
    users: int
    duration: int
    connections: int
    workers: int
    rounds: int
    warmup: int
    apps: tuple[str, ...]
    scenarios: tuple[str, ...]
    out: Path
    smoke: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=at_least(1), help="users to seed (100000; smoke 1000)")
    parser.add_argument("--duration", type=at_least(1), help="seconds per round (10; smoke 1)")
    parser.add_argument("--connections", type=at_least(1), default=64, help="wrk connections (64)")
    parser.add_argument(
        "--workers", type=at_least(1), default=1, help="WEB_CONCURRENCY of each app (1)"
    )
    parser.add_argument("--rounds", type=at_least(1), help="rounds per variant (3; smoke 1)")
    parser.add_argument(
        "--apps",
        type=subset_of(APP_NAMES),
        default=",".join(APP_NAMES),
        help=f"comma-separated apps to run ({','.join(APP_NAMES)})",
    )
    parser.add_argument(
        "--scenarios",
        type=subset_of(SCENARIO_KEYS),
        default=",".join(SCENARIO_KEYS),
        help=f"comma-separated scenarios to run ({','.join(SCENARIO_KEYS)})",
    )
    parser.add_argument("--out", type=Path, help="where to write RESULTS.md and results.png")
    parser.add_argument("--smoke", action="store_true", help="a quick run that checks the harness")
    args = parser.parse_args(argv)
    smoke: bool = args.smoke
    return Options(
        users=args.users or (1_000 if smoke else 100_000),
        duration=args.duration or (1 if smoke else 10),
        connections=args.connections,
        workers=args.workers,
        rounds=args.rounds or (1 if smoke else 3),
        warmup=0 if smoke else 2,
        apps=args.apps,
        scenarios=args.scenarios,
        out=args.out or (Path(tempfile.mkdtemp(prefix="bench-smoke-")) if smoke else BENCH_DIR),
        smoke=smoke,
    )


def run_variant(
    variant: Variant, url: str, options: Options, duration: int, seeded: Mapping[str, str]
) -> Sample:
    """One round of variant; url is its server's, or the COPY limit's database.

    seeded fills the placeholders of the variant's args (bench.seed.feed_start).
    """
    # A fresh nonce per run keeps the emails of POST scenarios unique across rounds.
    nonce = secrets.token_hex(4)
    if variant.driver != "wrk":
        run = run_bulk if variant.driver == "bulk" else run_copy
        bulk = run(url, duration=duration, nonce=nonce)
        return Sample(
            rate=bulk.rows_per_second,
            p99_ms=bulk.p99_seconds * 1000,
            requests=bulk.requests,
            non_2xx=bulk.non_2xx,
            socket_errors=0,
        )
    summary = run_wrk(
        url,
        variant.script,
        (str(options.users), nonce, *(arg.format_map(seeded) for arg in variant.args)),
        duration=duration,
        connections=variant.connections or options.connections,
        headers=variant.headers,
    )
    return Sample(
        rate=summary.rps * variant.per_request,
        p99_ms=summary.p99_us / 1000,
        requests=summary.requests,
        non_2xx=summary.non_2xx,
        socket_errors=summary.socket_errors,
    )


def run_scenario(
    scenario: Scenario, urls: dict[str, str], options: Options, seeded: Mapping[str, str]
) -> ScenarioResult:
    """Warm each variant up, then run the variants interleaved, A B A B, for every round.

    urls maps each app of the run to its server's URL (or the COPY limit's database).
    """
    variants = [variant for variant in scenario.variants if variant.app in urls]
    if options.warmup:
        for variant in variants:
            run_variant(variant, urls[variant.app], options, options.warmup, seeded)
    samples: dict[str, list[Sample]] = {variant.label: [] for variant in variants}
    for round_number in range(1, options.rounds + 1):
        for variant in variants:
            sample = run_variant(variant, urls[variant.app], options, options.duration, seeded)
            samples[variant.label].append(sample)
            print(
                f"  {scenario.title} | {variant.label} | round {round_number}/{options.rounds}:"
                f" {sample.rate:,.0f} {scenario.unit}, p99 {sample.p99_ms:.2f} ms,"
                f" non-2xx {sample.non_2xx}, socket errors {sample.socket_errors}",
                flush=True,
            )
    return ScenarioResult(
        scenario=scenario,
        variants=tuple(
            summarize(variant.label, variant.app, samples[variant.label]) for variant in variants
        ),
    )


def settings_of(options: Options, database: str) -> dict[str, str]:
    return {
        "Database": database,
        "Users seeded": f"{options.users:,}",
        "Apps": ", ".join(options.apps),
        "Scenarios": ", ".join(options.scenarios),
        "WEB_CONCURRENCY": str(options.workers),
        "wrk": f"-t1 -c{options.connections} (lookups -c{LOOKUP_CONNECTIONS})",
        "Duration": f"{options.duration} s per round, {options.warmup} s warm-up per variant",
        "Rounds": str(options.rounds),
    }


def broken_variants(results: Sequence[ScenarioResult]) -> list[str]:
    """Variants that show the harness itself no longer works, whatever the speed."""
    return [
        f"{result.scenario.title} ({variant.label})"
        for result in results
        for variant in result.variants
        if variant.requests == 0 or (result.scenario.hits_only and variant.non_2xx)
    ]


class Run(msgspec.Struct, frozen=True, kw_only=True):
    results: tuple[ScenarioResult, ...]
    service_rss: int | None
    postgres_version: str


def databases_of(apps: Sequence[str]) -> set[str]:
    """The keys of seed.DATABASES that these apps need."""
    keys = {servers.APPS[app].database for app in apps if app in servers.APPS}
    if COPY in apps:
        keys.add("service")
    return {key for key in keys if key is not None}


def measure(options: Options, log_dir: Path) -> Run:
    """Everything that needs PostgreSQL and the servers; both are stopped before it returns."""
    with postgres.database_url() as server_url:
        database_urls = seed.prepare(server_url, databases_of(options.apps), options.users)
        postgres_version = asyncio.run(seed.server_version(server_url))
        # The feed scenario's cursors; only the service and the floor, on its database, use them.
        service_url = database_urls.get("service")
        seeded = {} if service_url is None else asyncio.run(seed.feed_start(service_url))
        names = [app for app in options.apps if app in servers.APPS]
        with servers.running(
            names, database_urls=database_urls, workers=options.workers, log_dir=log_dir
        ) as running:
            urls = {name: server.url for name, server in running.items()}
            if COPY in options.apps:
                urls[COPY] = database_urls["service"]
            results = tuple(
                run_scenario(scenario, urls, options, seeded)
                for scenario in SCENARIOS
                if scenario.key in options.scenarios
                and any(variant.app in urls for variant in scenario.variants)
            )
            service = running.get("service")
            service_rss = None if service is None else servers.worker_rss(service)
    return Run(results=results, service_rss=service_rss, postgres_version=postgres_version)


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGTERM, servers.exit_on_sigterm)
    options = parse_options(argv)
    wrk_binary()
    database = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"
    print(f"PostgreSQL: {database}; seeding {options.users:,} users", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    try:
        run = measure(options, log_dir)
    except BaseException:
        print(f"Server logs kept in {log_dir}", file=sys.stderr)
        raise
    shutil.rmtree(log_dir, ignore_errors=True)

    checks = check_targets(run.results, run.service_rss)
    report.print_report(run.results, checks)
    options.out.mkdir(parents=True, exist_ok=True)
    report.write_markdown(
        options.out / "RESULTS.md",
        command=shlex.join(["python", "-m", "bench", *argv]),
        results=run.results,
        checks=checks,
        settings=settings_of(options, database),
        machine=machine.describe_machine(),
        versions=machine.describe_versions(run.postgres_version),
        smoke=options.smoke,
    )
    report.write_chart(options.out / "results.png", run.results, checks)
    print(f"\nWrote {options.out / 'RESULTS.md'} and {options.out / 'results.png'}")

    broken = broken_variants(run.results)
    if options.smoke and broken:
        print(f"Smoke run failed: no requests, or non-2xx on a hit scenario: {', '.join(broken)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
